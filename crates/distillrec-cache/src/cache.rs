//! [`TeacherCache`]: the in-memory cache, its manifest, and directory I/O
//! (see the crate documentation for the format and its invariants).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_data::{DataError, Dataset};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::shard::ShardSpec;
use crate::source::CacheSource;
use crate::Result;

/// Format tag in `manifest.json`.
pub const FORMAT: &str = "distillrec-teacher-cache";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// The manifest file, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// One row key per line, in cache row order.
pub const KEYS_FILE: &str = "keys.txt";
/// Tensors `items` (U32 `[rows, k]`) and `distances` (F32 `[rows, k]`).
pub const ROWS_FILE: &str = "rows.safetensors";
/// Tensor `item_embeddings` (F32 `[N + 1, D]`), only when the cache has them.
pub const EMBEDDINGS_FILE: &str = "item_embeddings.safetensors";

/// The dataset a cache belongs to (`dir` is always `None` here).
pub use distillrec_data::DatasetRef;

/// The contents of `manifest.json`. It describes the data files and pins
/// them by SHA-256, so a reader never pairs it with other files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for caches this build writes.
    pub version: u32,
    /// The dataset whose training rows the keys name.
    pub dataset: DatasetRef,
    /// Catalogue size `N` of that dataset (ids `1..=N`).
    pub num_items: usize,
    /// Teacher candidates per row.
    pub k: usize,
    /// Number of rows (lines of `keys.txt`).
    pub rows: usize,
    /// `D` of the LLM item embeddings, or `None` when the cache has none.
    pub embedding_dim: Option<usize>,
    /// What `d` means (`neg_log_prob`, `l2`, `given`, `none`).
    pub distance: DistanceKind,
    /// Whether history items were excluded from the teacher's top-K.
    pub history_masked: bool,
    /// Where the teacher outputs come from (a checkpoint path, `files`, ...).
    pub source: CacheSource,
    /// The inference shard this cache holds, `None` for a whole cache.
    pub shard: Option<ShardSpec>,
    /// `sha256:<hex>` of each data file, by file name. Filled by
    /// [`TeacherCache::save`] and [`TeacherCache::load`].
    pub files: BTreeMap<String, String>,
    /// Program that wrote the cache (no timestamp, so equal caches are equal bytes).
    pub created_by: String,
}

/// What a teacher knows about selected training rows: per row its key, the
/// teacher's top-K items and their distances, plus optionally the table of
/// LLM item embeddings. Rows are joined to a dataset by key
/// ([`TeacherCache::check_against`]), never by position.
#[derive(Clone, Debug)]
pub struct TeacherCache {
    /// The manifest; `rows` and `embedding_dim` follow the data.
    pub manifest: CacheManifest,
    /// Row keys, one per cache row.
    pub keys: Vec<String>,
    /// Teacher top-K item ids, row-major `[rows, k]`, each in `1..=N`.
    pub items: Vec<u32>,
    /// Distances aligned with `items` (smaller = more confident), finite.
    pub distances: Vec<f32>,
    /// LLM item embeddings, row-major `[N + 1, D]`, row 0 (padding) zeros.
    pub embeddings: Option<Vec<f32>>,
    /// The directory the cache was loaded from (`None` if built in memory).
    /// Used only to name files in error messages; not saved, not compared.
    pub dir: Option<PathBuf>,
}

/// Equality of content: manifest (except `files`, which records the last
/// save or load), keys, items, distances and embeddings. `dir` is ignored.
impl PartialEq for TeacherCache {
    fn eq(&self, other: &Self) -> bool {
        let strip = |m: &CacheManifest| CacheManifest {
            files: BTreeMap::new(),
            ..m.clone()
        };
        strip(&self.manifest) == strip(&other.manifest)
            && self.keys == other.keys
            && self.items == other.items
            && self.distances == other.distances
            && self.embeddings == other.embeddings
    }
}

