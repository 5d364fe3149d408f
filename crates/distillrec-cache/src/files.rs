//! Building a cache from plain files written by other LLM recommenders
//! (BIGRec, DLLM2Rec, ...): a top-K table, optionally a distance table and
//! an item-embedding matrix.
//!
//! Accepted layouts:
//! - top-K and distances: `.csv` (comma-separated, optional header), `.txt`
//!   or `.tsv` (whitespace-separated, as written by `np.savetxt`), or `.npy`
//!   (2-D `[rows, columns]`). With [`RowKeys::InFile`] the first column of
//!   a text file is the row key. Ids written as integral floats (`12.0`,
//!   `1.2e+01`) are accepted; `12.5` is not.
//! - embeddings: `.npy` `[M, D]` or `.safetensors` (tensor `item_embeddings`,
//!   or the only tensor), f32 or f64.
//!
//! Whatever the order of the files, the cache comes out in canonical order
//! (the order of `ds.train`); unknown and duplicate keys are errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use distillrec_data::fsutil::{for_each_line, Encoding};
use distillrec_data::{DataError, Dataset};

use crate::cache::{key_problem, row_problem, sort_row, DistanceKind, TeacherCache};
use crate::npy::{self, Value};
use crate::source::CacheSource;
use crate::Result;

distillrec_data::named_enum! {
    /// How item ids in the files are numbered.
    pub enum IdSpace {
        /// The dataset's internal ids `1..=N` (0 is padding and is refused).
        Internal = "internal",
        /// The dataset's raw item ids (`Item::raw_id`, e.g. DLLM2Rec's 0-based
        /// `"0".."N-1"`), mapped to internal ids; an unknown raw id is an error.
        /// For embeddings, row `r` of the matrix is raw id `r.to_string()`.
        Raw = "raw",
    }
}

/// Where the row keys of the top-K file come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowKeys {
    /// The first column of the (text) top-K and distance files.
    InFile,
    /// A file with one key per line, aligned with the rows of the top-K file.
    KeysFile(PathBuf),
    /// Row `i` of the files is `ds.train[i]`; the row count must equal
    /// `ds.train.len()` (DLLM2Rec's `myrank_train.txt` layout).
    TrainOrder,
}

/// What [`from_files`] reads.
#[derive(Clone, Debug, PartialEq)]
pub struct FromFiles {
    /// Teacher top-K ids: `.csv`, `.txt`/`.tsv` or `.npy`.
    pub topk: PathBuf,
    /// Distances aligned with `topk` (same layout), if any; without them
    /// every `d` is 0 and the distance kind is `none`.
    pub distances: Option<PathBuf>,
    /// LLM item embeddings: `.npy` or `.safetensors`.
    pub embeddings: Option<PathBuf>,
    /// Where row keys come from.
    pub keys: RowKeys,
    /// How ids are numbered in `topk` and `embeddings`.
    pub ids: IdSpace,
    /// Keep only the first `k` columns (default: all columns of `topk`).
    pub k: Option<usize>,
    /// What the distances mean (`given`, `l2`, `neg_log_prob`); without
    /// `distances` the cache records `none` whatever this says.
    pub distance_kind: DistanceKind,
    /// Put each row in rank order (by distance, ties by item id) instead of
    /// refusing rows whose distances decrease along the row. With `k`, the
    /// first `k` columns of the file are kept, then ordered.
    pub sort: bool,
}

/// Where a record of an input file is, for messages.
#[derive(Clone, Copy, Debug)]
enum Loc {
    /// 1-based line of a text file.
    Line(usize),
    /// 0-based row of an array file.
    Row(usize),
}

fn err_at(path: &Path, loc: Loc, msg: impl Into<String>) -> DataError {
    match loc {
        Loc::Line(l) => DataError::parse(path, l, msg),
        Loc::Row(r) => DataError::file(path, format!("row {r}: {}", msg.into())),
    }
}

/// One value of an input table before it is interpreted.
#[derive(Clone, Copy, Debug)]
enum Cell<'a> {
    Text(&'a str),
    Num(Value),
}

impl std::fmt::Display for Cell<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(s) => write!(f, "'{s}'"),
            Cell::Num(Value::Int(i)) => write!(f, "{i}"),
            Cell::Num(Value::Float(x)) => write!(f, "{x}"),
        }
    }
}

/// A table read from a file: optional keys, per-row location, `width`
/// kept columns per row, values row-major.
struct Table<T> {
    path: PathBuf,
    keys: Option<Vec<String>>,
    locs: Vec<Loc>,
    width: usize,
    data: Vec<T>,
}

