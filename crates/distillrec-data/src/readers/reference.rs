//! The processed layouts of the reference implementations, read as they are
//! (their splits are given, so no filtering or re-splitting happens here):
//!
//! - **iLoRA/LLaRA** JSONL rows `{"seq":[..],"len_seq":n,"next":id}` with
//!   `id2name.txt` (`id::title`), 0-based ids, right padding with id `N`;
//! - **DLLM2Rec** CSV rows `seq,len_seq,next` (`seq` a quoted list, `next`
//!   possibly written as a float), 0-based ids, right padding with
//!   `item_num` taken from `data_statis.json`.
//!
//! Raw id `r` becomes internal id `r + 1`; the padding id becomes `0`.
//! Each row becomes its own sequence `history ++ [next]`, so a row's history
//! is exactly the reference's window and nothing is reconstructed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dataset::{Dataset, Item, ItemId, Row, Sequence};
use crate::error::{DataError, Result};
use crate::fsutil::{for_each_line, require_dir, require_file, Encoding};

/// One parsed reference row, with raw 0-based ids and padding removed.
struct RefRow {
    history: Vec<u32>,
    next: u32,
    line: usize,
}

/// Finds `name` in `dir` ignoring ASCII case (`Val_data.jsonl` vs `val_data.jsonl`).
fn find_ci(dir: &Path, name: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().eq_ignore_ascii_case(name) {
            return Ok(e.path());
        }
    }
    Err(DataError::file(&dir.join(name), "file not found"))
}

/// The largest catalogue the reference layouts may declare (`item_num`, ids
/// in `id2name.txt`): 2^24 items. Checked before anything is sized by it.
pub const MAX_ITEMS: u64 = 1 << 24;

/// The longest padded sequence (`seq_size` of `data_statis.json`).
pub const MAX_SEQ_SIZE: u64 = 1 << 16;

/// Reads `id::title` lines; ids must be `0..n` in any order, each once.
/// The table is sized by the lines present, never by the largest id, and
/// every id must be below [`MAX_ITEMS`].
fn read_id2name(path: &Path) -> Result<Vec<String>> {
    // id -> (title, line)
    let mut seen: std::collections::HashMap<u32, (String, usize)> =
        std::collections::HashMap::new();
    for_each_line(path, Encoding::Utf8, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let (id, title) = text
            .split_once("::")
            .ok_or_else(|| DataError::parse(path, line, "expected 'id::title'"))?;
        let id: u64 = id.trim().parse().map_err(|_| {
            DataError::parse(
                path,
                line,
                format!("item id '{id}' is not a non-negative integer"),
            )
        })?;
        if id >= MAX_ITEMS {
            return Err(DataError::parse(
                path,
                line,
                format!("item id {id} is not below the limit of {MAX_ITEMS} items"),
            ));
        }
        if let Some((_, first)) = seen.get(&(id as u32)) {
            return Err(DataError::parse(
                path,
                line,
                format!("item id {id} appears twice (first on line {first})"),
            ));
        }
        seen.insert(id as u32, (title.trim().to_string(), line));
        Ok(())
    })?;
    let n = seen.len();
    let mut titles: Vec<Option<String>> = vec![None; n];
    for (id, (title, line)) in seen {
        match titles.get_mut(id as usize) {
            Some(slot) => *slot = Some(title),
            None => {
                return Err(DataError::parse(
                    path,
                    line,
                    format!("item id {id} is not below the number of items {n} (ids must be 0..n)"),
                ))
            }
        }
    }
    titles
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.ok_or_else(|| {
                DataError::file(path, format!("item id {i} is missing (ids must be 0..n)"))
            })
        })
        .collect()
}

/// Checks a padded reference sequence and returns its real items.
fn unpad(path: &Path, line: usize, seq: &[i64], len_seq: i64, pad: u32) -> Result<Vec<u32>> {
    let mut real = Vec::with_capacity(seq.len());
    let mut seen_pad = false;
    for &x in seq {
        if x < 0 || x > pad as i64 {
            return Err(DataError::parse(
                path,
                line,
                format!("item id {x} is outside 0..={pad} (padding is {pad})"),
            ));
        }
        if x == pad as i64 {
            seen_pad = true;
        } else if seen_pad {
            return Err(DataError::parse(
                path,
                line,
                "a real item follows padding; expected right padding",
            ));
        } else {
            real.push(x as u32);
        }
    }
    // iLoRA quirk: a user's first row has an empty history but len_seq = 1.
    let quirk = real.is_empty() && len_seq == 1;
    if real.len() as i64 != len_seq && !quirk {
        return Err(DataError::parse(
            path,
            line,
            format!(
                "len_seq is {len_seq} but the sequence holds {} real items",
                real.len()
            ),
        ));
    }
    Ok(real)
}

