//! The prepared on-disk format: plain CSV files that pandas or polars read
//! directly, plus `dataset.json` with counts and a content fingerprint.
//!
//! ```text
//! <dir>/items.csv       item_id,raw_id,title            (item_id = 1..=N)
//! <dir>/sequences.csv   seq_id,user,items,timestamps    (space-separated lists)
//! <dir>/train.csv       key,seq_id,pos,target           (history = items[:pos])
//! <dir>/valid.csv       same
//! <dir>/test.csv        same
//! <dir>/dataset.json    counts, fingerprint, provenance (written last)
//! ```
//!
//! The fingerprint is the SHA-256 of the five CSV files' bytes in that order
//! (each preceded by its length). Anything keyed to a dataset (checkpoints,
//! teacher caches) stores it, and loading re-hashes the files, so an edited
//! or mismatched dataset is refused rather than silently misaligned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::{Dataset, Item, ItemId, Row, Sequence, SplitName};
use crate::error::{DataError, Result};
use crate::fsutil::{atomic_write, atomic_write_json, require_dir, require_file};

/// The dataset a checkpoint, a teacher cache or a selection belongs to: one
/// type for every file that records it, as `{"fingerprint", "name"}` plus
/// `"dir"` where known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Content fingerprint of the prepared dataset (`dataset.json`).
    pub fingerprint: String,
    /// Dataset name, for messages.
    pub name: String,
    /// Where the prepared dataset was (absolute), for `recommend`'s titles;
    /// checkpoints record it, caches and selections do not (left out of the
    /// JSON when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// Format tag in `dataset.json`.
pub const FORMAT: &str = "distillrec-dataset";
/// Format version in `dataset.json`.
pub const VERSION: u32 = 1;

/// Counts of one prepared dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct users, if the layout knows users.
    pub users: Option<usize>,
    /// Catalogue size `N`.
    pub items: usize,
    /// Interactions (see [`Dataset::num_interactions`]).
    pub interactions: usize,
    /// Stored sequences.
    pub sequences: usize,
    /// Training rows.
    pub train: usize,
    /// Validation rows.
    pub valid: usize,
    /// Test rows.
    pub test: usize,
}

/// The contents of `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this build writes.
    pub version: u32,
    /// Dataset name.
    pub name: String,
    /// `sha256:<hex>` over the CSV files.
    pub fingerprint: String,
    /// Counts, for a quick look without loading.
    pub counts: Counts,
    /// Whether `user` names real users.
    pub users_known: bool,
    /// Whether sequences are reference-layout rows.
    pub row_layout: bool,
    /// Reader, options, tie rule.
    pub provenance: serde_json::Value,
    /// Program that wrote the files.
    pub created_by: String,
}

const FILES: [&str; 5] = [
    "items.csv",
    "sequences.csv",
    "train.csv",
    "valid.csv",
    "test.csv",
];

fn join_ids<T: std::fmt::Display>(xs: &[T]) -> String {
    let mut s = String::with_capacity(xs.len() * 6);
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        use std::fmt::Write as _;
        let _ = write!(s, "{x}");
    }
    s
}

fn csv_bytes(
    header: &[&str],
    mut rows: impl FnMut(&mut csv::Writer<&mut Vec<u8>>) -> csv::Result<()>,
) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut w = csv::Writer::from_writer(&mut buf);
        // Writing into a Vec cannot fail except on a bug.
        w.write_record(header).expect("write to memory");
        rows(&mut w).expect("write to memory");
        w.flush().expect("write to memory");
    }
    buf
}

fn encode(ds: &Dataset) -> [Vec<u8>; 5] {
    let items = csv_bytes(&["item_id", "raw_id", "title"], |w| {
        for (i, it) in ds.items.iter().enumerate() {
            w.write_record([(i + 1).to_string().as_str(), &it.raw_id, &it.title])?;
        }
        Ok(())
    });
    let seqs = csv_bytes(&["seq_id", "user", "items", "timestamps"], |w| {
        for (i, s) in ds.sequences.iter().enumerate() {
            let ts = s.timestamps.as_deref().map(join_ids).unwrap_or_default();
            w.write_record([i.to_string().as_str(), &s.user, &join_ids(&s.items), &ts])?;
        }
        Ok(())
    });
    let rows = |split: SplitName| {
        csv_bytes(&["key", "seq_id", "pos", "target"], |w| {
            for r in ds.rows(split) {
                w.write_record([
                    r.key.as_str(),
                    &r.seq.to_string(),
                    &r.pos.to_string(),
                    &ds.target(r).to_string(),
                ])?;
            }
            Ok(())
        })
    };
    [
        items,
        seqs,
        rows(SplitName::Train),
        rows(SplitName::Valid),
        rows(SplitName::Test),
    ]
}

fn fingerprint(parts: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    crate::fsutil::sha256_tag(&h.finalize())
}