fn created_by() -> String {
    format!("distillrec-cache {}", env!("CARGO_PKG_VERSION"))
}

fn le_bytes_u32(xs: &[u32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_bytes_f32(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn safetensors_bytes(
    path: &Path,
    tensors: Vec<(&str, Dtype, Vec<usize>, &[u8])>,
) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in tensors {
        let v = TensorView::new(dtype, shape, data)
            .map_err(|e| DataError::file(path, format!("tensor {name}: {e}")))?;
        views.push((name, v));
    }
    safetensors::tensor::serialize(views, None)
        .map_err(|e| DataError::file(path, format!("cannot serialise: {e}")))
}

/// Reads tensor `name` of `st` as `[rows, cols]` little-endian 4-byte values.
fn tensor_4<'a>(
    path: &Path,
    st: &SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    shape: [usize; 2],
) -> Result<&'a [u8]> {
    let t = st
        .tensor(name)
        .map_err(|_| DataError::file(path, format!("tensor '{name}' is missing")))?;
    if t.dtype() != dtype {
        return Err(DataError::file(
            path,
            format!("tensor '{name}' has dtype {}, expected {dtype}", t.dtype()),
        ));
    }
    if t.shape() != shape {
        return Err(DataError::file(
            path,
            format!(
                "tensor '{name}' has shape {:?} but the manifest says {shape:?}",
                t.shape()
            ),
        ));
    }
    Ok(t.data())
}

fn deserialize<'a>(path: &Path, bytes: &'a [u8], names: &[&str]) -> Result<SafeTensors<'a>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| DataError::file(path, format!("not a valid safetensors file ({e})")))?;
    let mut have: Vec<&str> = st.names().into_iter().collect();
    have.sort_unstable();
    let mut want = names.to_vec();
    want.sort_unstable();
    if have != want {
        return Err(DataError::file(
            path,
            format!("holds tensors {have:?}, expected exactly {want:?}"),
        ));
    }
    Ok(st)
}

impl TeacherCache {
    /// An empty cache (no rows, no embeddings) for dataset `ds` with
    /// fingerprint `fingerprint`: `k` candidates per row, distance kind
    /// `distance`, teacher provenance `source`.
    pub fn new(
        fingerprint: &str,
        ds: &Dataset,
        k: usize,
        distance: DistanceKind,
        history_masked: bool,
        source: CacheSource,
    ) -> Self {
        TeacherCache {
            manifest: CacheManifest {
                format: FORMAT.into(),
                version: VERSION,
                dataset: DatasetRef {
                    fingerprint: fingerprint.into(),
                    name: ds.name.clone(),
                    dir: None,
                },
                num_items: ds.num_items(),
                k,
                rows: 0,
                embedding_dim: None,
                distance,
                history_masked,
                source,
                shard: None,
                files: BTreeMap::new(),
                created_by: created_by(),
            },
            keys: Vec::new(),
            items: Vec::new(),
            distances: Vec::new(),
            embeddings: None,
            dir: None,
        }
    }

    /// Teacher candidates per row.
    pub fn k(&self) -> usize {
        self.manifest.k
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.keys.len()
    }