fn check_next(path: &Path, line: usize, next: f64, pad: u32) -> Result<u32> {
    if next.fract() != 0.0 || next < 0.0 || next >= pad as f64 {
        return Err(DataError::parse(
            path,
            line,
            format!("target id {next} is not an item id in 0..{pad}"),
        ));
    }
    Ok(next as u32)
}

#[derive(Deserialize)]
struct JsonRow {
    seq: Vec<i64>,
    len_seq: i64,
    next: f64,
}

fn read_jsonl(path: &Path, pad: u32) -> Result<Vec<RefRow>> {
    let mut rows = Vec::new();
    for_each_line(path, Encoding::Utf8, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let r: JsonRow = serde_json::from_str(text)
            .map_err(|e| DataError::parse(path, line, format!("bad JSON row: {e}")))?;
        let history = unpad(path, line, &r.seq, r.len_seq, pad)?;
        let next = check_next(path, line, r.next, pad)?;
        rows.push(RefRow {
            history,
            next,
            line,
        });
        Ok(())
    })?;
    Ok(rows)
}

fn parse_list(path: &Path, line: usize, s: &str) -> Result<Vec<i64>> {
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or_else(|| DataError::parse(path, line, format!("seq '{s}' is not a [..] list")))?;
    inner
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim().parse::<i64>().map_err(|_| {
                DataError::parse(
                    path,
                    line,
                    format!("seq element '{}' is not an integer", x.trim()),
                )
            })
        })
        .collect()
}

/// A `csv` error as a [`DataError`]: an io error (a line over the limit)
/// keeps its own message; anything else is a bad record at its line.
fn csv_error(path: &Path, what: &str, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize).unwrap_or(1);
    let msg = format!("{what}: {e}");
    match e.into_kind() {
        csv::ErrorKind::Io(io) => DataError::io(path, io),
        _ => DataError::parse(path, line, msg),
    }
}

/// Reads a DLLM2Rec CSV; every `seq` list must hold exactly `seq_size`
/// entries (the reference pads each window to `seq_size`).
fn read_dllm2rec_csv(path: &Path, pad: u32, seq_size: usize) -> Result<Vec<RefRow>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(DataError::file(path, "file is empty"));
    }
    let mut rdr =
        csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(crate::fsutil::LineLimited::new(
                file,
                crate::fsutil::MAX_LINE_BYTES,
            ));
    let headers = rdr
        .headers()
        .map_err(|e| csv_error(path, "bad header", e))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                DataError::parse(
                    path,
                    1,
                    format!("header lacks column '{name}' (want seq,len_seq,next)"),
                )
            })
    };
    let (c_seq, c_len, c_next) = (col("seq")?, col("len_seq")?, col("next")?);
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, "bad CSV record", e))?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let get = |c: usize| rec.get(c).unwrap_or("");
        let seq = parse_list(path, line, get(c_seq))?;
        if seq.len() != seq_size {
            return Err(DataError::parse(
                path,
                line,
                format!(
                    "seq holds {} entries but data_statis.json says seq_size = {seq_size} (every window is padded to seq_size)",
                    seq.len()
                ),
            ));
        }
        let len_seq: i64 = get(c_len).trim().parse().map_err(|_| {
            DataError::parse(
                path,
                line,
                format!("len_seq '{}' is not an integer", get(c_len)),
            )
        })?;
        let next: f64 = get(c_next).trim().parse().map_err(|_| {
            DataError::parse(
                path,
                line,
                format!("next '{}' is not a number", get(c_next)),
            )
        })?;
        let history = unpad(path, line, &seq, len_seq, pad)?;
        let next = check_next(path, line, next, pad)?;
        rows.push(RefRow {
            history,
            next,
            line,
        });
    }
    if rows.is_empty() {
        return Err(DataError::file(path, "no data rows"));
    }
    Ok(rows)
}