/// The counts of a dataset as stored in its manifest.
pub fn counts(ds: &Dataset) -> Counts {
    Counts {
        users: ds.num_users(),
        items: ds.num_items(),
        interactions: ds.num_interactions(),
        sequences: ds.sequences.len(),
        train: ds.train.len(),
        valid: ds.valid.len(),
        test: ds.test.len(),
    }
}

/// Writes `ds` to `dir` (created if needed); returns its manifest.
pub fn save(ds: &Dataset, dir: &Path) -> Result<Manifest> {
    ds.validate()?;
    // One writer at a time; temporary files of a killed writer go first.
    let _lock = crate::lock::DirLock::acquire(dir)?;
    crate::lock::remove_stale_temps(dir)?;
    let parts = encode(ds);
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        name: ds.name.clone(),
        fingerprint: fingerprint(&parts),
        counts: counts(ds),
        users_known: ds.users_known,
        row_layout: ds.row_layout,
        provenance: ds.provenance.clone(),
        created_by: format!("distillrec-data {}", env!("CARGO_PKG_VERSION")),
    };
    // Remove the manifest first: a run killed mid-way leaves no dataset.json
    // pointing at a mix of old and new files.
    let mpath = dir.join("dataset.json");
    if mpath.exists() {
        std::fs::remove_file(&mpath).map_err(|e| DataError::io(&mpath, e))?;
    }
    for (name, bytes) in FILES.iter().zip(&parts) {
        atomic_write(&dir.join(name), bytes)?;
    }
    atomic_write_json(&mpath, &manifest)?;
    Ok(manifest)
}

/// Reads only `dataset.json` of a prepared directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    require_dir(dir)?;
    let path = dir.join("dataset.json");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::file(
            &path,
            "file not found; is this a prepared dataset (distillrec data prepare)?",
        ),
        _ => DataError::io(&path, e),
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| DataError::parse(&path, e.line(), format!("bad manifest: {e}")))?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(DataError::file(
            &path,
            format!(
                "format {} v{} is not {FORMAT} v{VERSION}",
                m.format, m.version
            ),
        ));
    }
    Ok(m)
}

struct CsvFile<'a> {
    path: &'a Path,
    rdr: csv::Reader<&'a [u8]>,
}

impl<'a> CsvFile<'a> {
    fn new(path: &'a Path, bytes: &'a [u8], header: &[&str]) -> Result<Self> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let h = rdr
            .headers()
            .map_err(|e| DataError::parse(path, 1, e.to_string()))?;
        if h.iter().ne(header.iter().copied()) {
            return Err(DataError::parse(
                path,
                1,
                format!("header must be {}", header.join(",")),
            ));
        }
        Ok(CsvFile { path, rdr })
    }

    fn each(&mut self, mut f: impl FnMut(usize, &csv::StringRecord) -> Result<()>) -> Result<()> {
        let path = self.path;
        for rec in self.rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                DataError::parse(path, line, e.to_string())
            })?;
            let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
            f(line, &rec)?;
        }
        Ok(())
    }
}

fn field<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    rec: &csv::StringRecord,
    i: usize,
    what: &str,
) -> Result<T> {
    let s = rec.get(i).unwrap_or("");
    s.parse()
        .map_err(|_| DataError::parse(path, line, format!("{what} '{s}' is not valid")))
}

fn parse_list<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    s: &str,
    what: &str,
) -> Result<Vec<T>> {
    s.split_ascii_whitespace()
        .map(|x| {
            x.parse().map_err(|_| {
                DataError::parse(path, line, format!("{what} element '{x}' is not valid"))
            })
        })
        .collect()
}