    /// `D` of the item embeddings, if the cache has them.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.manifest.embedding_dim
    }

    /// The teacher candidates of cache row `r`.
    pub fn row_items(&self, r: usize) -> &[u32] {
        let k = self.k();
        &self.items[r * k..(r + 1) * k]
    }

    /// The distances of cache row `r`, aligned with [`Self::row_items`].
    pub fn row_distances(&self, r: usize) -> &[f32] {
        let k = self.k();
        &self.distances[r * k..(r + 1) * k]
    }

    /// Appends one row. Refuses a key that cannot be a line of `keys.txt`,
    /// a length other than `k`, ids outside `1..=N`, an id twice in the row
    /// and non-finite distances, so that a cache in memory is always one
    /// that [`Self::save`] can write and [`Self::load`] will accept (unique
    /// keys are checked on save).
    pub fn push_row(&mut self, key: &str, items: &[u32], distances: &[f32]) -> Result<()> {
        let (k, n) = (self.k(), self.manifest.num_items);
        let bad = |msg: String| {
            Err(DataError::Invalid(format!(
                "teacher cache row {key:?}: {msg}"
            )))
        };
        if k == 0 {
            return bad("the cache has k = 0; k must be at least 1".into());
        }
        if let Some(msg) = key_problem(key) {
            return bad(msg.into());
        }
        if items.len() != k || distances.len() != k {
            return bad(format!(
                "{} items and {} distances, expected k = {k} of each",
                items.len(),
                distances.len()
            ));
        }
        if let Some(msg) = row_problem(items, distances, n, self.manifest.distance) {
            return bad(msg);
        }
        self.keys.push(key.to_owned());
        self.items.extend_from_slice(items);
        self.distances.extend_from_slice(distances);
        self.manifest.rows = self.keys.len();
        Ok(())
    }

    /// Sets the LLM item embeddings: `table` is row-major `[N + 1, dim]`,
    /// row 0 (padding) all zeros, every value finite.
    pub fn set_embeddings(&mut self, table: Vec<f32>, dim: usize) -> Result<()> {
        if let Some(msg) = embeddings_problem(&table, dim, self.manifest.num_items) {
            return Err(DataError::Invalid(format!(
                "teacher cache item embeddings: {msg}"
            )));
        }
        self.embeddings = Some(table);
        self.manifest.embedding_dim = Some(dim);
        Ok(())
    }

    /// Path of `name` in the cache directory, for messages.
    fn path_of(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(name),
            None => Path::new("(unsaved teacher cache)").join(name),
        }
    }

    /// Checks every invariant of the in-memory data; errors name the file
    /// under `dir` that holds (or would hold) the bad value.
    fn validate(&self, dir: &Path) -> Result<()> {
        let m = &self.manifest;
        let mpath = dir.join(MANIFEST_FILE);
        if m.format != FORMAT || m.version != VERSION {
            return Err(DataError::file(
                &mpath,
                format!(
                    "format {} v{} is not {FORMAT} v{VERSION}",
                    m.format, m.version
                ),
            ));
        }
        if m.k == 0 || m.num_items == 0 {
            return Err(DataError::file(
                &mpath,
                format!(
                    "k = {} and num_items = {} must both be at least 1",
                    m.k, m.num_items
                ),
            ));
        }
        let kpath = dir.join(KEYS_FILE);
        if m.rows != self.keys.len() {
            return Err(DataError::file(
                &kpath,
                format!(
                    "{} keys but the manifest says {} rows",
                    self.keys.len(),
                    m.rows
                ),
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(self.keys.len());
        for (r, key) in self.keys.iter().enumerate() {
            if let Some(msg) = key_problem(key) {
                return Err(DataError::parse(&kpath, r + 1, msg));
            }
            if let Some(first) = seen.insert(key, r) {
                return Err(DataError::parse(
                    &kpath,
                    r + 1,
                    format!(
                        "key {key:?} is also on line {}; keys must be unique",
                        first + 1
                    ),
                ));
            }
        }
        let rpath = dir.join(ROWS_FILE);
        let cells = m.rows * m.k;
        if self.items.len() != cells || self.distances.len() != cells {
            return Err(DataError::file(
                &rpath,
                format!(
                    "{} items and {} distances, expected rows × k = {} × {} = {cells}",
                    self.items.len(),
                    self.distances.len(),
                    m.rows,
                    m.k
                ),
            ));
        }
        for r in 0..m.rows {
            if let Some(msg) = row_problem(
                self.row_items(r),
                self.row_distances(r),
                m.num_items,
                m.distance,
            ) {
                return Err(DataError::file(
                    &rpath,
                    format!("row {r} (key {:?}): {msg}", self.keys[r]),
                ));
            }
        }
        let epath = dir.join(EMBEDDINGS_FILE);
        match (&self.embeddings, m.embedding_dim) {
            (None, None) => {}
            (Some(t), Some(d)) => {
                if let Some(msg) = embeddings_problem(t, d, m.num_items) {
                    return Err(DataError::file(&epath, msg));
                }
            }
            (Some(_), None) => {
                return Err(DataError::file(
                    &mpath,
                    "the cache has item embeddings but embedding_dim is null",
                ))
            }
            (None, Some(d)) => {
                return Err(DataError::file(
                    &mpath,
                    format!("embedding_dim is {d} but the cache has no item embeddings"),
                ))
            }
        }
        Ok(())
    }

    /// Writes the cache to `dir` (created if needed). Each file is written
    /// atomically; the old manifest is removed first and the new one written
    /// last with the SHA-256 of every data file, so a reader sees either no
    /// cache or a manifest whose hashes match the files. Saving over an
    /// existing cache replaces it (a stale embeddings file is removed).
    /// The bytes depend only on the content, so equal caches give equal files.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate(dir)?;
        // One writer at a time; temporary files of a killed writer go first.
        let _lock = distillrec_data::lock::DirLock::acquire(dir)?;
        distillrec_data::lock::remove_stale_temps(dir)?;
        let m = &self.manifest;
        let mut keys = Vec::with_capacity(self.keys.iter().map(|k| k.len() + 1).sum());
        for key in &self.keys {
            keys.extend_from_slice(key.as_bytes());
            keys.push(b'\n');
        }
        let (items, dists) = (le_bytes_u32(&self.items), le_bytes_f32(&self.distances));
        let rows = safetensors_bytes(
            &dir.join(ROWS_FILE),
            vec![
                ("items", Dtype::U32, vec![m.rows, m.k], &items),
                ("distances", Dtype::F32, vec![m.rows, m.k], &dists),
            ],
        )?;
        let mut files: Vec<(&str, Vec<u8>)> = vec![(KEYS_FILE, keys), (ROWS_FILE, rows)];
        if let (Some(t), Some(d)) = (&self.embeddings, m.embedding_dim) {
            let b = le_bytes_f32(t);
            let bytes = safetensors_bytes(
                &dir.join(EMBEDDINGS_FILE),
                vec![("item_embeddings", Dtype::F32, vec![m.num_items + 1, d], &b)],
            )?;
            files.push((EMBEDDINGS_FILE, bytes));
        }
        let mut manifest = m.clone();
        manifest.files = files
            .iter()
            .map(|(name, bytes)| (name.to_string(), distillrec_data::fsutil::sha256_of(bytes)))
            .collect();

        let mpath = dir.join(MANIFEST_FILE);
        remove_if_exists(&mpath)?;
        for (name, bytes) in &files {
            atomic_write(&dir.join(name), bytes)?;
        }
        if self.embeddings.is_none() {
            remove_if_exists(&dir.join(EMBEDDINGS_FILE))?;
        }
        atomic_write_json(&mpath, &manifest)
    }

    /// Reads a cache directory and checks it completely: format and version,
    /// the SHA-256 of every file against the manifest, tensor shapes against
    /// the manifest, ids in `1..=N` and unique per row, finite values, unique
    /// keys, embeddings row 0 zeros. Errors name the file (and the line of
    /// `keys.txt`). Whether it fits a dataset is [`Self::check_against`].
    pub fn load(dir: &Path) -> Result<TeacherCache> {
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::file(
                &mpath,
                "file not found; is this a teacher cache directory (or was its writing interrupted)?",
            ),
            _ => DataError::io(&mpath, e),
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| DataError::parse(&mpath, e.line(), format!("bad manifest: {e}")))?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(DataError::file(
                &mpath,
                format!("format {format:?} is not {FORMAT}"),
            ));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(VERSION as u64) {
            return Err(DataError::file(
                &mpath,
                format!(
                    "version {} is not supported (this build reads version {VERSION})",
                    value.get("version").unwrap_or(&serde_json::Value::Null)
                ),
            ));
        }
        let manifest: CacheManifest = serde_json::from_value(value)
            .map_err(|e| DataError::file(&mpath, format!("bad manifest: {e}")))?;

        let mut want: Vec<&str> = vec![KEYS_FILE, ROWS_FILE];
        if manifest.embedding_dim.is_some() {
            want.push(EMBEDDINGS_FILE);
        }
        want.sort_unstable();
        let listed: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
        if listed != want {
            return Err(DataError::file(
                &mpath,
                format!("lists files {listed:?}, expected {want:?}"),
            ));
        }
        let mut bytes: HashMap<&str, Vec<u8>> = HashMap::new();
        for (name, hash) in &manifest.files {
            let path = dir.join(name);
            let b = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            let got = distillrec_data::fsutil::sha256_of(&b);
            if &got != hash {
                return Err(DataError::file(
                    &path,
                    format!(
                        "SHA-256 {got} does not match the manifest ({hash}): the file was changed, truncated or replaced after the cache was written"
                    ),
                ));
            }
            bytes.insert(name.as_str(), b);
        }

        let kpath = dir.join(KEYS_FILE);
        let text = std::str::from_utf8(&bytes[KEYS_FILE])
            .map_err(|e| DataError::file(&kpath, format!("not UTF-8 ({e})")))?;
        let keys: Vec<String> = text.split_terminator('\n').map(str::to_owned).collect();

        let (rows, k, n) = (manifest.rows, manifest.k, manifest.num_items);
        let rpath = dir.join(ROWS_FILE);
        let st = deserialize(&rpath, &bytes[ROWS_FILE], &["items", "distances"])?;
        let items: Vec<u32> = tensor_4(&rpath, &st, "items", Dtype::U32, [rows, k])?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let distances: Vec<f32> = tensor_4(&rpath, &st, "distances", Dtype::F32, [rows, k])?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();

        let embeddings = match manifest.embedding_dim {
            None => None,
            Some(d) => {
                let epath = dir.join(EMBEDDINGS_FILE);
                let st = deserialize(&epath, &bytes[EMBEDDINGS_FILE], &["item_embeddings"])?;
                let data = tensor_4(&epath, &st, "item_embeddings", Dtype::F32, [n + 1, d])?;
                Some(
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
        };
        let cache = TeacherCache {
            manifest,
            keys,
            items,
            distances,
            embeddings,
            dir: Some(dir.to_path_buf()),
        };
        cache.validate(dir)?;
        Ok(cache)
    }

    /// Checks that this cache belongs to `ds` (fingerprint `fingerprint`):
    /// same fingerprint, same catalogue size, every key a training-row key,
    /// no key twice. Returns, per cache row, its index into `ds.train`.
    pub fn check_against(&self, fingerprint: &str, ds: &Dataset) -> Result<Vec<usize>> {
        let m = &self.manifest;
        if m.dataset.fingerprint != fingerprint {
            return Err(DataError::file(
                &self.path_of(MANIFEST_FILE),
                format!(
                    "the teacher cache was built for dataset {} {} but this is {} {}; rebuild the cache for this dataset or use the dataset it was built from",
                    m.dataset.name, m.dataset.fingerprint, ds.name, fingerprint
                ),
            ));
        }
        if m.num_items != ds.num_items() {
            return Err(DataError::file(
                &self.path_of(MANIFEST_FILE),
                format!(
                    "the teacher cache has {} items but dataset {} has {}",
                    m.num_items,
                    ds.name,
                    ds.num_items()
                ),
            ));
        }
        let index: HashMap<&str, usize> = ds
            .train
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key.as_str(), i))
            .collect();
        let kpath = self.path_of(KEYS_FILE);
        let mut out = Vec::with_capacity(self.keys.len());
        let mut unknown = 0usize;
        let mut first_unknown = None;
        for (r, key) in self.keys.iter().enumerate() {
            match index.get(key.as_str()) {
                Some(&i) => out.push(i),
                None => {
                    unknown += 1;
                    first_unknown.get_or_insert(r);
                }
            }
        }
        if let Some(r) = first_unknown {
            return Err(DataError::parse(
                &kpath,
                r + 1,
                format!(
                    "key {:?} is not a training row of dataset {} ({unknown} of {} cache keys are unknown)",
                    self.keys[r],
                    ds.name,
                    self.keys.len()
                ),
            ));
        }
        let mut seen: Vec<Option<usize>> = vec![None; ds.train.len()];
        for (r, &i) in out.iter().enumerate() {
            if let Some(first) = seen[i].replace(r) {
                return Err(DataError::parse(
                    &kpath,
                    r + 1,
                    format!("key {:?} is also on line {}", self.keys[r], first + 1),
                ));
            }
        }
        Ok(out)
    }

    /// Per `ds.train` index, the cache row holding that training row (after
    /// [`Self::check_against`]); `None` for rows without teacher output.
    pub fn row_lookup(&self, fingerprint: &str, ds: &Dataset) -> Result<Vec<Option<usize>>> {
        let idx = self.check_against(fingerprint, ds)?;
        let mut out = vec![None; ds.train.len()];
        for (r, i) in idx.into_iter().enumerate() {
            out[i] = Some(r);
        }
        Ok(out)
    }

    /// Reorders the rows into canonical order (the order of `ds.train`),
    /// after [`Self::check_against`]. Caches written in canonical order from
    /// the same rows are byte-identical however they were produced.
    pub fn sort_canonical(&mut self, fingerprint: &str, ds: &Dataset) -> Result<()> {
        let idx = self.check_against(fingerprint, ds)?;
        let mut order: Vec<usize> = (0..self.rows()).collect();
        order.sort_by_key(|&r| idx[r]);
        *self = self.select_rows(&order);
        Ok(())
    }

    /// A copy holding rows `order` (in that order), with `files` cleared and
    /// no directory.
    fn select_rows(&self, order: &[usize]) -> TeacherCache {
        let k = self.k();
        let mut out = TeacherCache {
            manifest: CacheManifest {
                rows: order.len(),
                files: BTreeMap::new(),
                ..self.manifest.clone()
            },
            keys: Vec::with_capacity(order.len()),
            items: Vec::with_capacity(order.len() * k),
            distances: Vec::with_capacity(order.len() * k),
            embeddings: self.embeddings.clone(),
            dir: None,
        };
        for &r in order {
            out.keys.push(self.keys[r].clone());
            out.items.extend_from_slice(self.row_items(r));
            out.distances.extend_from_slice(self.row_distances(r));
        }
        out
    }

    /// Merges shard caches into one whole cache for `ds`. All shards must
    /// fit `ds` (see [`Self::check_against`]) and agree on k, catalogue size,
    /// distance kind, history masking, source and embeddings (identical or
    /// all absent); shard specs, if recorded, must be exactly `0/n .. n-1/n`
    /// of one `n`; no key may be in two shards. The result is in canonical
    /// order with `shard = None`, so it is byte-identical on disk to a cache
    /// written in one go from the same rows.
    pub fn merge(
        shards: Vec<TeacherCache>,
        fingerprint: &str,
        ds: &Dataset,
    ) -> Result<TeacherCache> {
        let Some(first) = shards.first() else {
            return Err(DataError::Invalid("merge: no shard caches given".into()));
        };
        let label = |s: usize, c: &TeacherCache| match (&c.dir, c.manifest.shard) {
            (Some(d), Some(sp)) => format!("shard {sp} ({})", d.display()),
            (Some(d), None) => format!("cache {}", d.display()),
            (None, Some(sp)) => format!("shard {sp}"),
            (None, None) => format!("cache #{}", s + 1),
        };
        let bad = |msg: String| Err(DataError::Invalid(format!("merge: {msg}")));
        let mut owner: Vec<Option<(usize, usize)>> = vec![None; ds.train.len()];
        for (s, c) in shards.iter().enumerate() {
            let idx = c.check_against(fingerprint, ds)?;
            let (a, b) = (&first.manifest, &c.manifest);
            for (what, x, y) in [
                ("k", a.k.to_string(), b.k.to_string()),
                ("distance", a.distance.to_string(), b.distance.to_string()),
                (
                    "history_masked",
                    a.history_masked.to_string(),
                    b.history_masked.to_string(),
                ),
                ("source", a.source.to_string(), b.source.to_string()),
                (
                    "embedding_dim",
                    a.embedding_dim.map_or("none".into(), |d| d.to_string()),
                    b.embedding_dim.map_or("none".into(), |d| d.to_string()),
                ),
            ] {
                if x != y {
                    return bad(format!(
                        "{} has {what} = {y} but {} has {what} = {x}",
                        label(s, c),
                        label(0, first)
                    ));
                }
            }
            let same_emb = match (&first.embeddings, &c.embeddings) {
                (None, None) => true,
                (Some(x), Some(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
                }
                _ => false,
            };
            if !same_emb {
                return bad(format!(
                    "the item embeddings of {} differ from those of {}",
                    label(s, c),
                    label(0, first)
                ));
            }
            for (r, i) in idx.into_iter().enumerate() {
                if let Some((s0, _)) = owner[i].replace((s, r)) {
                    return bad(format!(
                        "key {:?} is in both {} and {}",
                        c.keys[r],
                        label(s0, &shards[s0]),
                        label(s, c)
                    ));
                }
            }
        }
        let specs: Vec<Option<ShardSpec>> = shards.iter().map(|c| c.manifest.shard).collect();
        if specs.iter().any(Option::is_some) {
            if let Some(s) = specs.iter().position(Option::is_none) {
                return bad(format!(
                    "{} is not a shard but the others are",
                    label(s, &shards[s])
                ));
            }
            let n = first.manifest.shard.map_or(0, |sp| sp.count);
            let mut seen = vec![false; n];
            for (s, sp) in specs.iter().flatten().enumerate() {
                if sp.count != n || sp.index >= n {
                    return bad(format!(
                        "{} is shard {sp} but {} is of {n} shards",
                        label(s, &shards[s]),
                        label(0, first)
                    ));
                }
                if std::mem::replace(&mut seen[sp.index], true) {
                    return bad(format!(
                        "shard {sp} is given twice ({})",
                        label(s, &shards[s])
                    ));
                }
            }
            let missing: Vec<String> = (0..n)
                .filter(|&i| !seen[i])
                .map(|i| format!("{i}/{n}"))
                .collect();
            if !missing.is_empty() {
                return bad(format!("missing shard(s) {}", missing.join(", ")));
            }
        }
        let a = &first.manifest;
        let mut out = TeacherCache::new(
            fingerprint,
            ds,
            a.k,
            a.distance,
            a.history_masked,
            a.source.clone(),
        );
        for &(s, r) in owner.iter().flatten() {
            let c = &shards[s];
            out.push_row(&c.keys[r], c.row_items(r), c.row_distances(r))?;
        }
        if let (Some(t), Some(d)) = (&first.embeddings, a.embedding_dim) {
            out.set_embeddings(t.clone(), d)?;
        }
        Ok(out)
    }

    /// A copy holding only the rows whose key is in `keys` (a selection),
    /// in this cache's order; everything else (embeddings, manifest fields
    /// other than `rows` and `files`) is kept.
    pub fn restrict(&self, keys: &HashSet<String>) -> TeacherCache {
        let order: Vec<usize> = (0..self.rows())
            .filter(|&r| keys.contains(&self.keys[r]))
            .collect();
        self.select_rows(&order)
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Why `key` cannot be a row key (a line of `keys.txt`), if it cannot.
pub(crate) fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("empty row key")
    } else if key.contains(['\n', '\r']) {
        Some("a row key must not contain a line break")
    } else if key.trim() != key {
        Some("a row key must not start or end with whitespace")
    } else {
        None
    }
}

/// Why a row is invalid, if it is: ids outside `1..=n`, an id twice,
/// non-finite distances, distances out of rank order (SPEC 6: the list is in
/// rank order, distances non-decreasing along the row, because the position
/// weight of SPEC 7 is applied by list index), or a negative distance of kind
/// `neg_log_prob` (−log p ≥ 0). Writers break distance ties by item id; the
/// check does not, so a foreign list without distances keeps its own order.
pub(crate) fn row_problem(
    items: &[u32],
    distances: &[f32],
    n: usize,
    distance_kind: DistanceKind,
) -> Option<String> {
    for (j, &id) in items.iter().enumerate() {
        if id == 0 || id as usize > n {
            return Some(format!("item id {id} in column {j} is outside 1..={n}"));
        }
        if let Some(p) = items[..j].iter().position(|&x| x == id) {
            return Some(format!("item id {id} is in columns {p} and {j}"));
        }
    }
    if let Some(j) = distances.iter().position(|d| !d.is_finite()) {
        return Some(format!(
            "distance {} in column {j} is not finite",
            distances[j]
        ));
    }
    if let Some(j) = (1..distances.len()).find(|&j| distances[j] < distances[j - 1]) {
        return Some(format!(
            "the top-K is not in rank order: distance {} in column {j} is smaller than {} in column {} (distances must be non-decreasing along a row)",
            distances[j],
            distances[j - 1],
            j - 1
        ));
    }
    if distance_kind == DistanceKind::NegLogProb {
        if let Some(j) = distances.iter().position(|&d| d < 0.0) {
            return Some(format!(
                "distance {} in column {j} is negative, but distances of kind {distance_kind} are −log p ≥ 0",
                distances[j]
            ));
        }
    }
    None
}

distillrec_data::named_enum! {
    /// What a cache's distances `d` mean (smaller = more confident); the
    /// names are the manifest's `distance` values.
    pub enum DistanceKind {
        /// A teacher's softmax confidence, `d = −log p` (never negative).
        NegLogProb = "neg_log_prob",
        /// The normalised L2 distance of embeddings (BIGRec-style grounding).
        L2 = "l2",
        /// Distances given by a foreign teacher, meaning unstated.
        Given = "given",
        /// No distances: every `d` is 0.
        None = "none",
    }
}

/// Puts a row in rank order: by distance, ties by item id (the order every
/// writer of this crate's caches uses).
pub fn sort_row(items: &mut [u32], distances: &mut [f32]) {
    let mut pairs: Vec<(f32, u32)> = distances
        .iter()
        .copied()
        .zip(items.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (j, (d, it)) in pairs.into_iter().enumerate() {
        distances[j] = d;
        items[j] = it;
    }
}

/// Why an embedding table `[n + 1, dim]` is invalid, if it is.
fn embeddings_problem(table: &[f32], dim: usize, n: usize) -> Option<String> {
    if dim == 0 {
        return Some("the embedding dimension must be at least 1".into());
    }
    if table.len() != (n + 1) * dim {
        return Some(format!(
            "{} values, expected (N + 1) × D = {} × {dim} = {}",
            table.len(),
            n + 1,
            (n + 1) * dim
        ));
    }
    if table[..dim].iter().any(|&x| x != 0.0) {
        return Some("row 0 (padding) must be all zeros".into());
    }
    if let Some(i) = table.iter().position(|x| !x.is_finite()) {
        return Some(format!(
            "row {} (item {}) holds a non-finite value ({})",
            i / dim,
            i / dim,
            table[i]
        ));
    }
    None
}