/// Options shared by the reference readers.
#[derive(Clone, Debug)]
pub struct RefOptions {
    /// Keep only rows whose history has at least this many items
    /// (iLoRA's loaders keep `len_seq >= 3`).
    pub min_history: usize,
}

fn build(
    name: &str,
    titles: Vec<String>,
    splits: [(&str, Vec<RefRow>); 3],
    opts: &RefOptions,
    users_known: bool,
    provenance: serde_json::Value,
) -> Result<Dataset> {
    let items: Vec<Item> = titles
        .into_iter()
        .enumerate()
        .map(|(i, title)| Item {
            raw_id: i.to_string(),
            title,
        })
        .collect();
    let mut sequences = Vec::new();
    let mut out: [Vec<Row>; 3] = Default::default();
    for (k, (split, rows)) in splits.into_iter().enumerate() {
        let mut group = 0usize;
        for (i, r) in rows.into_iter().enumerate() {
            // A training user's rows are consecutive and start with an empty
            // history (iLoRA); held-out rows are one user each.
            if split != "train" || (r.history.is_empty() && i > 0) {
                group += 1;
            }
            if r.history.len() < opts.min_history {
                continue;
            }
            let mut ids: Vec<ItemId> = r.history.iter().map(|&x| x + 1).collect();
            let pos = ids.len() as u32;
            ids.push(r.next + 1);
            out[k].push(Row {
                key: format!("{split}:{}", r.line),
                seq: sequences.len() as u32,
                pos,
            });
            sequences.push(Sequence {
                user: format!("{split}-u{group}"),
                items: ids,
                timestamps: None,
            });
        }
    }
    for (rows, which) in out.iter().zip(["train", "valid", "test"]) {
        if rows.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset '{name}': the {which} split has no rows with at least min_history = {} items of history",
                opts.min_history
            )));
        }
    }
    let [train, valid, test] = out;
    let ds = Dataset {
        name: name.to_string(),
        items,
        sequences,
        train,
        valid,
        test,
        users_known,
        row_layout: true,
        provenance,
    };
    ds.validate()?;
    Ok(ds)
}

/// Reads the iLoRA/LLaRA JSONL layout from `dir`.
pub fn read_ilora(dir: &Path, opts: &RefOptions) -> Result<Dataset> {
    require_dir(dir)?;
    let names = require_file(dir, "id2name.txt")?;
    let titles = read_id2name(&names)?;
    let pad = titles.len() as u32;
    let train = read_jsonl(&find_ci(dir, "train_data.jsonl")?, pad)?;
    let valid = read_jsonl(&find_ci(dir, "Val_data.jsonl")?, pad)?;
    let test = read_jsonl(&find_ci(dir, "Test_data.jsonl")?, pad)?;
    build(
        "ilora",
        titles,
        [("train", train), ("valid", valid), ("test", test)],
        opts,
        true,
        serde_json::json!({
            "layout": "ilora",
            "min_history": opts.min_history,
            "users": "training users are runs of consecutive rows starting at an empty history; each held-out row is one user",
            "interactions": "counted as rows (target events)",
        }),
    )
}

/// `data_statis.json` of the DLLM2Rec layout (converted from its pickle):
/// `seq_size` is the length every padded `seq` list has, `item_num` the
/// number of items (ids `0..item_num`, `item_num` itself is the padding).
#[derive(Deserialize)]
struct Statis {
    seq_size: u64,
    item_num: u64,
}