/// Loads a prepared dataset, verifying its fingerprint and invariants.
pub fn load(dir: &Path) -> Result<Dataset> {
    let m = read_manifest(dir)?;
    let mut parts = Vec::with_capacity(FILES.len());
    for name in FILES {
        let p = require_file(dir, name)?;
        parts.push(std::fs::read(&p).map_err(|e| DataError::io(&p, e))?);
    }
    let fp = fingerprint(&parts);
    if fp != m.fingerprint {
        return Err(DataError::file(
            &dir.join("dataset.json"),
            format!(
                "fingerprint {} does not match the files ({fp}): they were changed after prepare",
                m.fingerprint
            ),
        ));
    }
    let paths: Vec<_> = FILES.iter().map(|n| dir.join(n)).collect();
    let mut items = Vec::new();
    let mut f = CsvFile::new(&paths[0], &parts[0], &["item_id", "raw_id", "title"])?;
    f.each(|line, rec| {
        let id: usize = field(&paths[0], line, rec, 0, "item_id")?;
        if id != items.len() + 1 {
            return Err(DataError::parse(
                &paths[0],
                line,
                format!("item_id {id} out of order (ids must be 1..=N)"),
            ));
        }
        items.push(Item {
            raw_id: rec.get(1).unwrap_or("").to_string(),
            title: rec.get(2).unwrap_or("").to_string(),
        });
        Ok(())
    })?;
    let mut sequences = Vec::new();
    let mut f = CsvFile::new(
        &paths[1],
        &parts[1],
        &["seq_id", "user", "items", "timestamps"],
    )?;
    f.each(|line, rec| {
        let id: usize = field(&paths[1], line, rec, 0, "seq_id")?;
        if id != sequences.len() {
            return Err(DataError::parse(
                &paths[1],
                line,
                format!("seq_id {id} out of order"),
            ));
        }
        let ids: Vec<ItemId> = parse_list(&paths[1], line, rec.get(2).unwrap_or(""), "items")?;
        let ts = rec.get(3).unwrap_or("");
        let timestamps = if ts.is_empty() {
            None
        } else {
            Some(parse_list(&paths[1], line, ts, "timestamps")?)
        };
        sequences.push(Sequence {
            user: rec.get(1).unwrap_or("").to_string(),
            items: ids,
            timestamps,
        });
        Ok(())
    })?;
    let mut splits: [Vec<Row>; 3] = Default::default();
    for (k, out) in splits.iter_mut().enumerate() {
        let path = &paths[2 + k];
        let mut f = CsvFile::new(path, &parts[2 + k], &["key", "seq_id", "pos", "target"])?;
        f.each(|line, rec| {
            let r = Row {
                key: rec.get(0).unwrap_or("").to_string(),
                seq: field(path, line, rec, 1, "seq_id")?,
                pos: field(path, line, rec, 2, "pos")?,
            };
            let target: ItemId = field(path, line, rec, 3, "target")?;
            let actual = sequences
                .get(r.seq as usize)
                .and_then(|s: &Sequence| s.items.get(r.pos as usize));
            if actual != Some(&target) {
                let seqs = paths[1].display();
                let found = match actual {
                    Some(a) => format!("holds item {a} there"),
                    None => "has no such position".to_string(),
                };
                return Err(DataError::parse(
                    path,
                    line,
                    format!(
                        "target {target} does not match sequence {} at position {} of {seqs}, which {found}: the prepared files disagree (edited, or from two datasets); run `data prepare` again",
                        r.seq, r.pos
                    ),
                ));
            }
            out.push(r);
            Ok(())
        })?;
    }
    let [train, valid, test] = splits;
    let ds = Dataset {
        name: m.name,
        items,
        sequences,
        train,
        valid,
        test,
        users_known: m.users_known,
        row_layout: m.row_layout,
        provenance: m.provenance,
    };
    ds.validate()
        .map_err(|e| DataError::file(dir, format!("invalid dataset: {e}")))?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::{prepare, PrepareOptions};
    use crate::synthetic::{generate, SyntheticOptions};

    fn small() -> Dataset {
        let log = generate(&SyntheticOptions {
            users: 30,
            ..Default::default()
        })
        .unwrap();
        prepare("synthetic", &log, &PrepareOptions::default(), 42).unwrap()
    }

    #[test]
    fn round_trip_is_exact_and_fingerprint_is_stable() {
        let ds = small();
        let d = tempfile::tempdir().unwrap();
        let m1 = save(&ds, d.path()).unwrap();
        let back = load(d.path()).unwrap();
        assert_eq!(back, ds);
        let d2 = tempfile::tempdir().unwrap();
        let m2 = save(&back, d2.path()).unwrap();
        assert_eq!(m1.fingerprint, m2.fingerprint);
        assert_eq!(m1.counts.valid, 30);
    }

    #[test]
    fn tampered_files_are_refused() {
        let ds = small();
        let d = tempfile::tempdir().unwrap();
        save(&ds, d.path()).unwrap();
        let p = d.path().join("items.csv");
        let mut s = std::fs::read_to_string(&p).unwrap();
        s = s.replacen("Vol. 1", "Vol. 9", 1);
        std::fs::write(&p, s).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: fingerprint"), "{e}");
        let e = load(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.ends_with("nope: directory does not exist"), "{e}");
    }

    #[test]
    fn a_target_that_disagrees_with_its_sequence_names_both_files() {
        let ds = small();
        let d = tempfile::tempdir().unwrap();
        let mut m = save(&ds, d.path()).unwrap();
        // move the first training row's target to another item, and pin
        // the edited files so that only the invariant can catch it
        let train = d.path().join(FILES[2]);
        let text = std::fs::read_to_string(&train).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut cells: Vec<String> = lines[1].split(',').map(str::to_string).collect();
        let target: u32 = cells[3].parse().unwrap();
        cells[3] = (target % ds.num_items() as u32 + 1).to_string();
        lines[1] = cells.join(",");
        std::fs::write(&train, lines.join("\n") + "\n").unwrap();
        let parts: Vec<Vec<u8>> = FILES
            .iter()
            .map(|f| std::fs::read(d.path().join(f)).unwrap())
            .collect();
        m.fingerprint = fingerprint(&parts);
        atomic_write_json(&d.path().join("dataset.json"), &m).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}:2: target", FILES[2]))
                && e.contains(FILES[1])
                && e.ends_with("run `data prepare` again"),
            "{e}"
        );
    }
}
