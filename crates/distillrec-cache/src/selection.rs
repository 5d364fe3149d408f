//! Selection files: which training rows receive teacher supervision (SPEC 8).
//!
//! ```text
//! <path>        CSV, header `key,score`, one selected row per line
//! <path>.json   the sidecar, a [`SelectionMeta`] (policy, budget, dataset, ...)
//! ```
//!
//! The score is the policy's value for the row (empty when the policy has
//! none). Rows are named by key, so a selection stays valid for its dataset
//! whatever order rows are processed in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_data::{DataError, Dataset, DatasetRef};
use serde::{Deserialize, Serialize};

use crate::cache::key_problem;
use crate::Result;

/// The sidecar metadata path of a selection file: `<path>.json`.
pub fn selection_meta_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The sidecar `<selection>.json`: how a selection was made. `select` fills
/// every field; readers ([`read_selection_rows`], the report) check
/// `dataset` and `selected` and show `policy`, and accept a sidecar written
/// by hand that leaves fields out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectionMeta {
    /// The policy's name (`loss`, `random`, ...).
    pub policy: Option<String>,
    /// The budget as the config records it (`{"fraction": 0.25}` or
    /// `{"count": 1000}`, see `distillrec_config::Budget`).
    pub budget: serde_json::Value,
    /// The policy's score threshold, if any.
    pub threshold: Option<f64>,
    /// The config's seed.
    pub seed: u64,
    /// Rows the policy chose from.
    pub pool: usize,
    /// Training rows of the dataset.
    pub train_rows: usize,
    /// The student's training objective (its config name).
    pub objective: String,
    /// The student's `max_len`.
    pub max_len: usize,
    /// Rows selected (the lines of the selection file).
    pub selected: Option<usize>,
    /// `selected / pool`.
    pub fraction: f64,
    /// The dataset the keys belong to.
    pub dataset: Option<DatasetRef>,
    /// The student checkpoint whose signals ranked the rows, if any.
    pub student: Option<String>,
    /// Wall seconds of the selection.
    pub wall_secs: f64,
}

/// Reads the sidecar of the selection `path`; `None` when there is none (a
/// selection written by hand). Errors name the sidecar.
pub fn read_selection_meta(path: &Path) -> Result<Option<SelectionMeta>> {
    let meta_path = selection_meta_path(path);
    if !meta_path.exists() {
        return Ok(None);
    }
    let text = distillrec_data::fsutil::read_small_text(&meta_path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DataError::file(&meta_path, format!("not a selection sidecar: {e}")))
}

/// Writes a selection: `keys_scores` in the given order to `path` (CSV
/// `key,score`; a NaN score is written empty, meaning "no score"), and
/// `meta` to `<path>.json`. Both atomically. No rows, empty or duplicate
/// keys, keys with line breaks and infinite scores are refused.
pub fn write_selection(
    path: &Path,
    keys_scores: &[(String, f64)],
    meta: &SelectionMeta,
) -> Result<()> {
    if keys_scores.is_empty() {
        return Err(DataError::file(path, EMPTY_SELECTION));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys_scores.len());
    let mut buf = Vec::new();
    {
        let mut w = csv::Writer::from_writer(&mut buf);
        let io = |e: csv::Error| DataError::file(path, format!("cannot write CSV: {e}"));
        w.write_record(["key", "score"]).map_err(io)?;
        for (i, (key, score)) in keys_scores.iter().enumerate() {
            if let Some(msg) = key_problem(key) {
                return Err(DataError::file(path, format!("selection entry {i}: {msg}")));
            }
            if let Some(first) = seen.insert(key, i) {
                return Err(DataError::file(
                    path,
                    format!("key {key:?} is selected twice (entries {first} and {i})"),
                ));
            }
            if score.is_infinite() {
                return Err(DataError::file(
                    path,
                    format!("key {key:?} has an infinite score"),
                ));
            }
            let s = if score.is_nan() {
                String::new()
            } else {
                format!("{score:?}")
            };
            w.write_record([key.as_str(), s.as_str()]).map_err(io)?;
        }
        w.flush()
            .map_err(|e| DataError::file(path, format!("cannot write CSV: {e}")))?;
    }
    atomic_write(path, &buf)?;
    atomic_write_json(&selection_meta_path(path), meta)
}

/// Why a selection without rows is refused, read or written: it would give
/// the teacher (and the distillation) nothing.
const EMPTY_SELECTION: &str = "the selection holds no rows (a header only); select at least one row, or leave --selection out for every row";