/// Reads the DLLM2Rec CSV layout from `dir`.
pub fn read_dllm2rec(dir: &Path, opts: &RefOptions) -> Result<Dataset> {
    require_dir(dir)?;
    let statis_path = dir.join("data_statis.json");
    let statis: Statis = match crate::fsutil::read_small_text(&statis_path) {
        Ok(s) => serde_json::from_str(&s)
            .map_err(|e| DataError::file(&statis_path, format!("bad JSON: {e}")))?,
        Err(DataError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::file(
                &statis_path,
                "file not found; write {\"seq_size\":10,\"item_num\":N} (the pickled data_statis.df is never loaded)",
            ))
        }
        Err(e) => return Err(e),
    };
    if statis.item_num == 0 || statis.item_num >= MAX_ITEMS {
        return Err(DataError::file(
            &statis_path,
            format!("item_num {} is not in 1..{MAX_ITEMS}", statis.item_num),
        ));
    }
    if statis.seq_size == 0 || statis.seq_size > MAX_SEQ_SIZE {
        return Err(DataError::file(
            &statis_path,
            format!("seq_size {} is not in 1..={MAX_SEQ_SIZE}", statis.seq_size),
        ));
    }
    let pad = statis.item_num as u32;
    let seq_size = statis.seq_size as usize;
    let train = read_dllm2rec_csv(&require_file(dir, "train_data.csv")?, pad, seq_size)?;
    let valid = read_dllm2rec_csv(&require_file(dir, "val_data.csv")?, pad, seq_size)?;
    let test = read_dllm2rec_csv(&require_file(dir, "test_data.csv")?, pad, seq_size)?;
    let titles = match find_ci(dir, "id2name.txt") {
        Ok(p) => {
            let t = read_id2name(&p)?;
            if t.len() != pad as usize {
                return Err(DataError::file(
                    &p,
                    format!("has {} titles but item_num is {pad}", t.len()),
                ));
            }
            t
        }
        Err(_) => {
            // Without a title file the table is sized by the ids the rows
            // use, never by the declared count alone.
            let used = [&train, &valid, &test]
                .iter()
                .flat_map(|rows| rows.iter())
                .flat_map(|r| r.history.iter().chain(std::iter::once(&r.next)))
                .max()
                .map_or(0, |&m| m as u64 + 1);
            if used < statis.item_num {
                return Err(DataError::file(
                    &statis_path,
                    format!(
                        "item_num is {pad} but the rows only use ids below {used}; fix item_num or add id2name.txt listing every item"
                    ),
                ));
            }
            (0..pad).map(|i| format!("item {i}")).collect()
        }
    };
    build(
        "dllm2rec",
        titles,
        [("train", train), ("valid", valid), ("test", test)],
        opts,
        false,
        serde_json::json!({
            "layout": "dllm2rec",
            "min_history": opts.min_history,
            "interactions": "counted as rows (target events)",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ilora_dir(train: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("id2name.txt"), "0::A\n1::B\n2::C::D\n3::E\n").unwrap();
        std::fs::write(d.path().join("train_data.jsonl"), train).unwrap();
        let held = "{\"seq\":[0,1,2,4],\"len_seq\":3,\"next\":3}\n";
        std::fs::write(d.path().join("Val_data.jsonl"), held).unwrap();
        std::fs::write(d.path().join("Test_data.jsonl"), held).unwrap();
        d
    }

    const TRAIN: &str = "{\"seq\":[4,4,4,4],\"len_seq\":1,\"next\":0}\n\
        {\"seq\":[0,4,4,4],\"len_seq\":1,\"next\":1}\n\
        {\"seq\":[0,1,4,4],\"len_seq\":2,\"next\":2}\n\
        {\"seq\":[4,4,4,4],\"len_seq\":1,\"next\":3}\n\
        {\"seq\":[3,4,4,4],\"len_seq\":1,\"next\":2}\n";

    #[test]
    fn ilora_rows_shift_ids_and_group_users() {
        let d = ilora_dir(TRAIN);
        let ds = read_ilora(d.path(), &RefOptions { min_history: 1 }).unwrap();
        assert_eq!(ds.num_items(), 4);
        assert_eq!(ds.title(3), Some("C::D"));
        assert_eq!(ds.train.len(), 3);
        assert_eq!(ds.history(&ds.train[1]), &[1, 2]);
        assert_eq!(ds.target(&ds.train[1]), 3);
        assert_eq!(ds.train[1].key, "train:3");
        assert_eq!(ds.num_users(), Some(4)); // 2 training users + 1 valid + 1 test
        let ds3 = read_ilora(d.path(), &RefOptions { min_history: 2 }).unwrap();
        assert_eq!(ds3.train.len(), 1);
    }

    #[test]
    fn ilora_bad_rows_name_file_and_line() {
        let d = ilora_dir("{\"seq\":[0,4,1,4],\"len_seq\":2,\"next\":2}\n");
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train_data.jsonl:1: a real item follows padding"),
            "{e}"
        );
        let d = ilora_dir(
            "{\"seq\":[0,1,4,4],\"len_seq\":2,\"next\":2}\n{\"seq\":[0,1,4,4],\"len_seq\":2\n",
        );
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("train_data.jsonl:2: bad JSON row"), "{e}");
        let d = ilora_dir("{\"seq\":[0,9,4,4],\"len_seq\":2,\"next\":2}\n");
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train_data.jsonl:1: item id 9 is outside"),
            "{e}"
        );
        let d = ilora_dir("{\"seq\":[0,1,4,4],\"len_seq\":3,\"next\":2}\n");
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("train_data.jsonl:1: len_seq is 3 but"), "{e}");
    }

    #[test]
    fn dllm2rec_csv_with_float_targets() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("data_statis.json"),
            "{\"seq_size\":3,\"item_num\":5}",
        )
        .unwrap();
        let rows = "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n\"[0, 2, 3]\",3,1.0\n";
        for f in ["train_data.csv", "val_data.csv", "test_data.csv"] {
            std::fs::write(d.path().join(f), rows).unwrap();
        }
        let ds = read_dllm2rec(d.path(), &RefOptions { min_history: 1 }).unwrap();
        assert_eq!(ds.history(&ds.train[0]), &[2, 2]);
        assert_eq!(ds.target(&ds.train[0]), 5);
        assert_eq!(ds.train[1].key, "train:3");
        assert_eq!(ds.num_users(), None);
        std::fs::write(
            d.path().join("val_data.csv"),
            "seq,len_seq,next\n\"[1, 1, 5]\",2,4.5\n",
        )
        .unwrap();
        let e = read_dllm2rec(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("val_data.csv:2: target id 4.5"), "{e}");
        std::fs::remove_file(d.path().join("train_data.csv")).unwrap();
        let e = read_dllm2rec(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("train_data.csv: file not found"), "{e}");
    }

    #[test]
    fn id2name_huge_id_is_refused_without_allocating() {
        let d = ilora_dir(TRAIN);
        std::fs::write(d.path().join("id2name.txt"), "0::A\n4000000000::Huge\n").unwrap();
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("id2name.txt:2: item id 4000000000 is not below the limit"),
            "{e}"
        );
        // Below the cap but far beyond the lines present: sized by the lines.
        std::fs::write(d.path().join("id2name.txt"), "0::A\n16000000::Big\n").unwrap();
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("id2name.txt:2: item id 16000000 is not below the number of items 2"),
            "{e}"
        );
        std::fs::write(d.path().join("id2name.txt"), "0::A\n1::B\n0::C\n").unwrap();
        let e = read_ilora(d.path(), &RefOptions { min_history: 1 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("id2name.txt:3: item id 0 appears twice (first on line 1)"),
            "{e}"
        );
    }

    fn dllm2rec_dir(statis: &str, rows: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("data_statis.json"), statis).unwrap();
        for f in ["train_data.csv", "val_data.csv", "test_data.csv"] {
            std::fs::write(d.path().join(f), rows).unwrap();
        }
        d
    }

    #[test]
    fn dllm2rec_statis_is_bounded_and_checked_against_rows() {
        let rows = "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n";
        let opts = RefOptions { min_history: 1 };
        let d = dllm2rec_dir("{\"seq_size\":3,\"item_num\":4000000000}", rows);
        let e = read_dllm2rec(d.path(), &opts).unwrap_err().to_string();
        assert!(
            e.contains("data_statis.json: item_num 4000000000 is not in 1..16777216"),
            "{e}"
        );
        let unpadded = "seq,len_seq,next\n\"[1, 1, 4]\",3,2.0\n";
        let d = dllm2rec_dir("{\"seq_size\":3,\"item_num\":9000000}", unpadded);
        let e = read_dllm2rec(d.path(), &opts).unwrap_err().to_string();
        assert!(
            e.contains("item_num is 9000000 but the rows only use ids below 5"),
            "{e}"
        );
        let d = dllm2rec_dir("{\"seq_size\":2,\"item_num\":5}", rows);
        let e = read_dllm2rec(d.path(), &opts).unwrap_err().to_string();
        assert!(
            e.contains(
                "train_data.csv:2: seq holds 3 entries but data_statis.json says seq_size = 2"
            ),
            "{e}"
        );
        let d = dllm2rec_dir("{\"seq_size\":0,\"item_num\":5}", rows);
        let e = read_dllm2rec(d.path(), &opts).unwrap_err().to_string();
        assert!(e.contains("seq_size 0 is not in"), "{e}");
    }
}