impl<T> Table<T> {
    fn rows(&self) -> usize {
        self.locs.len()
    }
    fn row(&self, r: usize) -> &[T] {
        &self.data[r * self.width..(r + 1) * self.width]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Text,
    Npy,
}

fn kind_of(path: &Path) -> Result<Kind> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => Ok(Kind::Csv),
        "txt" | "tsv" => Ok(Kind::Text),
        "npy" => Ok(Kind::Npy),
        _ => Err(DataError::file(
            path,
            "unsupported extension; expected .csv, .txt/.tsv (whitespace-separated) or .npy",
        )),
    }
}

/// Collects rows of a text table: header detection, key column, constant
/// width, truncation to `k` columns.
struct TextRows<'a, T, P> {
    path: &'a Path,
    keyed: bool,
    k: Option<usize>,
    is_value: &'a dyn Fn(&str) -> bool,
    parse: P,
    first: bool,
    file_width: usize,
    table: Table<T>,
}

impl<T, P: FnMut(Cell<'_>) -> std::result::Result<T, String>> TextRows<'_, T, P> {
    fn line(&mut self, fields: &[&str], loc: Loc) -> Result<()> {
        if fields.iter().all(|f| f.is_empty()) {
            return Ok(());
        }
        let (key, values) = if self.keyed {
            (Some(fields[0]), &fields[1..])
        } else {
            (None, fields)
        };
        if std::mem::take(&mut self.first) && values.first().is_some_and(|v| !(self.is_value)(v)) {
            return Ok(()); // the header line
        }
        if self.table.locs.is_empty() {
            self.file_width = values.len();
            let w = self.k.unwrap_or(values.len());
            if w == 0 {
                return Err(err_at(self.path, loc, "no value columns"));
            }
            if w > values.len() {
                return Err(err_at(
                    self.path,
                    loc,
                    format!("{} value columns, fewer than k = {w}", values.len()),
                ));
            }
            self.table.width = w;
        } else if values.len() != self.file_width {
            return Err(err_at(
                self.path,
                loc,
                format!(
                    "{} value columns but the first data row has {}",
                    values.len(),
                    self.file_width
                ),
            ));
        }
        if let Some(key) = key {
            if let Some(msg) = key_problem(key) {
                return Err(err_at(self.path, loc, msg));
            }
            self.table
                .keys
                .get_or_insert_with(Vec::new)
                .push(key.to_owned());
        }
        for (j, v) in values[..self.table.width].iter().enumerate() {
            let x = (self.parse)(Cell::Text(v))
                .map_err(|m| err_at(self.path, loc, format!("column {j}: {m}")))?;
            self.table.data.push(x);
        }
        self.table.locs.push(loc);
        Ok(())
    }
}

/// Reads a table of values from `path`. `keyed`: the first column of a text
/// file is a row key. `is_value` tells a value from a header field (only the
/// first line can be a header); `parse` interprets one value.
fn read_table<T>(
    path: &Path,
    keyed: bool,
    k: Option<usize>,
    is_value: &dyn Fn(&str) -> bool,
    mut parse: impl FnMut(Cell<'_>) -> std::result::Result<T, String>,
) -> Result<Table<T>> {
    let kind = kind_of(path)?;
    let mut table = Table {
        path: path.to_path_buf(),
        keys: None,
        locs: Vec::new(),
        width: 0,
        data: Vec::new(),
    };
    if kind == Kind::Npy {
        if keyed {
            return Err(DataError::file(
                path,
                "an .npy file has no key column; give the keys in a keys file or use train order",
            ));
        }
        let a = npy::read(path)?;
        let (rows, cols) = a.dims2(path)?;
        let w = k.unwrap_or(cols);
        if w == 0 || w > cols {
            return Err(DataError::file(
                path,
                format!("{cols} columns; need at least k = {w} (and at least 1)"),
            ));
        }
        table.width = w;
        for r in 0..rows {
            for j in 0..w {
                let x = parse(Cell::Num(a.get(r * cols + j)))
                    .map_err(|m| err_at(path, Loc::Row(r), format!("column {j}: {m}")))?;
                table.data.push(x);
            }
            table.locs.push(Loc::Row(r));
        }
        return Ok(table);
    }
    let mut rows = TextRows {
        path,
        keyed,
        k,
        is_value,
        parse,
        first: true,
        file_width: 0,
        table,
    };
    if kind == Kind::Csv {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line() as usize);
                DataError::parse(path, line, e.to_string())
            })?;
            let line = rec.position().map_or(0, |p| p.line() as usize);
            let fields: Vec<&str> = rec.iter().collect();
            rows.line(&fields, Loc::Line(line))?;
        }
    } else {
        for_each_line(path, Encoding::Utf8, |line, text| {
            let fields: Vec<&str> = text.split_whitespace().collect();
            rows.line(&fields, Loc::Line(line))
        })?;
    }
    if rows.table.locs.is_empty() {
        return Err(DataError::file(path, "no data rows"));
    }
    Ok(rows.table)
}