/// Reads a selection file and returns its keys in file order. The header
/// must be `key,score`; every line needs a non-empty key seen only once and
/// an empty or finite score; at least one row. Errors name the file and line.
pub fn read_selection(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut records = rdr.records();
    let line_of = |r: &csv::StringRecord| r.position().map_or(0, |p| p.line() as usize);
    let csv_err = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line() as usize);
        DataError::parse(path, line, e.to_string())
    };
    let header = match records.next() {
        None => {
            return Err(DataError::file(
                path,
                "empty file; expected the header key,score",
            ))
        }
        Some(r) => r.map_err(csv_err)?,
    };
    if header.iter().map(str::trim).ne(["key", "score"]) {
        return Err(DataError::parse(
            path,
            line_of(&header).max(1),
            "missing header: the first line must be key,score",
        ));
    }
    let mut keys = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rec in records {
        let rec = rec.map_err(csv_err)?;
        let line = line_of(&rec);
        if rec.len() != 2 {
            return Err(DataError::parse(
                path,
                line,
                format!("{} fields, expected 2 (key,score)", rec.len()),
            ));
        }
        let key = &rec[0];
        if let Some(msg) = key_problem(key) {
            return Err(DataError::parse(path, line, msg));
        }
        let score = rec[1].trim();
        if !score.is_empty() && !score.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(DataError::parse(
                path,
                line,
                format!("score {score:?} is not a finite number (leave it empty for no score)"),
            ));
        }
        if let Some(first) = seen.insert(key.to_owned(), line) {
            return Err(DataError::parse(
                path,
                line,
                format!("key {key:?} is selected twice (also on line {first})"),
            ));
        }
        keys.push(key.to_owned());
    }
    if keys.is_empty() {
        return Err(DataError::file(path, EMPTY_SELECTION));
    }
    Ok(keys)
}

/// Reads a selection file for the dataset `ds` with `fingerprint` and
/// returns the indices into `ds.train` of its rows, sorted. Refused (errors
/// name the file and line): a key that is not a training row of `ds`; a
/// sidecar `<path>.json` that names another dataset (by fingerprint), or
/// that records another number of selected rows than the file holds (a file
/// cut short). A selection without a sidecar (written by hand) is checked
/// by its keys alone.
pub fn read_selection_rows(path: &Path, fingerprint: &str, ds: &Dataset) -> Result<Vec<usize>> {
    let keys = read_selection(path)?;
    let meta_path = selection_meta_path(path);
    if let Some(meta) = read_selection_meta(path)? {
        if let Some(made_for) = meta.dataset.filter(|d| d.fingerprint != fingerprint) {
            return Err(DataError::file(
                &meta_path,
                format!(
                    "the selection was made for dataset {} ({}) but this is {} ({fingerprint})",
                    made_for.name, made_for.fingerprint, ds.name
                ),
            ));
        }
        if let Some(n) = meta.selected {
            if n != keys.len() {
                return Err(DataError::file(
                    path,
                    format!(
                        "{} selected rows but its sidecar {} records {n} (file cut short or edited?)",
                        keys.len(),
                        meta_path.display()
                    ),
                ));
            }
        }
    }
    let index: HashMap<&str, usize> = ds
        .train
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let mut rows = Vec::with_capacity(keys.len());
    for (line, k) in keys.iter().enumerate() {
        match index.get(k.as_str()) {
            Some(&i) => rows.push(i),
            None => {
                return Err(DataError::parse(
                    path,
                    line + 2,
                    format!("{k:?} is not a training row of dataset {}", ds.name),
                ))
            }
        }
    }
    rows.sort_unstable();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_and_writes_meta() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sel.csv");
        let ks = vec![
            ("b:2".to_string(), 0.5),
            ("a:1".to_string(), f64::NAN),
            ("odd,key \"q\"".to_string(), -1e-9),
        ];
        let meta = SelectionMeta {
            policy: Some("loss".into()),
            budget: serde_json::json!({"fraction": 0.1}),
            selected: Some(3),
            ..SelectionMeta::default()
        };
        write_selection(&p, &ks, &meta).unwrap();
        let got = read_selection(&p).unwrap();
        assert_eq!(got, vec!["b:2", "a:1", "odd,key \"q\""]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("key,score\nb:2,0.5\na:1,\n"), "{text}");
        assert_eq!(read_selection_meta(&p).unwrap(), Some(meta));
    }

    #[test]
    fn refuses_duplicates_bad_header_empty_keys_and_bad_scores() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sel.csv");
        let cases: [(&str, &str); 6] = [
            (
                "key,score\na:1,1\nb:1,2\na:1,3\n",
                ":4: key \"a:1\" is selected twice (also on line 2)",
            ),
            ("a:1,1\nb:1,2\n", ":1: missing header"),
            ("key,score\n,1\n", ":2: empty row key"),
            (
                "key,score\na:1,nan\n",
                ":2: score \"nan\" is not a finite number",
            ),
            ("key,score\na:1,x\n", ":2: score \"x\""),
            ("key,score\na:1\n", ":2: 1 fields"),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let e = read_selection(&p).unwrap_err().to_string();
            assert!(e.contains("sel.csv") && e.contains(want), "{text:?}: {e}");
        }
        std::fs::write(&p, "").unwrap();
        assert!(read_selection(&p)
            .unwrap_err()
            .to_string()
            .contains("empty file"));

        let dup = vec![("a".to_string(), 1.0), ("a".to_string(), 2.0)];
        let e = write_selection(&p, &dup, &SelectionMeta::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("selected twice"), "{e}");
        let inf = vec![("a".to_string(), f64::INFINITY)];
        assert!(write_selection(&p, &inf, &SelectionMeta::default()).is_err());
    }

    #[test]
    fn an_empty_selection_is_refused_read_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sel.csv");
        for text in ["key,score\n", "key,score"] {
            std::fs::write(&p, text).unwrap();
            let e = read_selection(&p).unwrap_err().to_string();
            assert!(e.contains("sel.csv: the selection holds no rows"), "{e}");
        }
        let q = dir.path().join("none.csv");
        let e = write_selection(&q, &[], &SelectionMeta::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no rows"), "{e}");
        assert!(!q.exists() && !selection_meta_path(&q).exists());
    }
}