/// An integral value, refusing fractions and non-numbers.
fn integral(cell: Cell<'_>) -> std::result::Result<i64, String> {
    let f = match cell {
        Cell::Num(Value::Int(i)) => return Ok(i),
        Cell::Num(Value::Float(f)) => f,
        Cell::Text(s) => {
            if let Ok(i) = s.parse::<i64>() {
                return Ok(i);
            }
            s.parse::<f64>()
                .map_err(|_| format!("{cell} is not an item id"))?
        }
    };
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Ok(f as i64)
    } else {
        Err(format!("{cell} is not an integral item id"))
    }
}

/// Interprets one top-K cell as an internal id.
fn parse_id(
    cell: Cell<'_>,
    raw: Option<&HashMap<&str, u32>>,
    n: usize,
) -> std::result::Result<u32, String> {
    match raw {
        None => {
            let v = integral(cell)?;
            if v < 1 || v as u64 > n as u64 {
                return Err(format!("item id {v} is outside 1..={n}"));
            }
            Ok(v as u32)
        }
        Some(map) => {
            if let Cell::Text(s) = cell {
                if let Some(&id) = map.get(s) {
                    return Ok(id);
                }
            }
            let v = integral(cell)
                .map_err(|_| format!("raw item id {cell} is not in the dataset's catalogue"))?;
            map.get(v.to_string().as_str())
                .copied()
                .ok_or_else(|| format!("raw item id {cell} is not in the dataset's catalogue"))
        }
    }
}

fn parse_distance(cell: Cell<'_>) -> std::result::Result<f32, String> {
    let d = match cell {
        Cell::Num(Value::Int(i)) => i as f64,
        Cell::Num(Value::Float(f)) => f,
        Cell::Text(s) => s
            .parse::<f64>()
            .map_err(|_| format!("{cell} is not a number"))?,
    };
    let d32 = d as f32;
    if d32.is_finite() {
        Ok(d32)
    } else {
        Err(format!("distance {cell} is not a finite f32"))
    }
}

/// Builds a cache for `ds` (fingerprint `fingerprint`) from plain files;
/// see the module documentation for the layouts. The cache has source
/// `files`, `history_masked = false` (the files do not say) and rows in
/// canonical order. Every error names the file and the line (text) or row
/// (arrays) at fault.
pub fn from_files(spec: &FromFiles, fingerprint: &str, ds: &Dataset) -> Result<TeacherCache> {
    let n = ds.num_items();
    let keyed = spec.keys == RowKeys::InFile;
    let raw_map: Option<HashMap<&str, u32>> = (spec.ids == IdSpace::Raw).then(|| {
        ds.items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.raw_id.as_str(), i as u32 + 1))
            .collect()
    });
    let raw = raw_map.as_ref();
    let id_like = |s: &str| s.parse::<f64>().is_ok() || raw.is_some_and(|m| m.contains_key(s));
    let top = read_table(&spec.topk, keyed, spec.k, &id_like, |c| parse_id(c, raw, n))?;
    let k = top.width;
    for r in 0..top.rows() {
        let row = top.row(r);
        for j in 0..k {
            if let Some(p) = row[..j].iter().position(|&x| x == row[j]) {
                return Err(err_at(
                    &top.path,
                    top.locs[r],
                    format!(
                        "item {} is in columns {p} and {j}; top-K ids must be distinct",
                        row[j]
                    ),
                ));
            }
        }
    }

    // Row keys and where each came from.
    let (keys, key_locs): (Vec<String>, Vec<(PathBuf, Loc)>) = match &spec.keys {
        RowKeys::InFile => {
            let keys = top.keys.clone().unwrap_or_default();
            let locs = top.locs.iter().map(|&l| (top.path.clone(), l)).collect();
            (keys, locs)
        }
        RowKeys::KeysFile(p) => {
            let mut keys = Vec::new();
            let mut locs = Vec::new();
            for_each_line(p, Encoding::Utf8, |line, text| {
                let key = text.trim();
                if let Some(msg) = key_problem(key) {
                    return Err(DataError::parse(p, line, msg));
                }
                keys.push(key.to_owned());
                locs.push((p.clone(), Loc::Line(line)));
                Ok(())
            })?;
            if keys.len() != top.rows() {
                return Err(DataError::file(
                    p,
                    format!(
                        "{} keys but {} has {} rows",
                        keys.len(),
                        top.path.display(),
                        top.rows()
                    ),
                ));
            }
            (keys, locs)
        }
        RowKeys::TrainOrder => {
            if top.rows() != ds.train.len() {
                return Err(DataError::file(
                    &top.path,
                    format!(
                        "{} rows but dataset {} has {} training rows; keys = train order needs exactly one row per training row, in order",
                        top.rows(),
                        ds.name,
                        ds.train.len()
                    ),
                ));
            }
            let keys = ds.train.iter().map(|r| r.key.clone()).collect();
            let locs = top.locs.iter().map(|&l| (top.path.clone(), l)).collect();
            (keys, locs)
        }
    };

    // Distances, aligned with the top-K rows (by key when both are keyed).
    let (distances, distance_kind): (Vec<f32>, DistanceKind) = match &spec.distances {
        None => (vec![0.0; top.rows() * k], DistanceKind::None),
        Some(p) => {
            let d_keyed = keyed && kind_of(p)? != Kind::Npy;
            let is_num = |s: &str| s.parse::<f64>().is_ok();
            let d = read_table(p, d_keyed, Some(k), &is_num, parse_distance)?;
            if d.rows() != top.rows() {
                return Err(DataError::file(
                    p,
                    format!(
                        "{} rows but the top-K file {} has {}",
                        d.rows(),
                        top.path.display(),
                        top.rows()
                    ),
                ));
            }
            let order: Vec<usize> = match &d.keys {
                None => (0..d.rows()).collect(),
                Some(dkeys) => {
                    let mut at: HashMap<&str, usize> = HashMap::with_capacity(dkeys.len());
                    for (r, key) in dkeys.iter().enumerate() {
                        if at.insert(key, r).is_some() {
                            return Err(err_at(
                                p,
                                d.locs[r],
                                format!("key {key:?} is given twice"),
                            ));
                        }
                    }
                    let mut order = Vec::with_capacity(keys.len());
                    for (r, key) in keys.iter().enumerate() {
                        match at.get(key.as_str()) {
                            Some(&dr) => order.push(dr),
                            None => {
                                let (kp, kl) = &key_locs[r];
                                return Err(err_at(
                                    kp,
                                    *kl,
                                    format!(
                                        "key {key:?} has no row in the distance file {}",
                                        p.display()
                                    ),
                                ));
                            }
                        }
                    }
                    order
                }
            };
            let mut out = Vec::with_capacity(top.rows() * k);
            for dr in order {
                out.extend_from_slice(d.row(dr));
            }
            (out, spec.distance_kind)
        }
    };

    // Keys → training rows; canonical order.
    let index: HashMap<&str, usize> = ds
        .train
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; ds.train.len()];
    let mut unknown = Vec::new();
    for (r, key) in keys.iter().enumerate() {
        match index.get(key.as_str()) {
            None => unknown.push(r),
            Some(&t) => {
                if let Some(r0) = owner[t].replace(r) {
                    let (kp, kl) = &key_locs[r];
                    let first = match key_locs[r0].1 {
                        Loc::Line(l) => format!("line {l}"),
                        Loc::Row(x) => format!("row {x}"),
                    };
                    return Err(err_at(
                        kp,
                        *kl,
                        format!("key {key:?} is given twice (also at {first})"),
                    ));
                }
            }
        }
    }
    if let Some(&r) = unknown.first() {
        let (kp, kl) = &key_locs[r];
        // Every key unknown: most likely the first column is not a row key.
        let hint = if unknown.len() < keys.len() {
            ""
        } else if keyed {
            "; if the first column is not the row key, give the keys in a file with --keys or pass --train-order (rows in training order)"
        } else {
            "; were the keys written for another dataset? (--train-order takes the rows in training order)"
        };
        return Err(err_at(
            kp,
            *kl,
            format!(
                "key {:?} is not a training row of dataset {} ({} of {} keys are unknown){hint}",
                keys[r],
                ds.name,
                unknown.len(),
                keys.len()
            ),
        ));
    }

    let mut cache = TeacherCache::new(fingerprint, ds, k, distance_kind, false, CacheSource::Files);
    for &r in owner.iter().flatten() {
        let mut items = top.row(r).to_vec();
        let mut d = distances[r * k..(r + 1) * k].to_vec();
        if spec.sort {
            sort_row(&mut items, &mut d);
        }
        if let Some(msg) = row_problem(&items, &d, ds.num_items(), distance_kind) {
            let hint = if msg.contains("rank order") {
                " (pass --sort to order each row by distance)"
            } else {
                ""
            };
            return Err(err_at(
                &top.path,
                top.locs[r],
                format!("key {:?}: {msg}{hint}", keys[r]),
            ));
        }
        cache.push_row(&keys[r], &items, &d)?;
    }
    if let Some(p) = &spec.embeddings {
        let (table, dim) = read_embeddings(p, spec.ids, ds)?;
        cache.set_embeddings(table, dim)?;
    }
    Ok(cache)
}

/// A 2-D float matrix `(rows, cols, values as f64)` from `.npy` or `.safetensors`.
fn read_matrix(path: &Path) -> Result<(usize, usize, Vec<f64>)> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "npy" => {
            let a = npy::read(path)?;
            let (r, c) = a.dims2(path)?;
            let v = match a.data {
                npy::NpyData::F32(v) => v.into_iter().map(f64::from).collect(),
                npy::NpyData::F64(v) => v,
                npy::NpyData::Int(_) => {
                    return Err(DataError::file(path, "embeddings must be float (f4 or f8)"))
                }
            };
            Ok((r, c, v))
        }
        "safetensors" => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                DataError::file(path, format!("not a valid safetensors file ({e})"))
            })?;
            let names = st.names();
            let name = if names.contains(&"item_embeddings") {
                "item_embeddings"
            } else if names.len() == 1 {
                names[0]
            } else {
                return Err(DataError::file(
                    path,
                    format!("no tensor 'item_embeddings' and more than one tensor ({names:?})"),
                ));
            };
            let t = st
                .tensor(name)
                .map_err(|e| DataError::file(path, format!("tensor '{name}': {e}")))?;
            let [r, c] = t.shape() else {
                return Err(DataError::file(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?}, expected [rows, dim]",
                        t.shape()
                    ),
                ));
            };
            let v = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
                d => {
                    return Err(DataError::file(
                        path,
                        format!("tensor '{name}' has dtype {d}; expected F32 or F64"),
                    ))
                }
            };
            Ok((*r, *c, v))
        }
        _ => Err(DataError::file(
            path,
            "unsupported extension for embeddings; expected .npy or .safetensors",
        )),
    }
}

/// Reads item embeddings and maps them to the `[N + 1, D]` table (row 0 zeros).
fn read_embeddings(path: &Path, ids: IdSpace, ds: &Dataset) -> Result<(Vec<f32>, usize)> {
    let n = ds.num_items();
    let (rows, dim, v) = read_matrix(path)?;
    if dim == 0 {
        return Err(DataError::file(path, "embedding dimension is 0"));
    }
    // Source row for each internal id 1..=N.
    let source: Vec<usize> = match ids {
        IdSpace::Internal => {
            if rows == n + 1 {
                if let Some(j) = v[..dim].iter().position(|&x| x != 0.0) {
                    return Err(DataError::file(
                        path,
                        format!(
                            "row 0: the padding row of an [N + 1, D] table must be zeros (column {j} is {})",
                            v[j]
                        ),
                    ));
                }
                (1..=n).collect()
            } else if rows == n {
                (0..n).collect()
            } else {
                return Err(DataError::file(
                    path,
                    format!(
                        "{rows} rows; expected N + 1 = {} (row 0 = padding) or N = {n} (ids 1..=N) for dataset {}",
                        n + 1,
                        ds.name
                    ),
                ));
            }
        }
        IdSpace::Raw => {
            let mut src = Vec::with_capacity(n);
            for (i, it) in ds.items.iter().enumerate() {
                let r = it
                    .raw_id
                    .parse::<usize>()
                    .ok()
                    .filter(|r| r.to_string() == it.raw_id && *r < rows);
                match r {
                    Some(r) => src.push(r),
                    None => {
                        return Err(DataError::file(
                            path,
                            format!(
                                "item {} (raw id {:?}) has no row: row r of the matrix is raw id r, and it has {rows} rows",
                                i + 1,
                                it.raw_id
                            ),
                        ))
                    }
                }
            }
            src
        }
    };
    let mut table = vec![0f32; (n + 1) * dim];
    for (i, &r) in source.iter().enumerate() {
        let src = &v[r * dim..(r + 1) * dim];
        for (j, &x) in src.iter().enumerate() {
            let y = x as f32;
            if !y.is_finite() {
                return Err(DataError::file(
                    path,
                    format!("row {r}, column {j}: value {x} is not a finite f32"),
                ));
            }
            table[(i + 1) * dim + j] = y;
        }
    }
    Ok((table, dim))
}
