//! Tests of the cache format, merging, dataset checks and file import.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use distillrec_data::prepare::{prepare, PrepareOptions, RawInteraction, RawLog};
use distillrec_data::Dataset;

use crate::npy::tests::{f32_npy, f64_npy, i64_npy};
use crate::*;

const FP: &str = "sha256:feed";

/// Raw item ids "0".."7" (internal 1..=8, like DLLM2Rec's `r + 1`).
/// User a: 0 1 2 3 4 5 → train a:1..a:3; user b: 7 6 5 4 3 → train b:1, b:2.
fn ds() -> Dataset {
    let mut log = RawLog::default();
    for (user, items) in [("a", &[0, 1, 2, 3, 4, 5][..]), ("b", &[7, 6, 5, 4, 3][..])] {
        let u = log.users.intern(user);
        for (t, i) in items.iter().enumerate() {
            let item = log.items.intern(&i.to_string());
            log.interactions.push(RawInteraction {
                user: u,
                item,
                timestamp: t as i64,
                rating: None,
            });
        }
    }
    let ds = prepare("tiny", &log, &PrepareOptions::default(), 42).unwrap();
    assert_eq!(ds.num_items(), 8);
    assert_eq!(ds.train.len(), 5);
    assert_eq!(ds.items[0].raw_id, "0");
    ds
}

fn row_of(i: usize) -> ([u32; 3], [f32; 3]) {
    let id = |j: usize| ((i + j) % 8) as u32 + 1;
    ([id(0), id(1), id(2)], [i as f32 * 0.2, 1.0, 2.25])
}

fn embeddings(n: usize, d: usize) -> Vec<f32> {
    let mut t = vec![0.0; (n + 1) * d];
    for r in 1..=n {
        for j in 0..d {
            t[r * d + j] = r as f32 * 0.1 - j as f32;
        }
    }
    t
}

/// A cache over the given training-row indices, in that order.
fn cache_of(ds: &Dataset, rows: impl IntoIterator<Item = usize>, emb: bool) -> TeacherCache {
    let mut c = TeacherCache::new(
        FP,
        ds,
        3,
        DistanceKind::NegLogProb,
        true,
        "student:/x/best.safetensors".into(),
    );
    for i in rows {
        let (it, d) = row_of(i);
        c.push_row(&ds.train[i].key, &it, &d).unwrap();
    }
    if emb {
        c.set_embeddings(embeddings(ds.num_items(), 4), 4).unwrap();
    }
    c
}

/// The files of a cache directory with their bytes (the writer's lock file aside).
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != distillrec_data::lock::LOCK_FILE)
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().to_string()
}

// ---------------------------------------------------------------- cache I/O

#[test]
fn save_load_round_trip() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let mut c = cache_of(&ds, [4, 0, 2], true);
    c.manifest.shard = Some("1/3".parse().unwrap());
    c.save(&dir).unwrap();
    let l = TeacherCache::load(&dir).unwrap();
    assert_eq!(l, c);
    assert_eq!(
        l.keys,
        vec![
            ds.train[4].key.clone(),
            ds.train[0].key.clone(),
            ds.train[2].key.clone()
        ]
    );
    assert_eq!(l.row_items(0), &row_of(4).0);
    assert_eq!(l.row_distances(0), &row_of(4).1);
    assert_eq!((l.k(), l.rows(), l.embedding_dim()), (3, 3, Some(4)));
    assert_eq!(l.manifest.shard, Some(ShardSpec { index: 1, count: 3 }));
    assert_eq!(l.dir.as_deref(), Some(dir.as_path()));
    let names: Vec<String> = files_of(&dir).into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        [EMBEDDINGS_FILE, KEYS_FILE, MANIFEST_FILE, ROWS_FILE],
        "unexpected files (temporary files left?)"
    );
    assert_eq!(l.manifest.files.len(), 3);
    // The manifest is plain JSON with the documented fields.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(m["format"], "distillrec-teacher-cache");
    assert_eq!(m["version"], 1);
    assert_eq!(m["dataset"]["fingerprint"], FP);
    assert_eq!(m["dataset"]["name"], "tiny");
    assert_eq!(
        (m["num_items"].as_u64(), m["k"].as_u64(), m["rows"].as_u64()),
        (Some(8), Some(3), Some(3))
    );
    assert_eq!(m["shard"], serde_json::json!({"index": 1, "count": 3}));
    assert!(m["files"]["rows.safetensors"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(
        std::fs::read_to_string(dir.join(KEYS_FILE)).unwrap(),
        format!(
            "{}\n{}\n{}\n",
            ds.train[4].key, ds.train[0].key, ds.train[2].key
        )
    );

    // Saving a cache without embeddings over it replaces it coherently.
    let c2 = cache_of(&ds, [1], false);
    c2.save(&dir).unwrap();
    assert!(
        !dir.join(EMBEDDINGS_FILE).exists(),
        "stale embeddings file left"
    );
    let l2 = TeacherCache::load(&dir).unwrap();
    assert_eq!(l2, c2);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert!(m["embedding_dim"].is_null() && m["shard"].is_null());

    // An empty cache is valid too.
    let empty = cache_of(&ds, [], false);
    empty.save(&dir).unwrap();
    assert_eq!(TeacherCache::load(&dir).unwrap().rows(), 0);
}

#[test]
fn load_refuses_tampered_truncated_and_foreign_files() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = cache_of(&ds, 0..5, true);
    let fresh = || {
        c.save(dir).unwrap();
    };

    fresh();
    let rows = dir.join(ROWS_FILE);
    let mut b = std::fs::read(&rows).unwrap();
    b.truncate(b.len() - 4);
    std::fs::write(&rows, &b).unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("rows.safetensors") && e.contains("does not match the manifest"),
        "{e}"
    );

    fresh();
    let mut b = std::fs::read(&rows).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    std::fs::write(&rows, &b).unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("rows.safetensors") && e.contains("SHA-256"),
        "{e}"
    );

    fresh();
    let keys = dir.join(KEYS_FILE);
    std::fs::write(&keys, "x\n").unwrap();
    assert!(err(TeacherCache::load(dir)).contains("keys.txt"));

    fresh();
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("manifest.json") && e.contains("version 2 is not supported"),
        "{e}"
    );
    std::fs::write(
        &mpath,
        text.replace("distillrec-teacher-cache", "distillrec-dataset"),
    )
    .unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("manifest.json") && e.contains("is not distillrec-teacher-cache"),
        "{e}"
    );

    // Manifest consistent with hashes but lying about the shape.
    fresh();
    std::fs::write(&mpath, text.replace("\"k\": 3", "\"k\": 2")).unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(e.contains("rows.safetensors") && e.contains("shape"), "{e}");

    // Duplicate keys on disk (hash updated so only the content check can catch it).
    fresh();
    let dup = format!("{k}\n{k}\n{k}\n{k}\n{k}\n", k = ds.train[0].key);
    std::fs::write(&keys, &dup).unwrap();
    let mut m: CacheManifest = serde_json::from_str(&text).unwrap();
    m.files.insert(
        KEYS_FILE.into(),
        distillrec_data::fsutil::sha256_of(dup.as_bytes()),
    );
    std::fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("keys.txt:2:") && e.contains("also on line 1"),
        "{e}"
    );

    // An id out of range on disk, hash updated.
    fresh();
    let mut bad = c.clone();
    bad.items[4] = 99;
    write_rows_behind_manifest(dir, &bad);
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("rows.safetensors")
            && e.contains("row 1")
            && e.contains("99 in column 1 is outside 1..=8"),
        "{e}"
    );

    // A row out of rank order on disk (distances decrease), hash updated.
    fresh();
    let mut bad = c.clone();
    bad.distances.swap(3, 4);
    write_rows_behind_manifest(dir, &bad);
    let e = err(TeacherCache::load(dir));
    assert!(
        e.contains("rows.safetensors") && e.contains("row 1") && e.contains("not in rank order"),
        "{e}"
    );

    // Negative −log p on disk, hash updated.
    fresh();
    let mut bad = c.clone();
    bad.distances[0] = -0.5;
    write_rows_behind_manifest(dir, &bad);
    let e = err(TeacherCache::load(dir));
    assert!(e.contains("row 0") && e.contains("is negative"), "{e}");

    std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    assert!(err(TeacherCache::load(dir)).contains("file not found"));
}

/// Overwrites `rows.safetensors` in `dir` with `bad`'s rows and puts the new
/// file's hash in the manifest, as a hostile writer would.
fn write_rows_behind_manifest(dir: &Path, bad: &TeacherCache) {
    let (rows, mpath) = (dir.join(ROWS_FILE), dir.join(MANIFEST_FILE));
    let text = std::fs::read_to_string(&mpath).unwrap();
    let (r, k) = (bad.rows(), bad.k());
    let st = {
        let items: Vec<u8> = bad.items.iter().flat_map(|x| x.to_le_bytes()).collect();
        let d: Vec<u8> = bad.distances.iter().flat_map(|x| x.to_le_bytes()).collect();
        let v = vec![
            (
                "items",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![r, k], &items)
                    .unwrap(),
            ),
            (
                "distances",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![r, k], &d)
                    .unwrap(),
            ),
        ];
        safetensors::tensor::serialize(v, None).unwrap()
    };
    std::fs::write(&rows, &st).unwrap();
    let mut m: CacheManifest = serde_json::from_str(&text).unwrap();
    m.files
        .insert(ROWS_FILE.into(), distillrec_data::fsutil::sha256_of(&st));
    std::fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
}

#[test]
fn push_row_and_set_embeddings_validate() {
    let ds = ds();
    let mut c = TeacherCache::new(FP, &ds, 3, DistanceKind::L2, false, "s".into());
    let k = &ds.train[0].key;
    assert!(err(c.push_row(k, &[1, 2], &[0.0, 0.0])).contains("expected k = 3"));
    assert!(err(c.push_row(k, &[1, 2, 9], &[0.0; 3]))
        .contains("item id 9 in column 2 is outside 1..=8"));
    assert!(err(c.push_row(k, &[0, 2, 3], &[0.0; 3])).contains("outside 1..=8"));
    assert!(err(c.push_row(k, &[1, 2, 1], &[0.0; 3])).contains("columns 0 and 2"));
    assert!(err(c.push_row(k, &[1, 2, 3], &[0.0, f32::NAN, 0.0])).contains("not finite"));
    assert!(err(c.push_row(k, &[1, 2, 3], &[0.5, 0.25, 1.0]))
        .contains("distance 0.25 in column 1 is smaller than 0.5 in column 0"));
    // equal distances keep the writer's order (a list without distances)
    let mut nl = TeacherCache::new(FP, &ds, 3, DistanceKind::NegLogProb, false, "s".into());
    assert!(err(nl.push_row(k, &[1, 2, 3], &[-0.1, 0.0, 0.0])).contains("is negative"));
    nl.push_row(k, &[3, 1, 2], &[0.0; 3]).unwrap();
    assert!(err(c.push_row("", &[1, 2, 3], &[0.0; 3])).contains("empty row key"));
    assert!(err(c.push_row("a\nb", &[1, 2, 3], &[0.0; 3])).contains("line break"));
    assert_eq!(c.rows(), 0);
    c.push_row(k, &[1, 2, 3], &[0.0; 3]).unwrap();
    assert_eq!((c.rows(), c.manifest.rows), (1, 1));

    let mut t = embeddings(8, 2);
    assert!(err(c.set_embeddings(t.clone(), 3)).contains("expected (N + 1) × D"));
    t[1] = 0.5;
    assert!(err(c.set_embeddings(t.clone(), 2)).contains("row 0 (padding) must be all zeros"));
    t[1] = 0.0;
    t[7] = f32::INFINITY;
    assert!(err(c.set_embeddings(t.clone(), 2)).contains("row 3"));
    assert!(c.embeddings.is_none() && c.embedding_dim().is_none());
}

// ------------------------------------------------------- dataset checks

#[test]
fn check_against_refuses_other_dataset_and_unknown_keys() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let c = cache_of(&ds, [3, 1], false);
    c.save(&dir).unwrap();
    let l = TeacherCache::load(&dir).unwrap();
    assert_eq!(l.check_against(FP, &ds).unwrap(), vec![3, 1]);
    let lookup = l.row_lookup(FP, &ds).unwrap();
    assert_eq!(lookup, vec![None, Some(1), None, Some(0), None]);

    let e = err(l.check_against("sha256:0ther", &ds));
    assert!(
        e.contains("manifest.json")
            && e.contains("built for dataset tiny sha256:feed but this is tiny sha256:0ther"),
        "{e}"
    );
    let mut other = ds.clone();
    other.items.pop();
    assert!(err(l.check_against(FP, &other)).contains("has 8 items but dataset tiny has 7"));

    // Keys of rows that are not training rows (valid/test keys, or made up).
    let mut bad = cache_of(&ds, [0, 2], false);
    let valid_key = ds.valid[0].key.clone();
    bad.push_row(&valid_key, &[1, 2, 3], &[0.0; 3]).unwrap();
    bad.push_row("zz:1", &[1, 2, 3], &[0.0; 3]).unwrap();
    bad.save(&dir).unwrap();
    let l = TeacherCache::load(&dir).unwrap();
    let e = err(l.check_against(FP, &ds));
    assert!(e.contains("keys.txt:3:"), "{e}");
    assert!(
        e.contains(&format!(
            "key {valid_key:?} is not a training row of dataset tiny"
        )),
        "{e}"
    );
    assert!(e.contains("2 of 4 cache keys are unknown"), "{e}");

    // Duplicates in memory are refused by save and by check_against.
    let mut dup = cache_of(&ds, [0, 1], false);
    let k0 = ds.train[0].key.clone();
    dup.push_row(&k0, &[4, 5, 6], &[0.0; 3]).unwrap();
    assert!(err(dup.check_against(FP, &ds)).contains("also on line 1"));
    assert!(err(dup.save(&dir)).contains("keys.txt:3"));
}

#[test]
fn restrict_and_sort_canonical() {
    let ds = ds();
    let c = cache_of(&ds, [4, 0, 2, 1], true);
    let keep: HashSet<String> = [&ds.train[2].key, &ds.train[4].key, &"zz:1".to_string()]
        .into_iter()
        .cloned()
        .collect();
    let r = c.restrict(&keep);
    assert_eq!(
        r.keys,
        vec![ds.train[4].key.clone(), ds.train[2].key.clone()]
    );
    assert_eq!(r.row_items(1), &row_of(2).0);
    assert_eq!(r.row_distances(0), &row_of(4).1);
    assert_eq!(r.manifest.rows, 2);
    assert_eq!(r.embeddings, c.embeddings);

    let mut s = c.clone();
    s.sort_canonical(FP, &ds).unwrap();
    assert_eq!(s.check_against(FP, &ds).unwrap(), vec![0, 1, 2, 4]);
    assert_eq!(s.row_items(3), &row_of(4).0);
    assert_eq!(s, cache_of(&ds, [0, 1, 2, 4], true));
}

// ------------------------------------------------------------- shards

#[test]
fn shards_merged_equal_one_go_byte_for_byte() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let n = ds.train.len();
    let mut dirs = Vec::new();
    for index in 0..2 {
        let spec = ShardSpec { index, count: 2 };
        // Rows pushed in reverse order inside a shard: the merge must canonicalise.
        let mut c = cache_of(&ds, spec.range(n).rev(), true);
        c.manifest.shard = Some(spec);
        let d = tmp.path().join(format!("shard{index}"));
        c.save(&d).unwrap();
        dirs.push(d);
    }
    let load = |order: &[usize]| -> Vec<TeacherCache> {
        order
            .iter()
            .map(|&i| TeacherCache::load(&dirs[i]).unwrap())
            .collect()
    };
    let merged = TeacherCache::merge(load(&[1, 0]), FP, &ds).unwrap();
    assert_eq!(merged.manifest.shard, None);
    assert_eq!(
        merged.manifest.source.to_string(),
        "student:/x/best.safetensors"
    );
    let mdir = tmp.path().join("merged");
    merged.save(&mdir).unwrap();
    let one = tmp.path().join("one");
    cache_of(&ds, 0..n, true).save(&one).unwrap();
    let (a, b) = (files_of(&mdir), files_of(&one));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "merged cache differs from the one-go cache");

    // Missing shard, a shard twice, mixed sources, a key in two caches.
    let e = err(TeacherCache::merge(load(&[0]), FP, &ds));
    assert!(e.contains("missing shard(s) 1/2"), "{e}");
    let e = err(TeacherCache::merge(load(&[0, 0]), FP, &ds));
    assert!(e.contains("is in both"), "{e}");
    let mut shards = load(&[0, 1]);
    shards[1].manifest.shard = Some(ShardSpec { index: 0, count: 2 });
    assert!(err(TeacherCache::merge(shards, FP, &ds)).contains("given twice"));
    let mut shards = load(&[0, 1]);
    shards[1].manifest.source = "other".into();
    let e = err(TeacherCache::merge(shards, FP, &ds));
    assert!(e.contains("source = other"), "{e}");
    let mut shards = load(&[0, 1]);
    shards[1].embeddings.as_mut().unwrap()[10] += 1.0;
    assert!(err(TeacherCache::merge(shards, FP, &ds)).contains("item embeddings"));
    let e = err(TeacherCache::merge(load(&[0, 1]), "sha256:0ther", &ds));
    assert!(e.contains("built for dataset"), "{e}");
    // Unsharded partial caches merge too (e.g. two selection rounds).
    let parts = vec![cache_of(&ds, [3], false), cache_of(&ds, [0, 4], false)];
    let m = TeacherCache::merge(parts, FP, &ds).unwrap();
    assert_eq!(m.check_against(FP, &ds).unwrap(), vec![0, 3, 4]);
}

// ---------------------------------------------------------- from_files

fn spec(topk: PathBuf, keys: RowKeys, ids: IdSpace) -> FromFiles {
    FromFiles {
        topk,
        distances: None,
        embeddings: None,
        keys,
        ids,
        k: None,
        distance_kind: DistanceKind::Given,
        sort: false,
    }
}

#[test]
fn from_csv_keyed_out_of_order_with_distances() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let t = &ds.train;
    let topk = write(
        tmp.path(),
        "top.csv",
        format!(
            "key,c1,c2,c3,c4\n{},3,4.0,5,8\n{},1,2,3,4\n{},8,7,6,5\n",
            t[3].key, t[0].key, t[1].key
        ),
    );
    // Distances keyed too, in another order.
    let dist = write(
        tmp.path(),
        "d.csv",
        format!(
            "{},0.1,0.2,0.3,0.4\n{},1.5,2.5,3.5,9\n{},7,8,9,10\n",
            t[0].key, t[3].key, t[1].key
        ),
    );
    let mut s = spec(topk, RowKeys::InFile, IdSpace::Internal);
    s.distances = Some(dist);
    s.k = Some(3);
    let c = from_files(&s, FP, &ds).unwrap();
    assert_eq!(
        c.keys,
        vec![t[0].key.clone(), t[1].key.clone(), t[3].key.clone()]
    );
    assert_eq!(c.items, vec![1, 2, 3, 8, 7, 6, 3, 4, 5]);
    assert_eq!(
        c.distances,
        vec![0.1, 0.2, 0.3, 7.0, 8.0, 9.0, 1.5, 2.5, 3.5]
    );
    assert_eq!(
        (
            c.k(),
            c.manifest.distance.name(),
            &*c.manifest.source.to_string()
        ),
        (3, "given", "files")
    );
    assert_eq!(c.check_against(FP, &ds).unwrap(), vec![0, 1, 3]);

    // A distance file missing a key is refused, naming the key's line.
    let d2 = write(
        tmp.path(),
        "d2.csv",
        format!("{},1,1,1\n{},1,1,1\nzz,1,1,1\n", t[0].key, t[3].key),
    );
    s.distances = Some(d2);
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("top.csv:4:") && e.contains("has no row in the distance file"),
        "{e}"
    );
    s.distances = None;
    let c = from_files(&s, FP, &ds).unwrap();
    assert_eq!(c.manifest.distance, DistanceKind::None);
    assert!(c.distances.iter().all(|&d| d == 0.0));
}

#[test]
fn from_npy_in_train_order_with_embeddings() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let n = ds.train.len();
    let ids: Vec<i64> = (0..n).flat_map(|i| row_of(i).0.map(i64::from)).collect();
    let ds_: Vec<f32> = (0..n).flat_map(|i| row_of(i).1).collect();
    let topk = write(tmp.path(), "top.npy", i64_npy(&[n, 3], &ids));
    let dist = write(tmp.path(), "d.npy", f32_npy(&[n, 3], &ds_));
    // [N, D] f64: ids 1..=N, zeros prepended.
    let full = embeddings(8, 4);
    let nd: Vec<f64> = full[4..].iter().map(|&x| x as f64).collect();
    let emb = write(tmp.path(), "e.npy", f64_npy(&[8, 4], &nd));
    let mut s = spec(topk.clone(), RowKeys::TrainOrder, IdSpace::Internal);
    s.distances = Some(dist);
    s.embeddings = Some(emb);
    s.distance_kind = DistanceKind::NegLogProb;
    let c = from_files(&s, FP, &ds).unwrap();
    let mut expect = cache_of(&ds, 0..n, true);
    expect.manifest.source = "files".into();
    expect.manifest.history_masked = false;
    assert_eq!(c, expect);

    // [N + 1, D] f32 with row 0 zeros gives the same table; as safetensors too.
    let e1 = write(tmp.path(), "e1.npy", f32_npy(&[9, 4], &full));
    s.embeddings = Some(e1);
    assert_eq!(
        from_files(&s, FP, &ds).unwrap().embeddings,
        expect.embeddings
    );
    let b: Vec<u8> = full.iter().flat_map(|x| x.to_le_bytes()).collect();
    let st = safetensors::tensor::serialize(
        [(
            "whatever",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![9, 4], &b).unwrap(),
        )],
        None,
    )
    .unwrap();
    s.embeddings = Some(write(tmp.path(), "e.safetensors", st));
    assert_eq!(
        from_files(&s, FP, &ds).unwrap().embeddings,
        expect.embeddings
    );

    // Keys from a keys file, rows in reverse order.
    let rev_ids: Vec<i64> = (0..n)
        .rev()
        .flat_map(|i| row_of(i).0.map(i64::from))
        .collect();
    let keys_txt: String = (0..n)
        .rev()
        .map(|i| format!("{}\n", ds.train[i].key))
        .collect();
    let mut s2 = spec(
        write(tmp.path(), "rev.npy", i64_npy(&[n, 3], &rev_ids)),
        RowKeys::KeysFile(write(tmp.path(), "keys.txt", keys_txt)),
        IdSpace::Internal,
    );
    s2.k = Some(2);
    let c2 = from_files(&s2, FP, &ds).unwrap();
    assert_eq!(c2.k(), 2);
    assert_eq!(
        c2.keys,
        ds.train.iter().map(|r| r.key.clone()).collect::<Vec<_>>()
    );
    assert_eq!(c2.row_items(4), &row_of(4).0[..2]);

    // Bad embeddings: NaN (row named), nonzero padding row, wrong row count.
    let mut nan = full.clone();
    nan[4 * 5 + 2] = f32::NAN;
    s.embeddings = Some(write(tmp.path(), "nan.npy", f32_npy(&[9, 4], &nan)));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("nan.npy") && e.contains("row 5, column 2") && e.contains("not a finite"),
        "{e}"
    );
    let mut pad = full.clone();
    pad[1] = 1.0;
    s.embeddings = Some(write(tmp.path(), "pad.npy", f32_npy(&[9, 4], &pad)));
    let e = err(from_files(&s, FP, &ds));
    assert!(e.contains("pad.npy") && e.contains("padding row"), "{e}");
    s.embeddings = Some(write(
        tmp.path(),
        "short.npy",
        f32_npy(&[7, 4], &full[..28]),
    ));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("short.npy") && e.contains("7 rows; expected N + 1 = 9"),
        "{e}"
    );

    // Wrong row count for train order.
    let short = write(tmp.path(), "short_top.npy", i64_npy(&[4, 3], &ids[..12]));
    let e = err(from_files(
        &spec(short, RowKeys::TrainOrder, IdSpace::Internal),
        FP,
        &ds,
    ));
    assert!(
        e.contains("short_top.npy") && e.contains("4 rows but dataset tiny has 5 training rows"),
        "{e}"
    );
    // Out-of-range id in an array names the row.
    let mut big = ids.clone();
    big[7] = 9;
    let bad = write(tmp.path(), "big.npy", i64_npy(&[n, 3], &big));
    let e = err(from_files(
        &spec(bad, RowKeys::TrainOrder, IdSpace::Internal),
        FP,
        &ds,
    ));
    assert!(
        e.contains("big.npy") && e.contains("row 2: column 1: item id 9 is outside 1..=8"),
        "{e}"
    );
    // An .npy top-K cannot carry keys.
    let e = err(from_files(
        &spec(topk, RowKeys::InFile, IdSpace::Internal),
        FP,
        &ds,
    ));
    assert!(e.contains("no key column"), "{e}");
}

#[test]
fn from_raw_ids_savetxt_layout() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let n = ds.train.len();
    // np.savetxt writes '%.18e'; raw id r is internal r + 1.
    let txt: String = (0..n)
        .map(|i| {
            let r = row_of(i).0.map(|id| format!("{:.18e}", (id - 1) as f64));
            format!("{}\n", r.join(" "))
        })
        .collect();
    let topk = write(tmp.path(), "myrank_train.txt", txt);
    let dist_txt: String = (0..n)
        .map(|i| format!("{}\n", row_of(i).1.map(|d| d.to_string()).join(" ")))
        .collect();
    // Raw embeddings: row r = raw id r, one extra row that is ignored (and NaN).
    let full = embeddings(8, 4);
    let mut raw_rows: Vec<f32> = full[4..].to_vec();
    raw_rows.extend([f32::NAN; 4]);
    let mut s = spec(topk, RowKeys::TrainOrder, IdSpace::Raw);
    s.distances = Some(write(tmp.path(), "conf.txt", dist_txt));
    s.embeddings = Some(write(tmp.path(), "emb.npy", f32_npy(&[9, 4], &raw_rows)));
    let c = from_files(&s, FP, &ds).unwrap();
    let mut expect = cache_of(&ds, 0..n, true);
    expect.manifest.source = "files".into();
    expect.manifest.history_masked = false;
    expect.manifest.distance = DistanceKind::Given;
    assert_eq!(c, expect);

    // Unknown raw id names file and line.
    let bad = write(tmp.path(), "bad.txt", "0 1 2\n3 4 8\n0 1 2\n0 1 2\n0 1 2\n");
    let e = err(from_files(
        &spec(bad, RowKeys::TrainOrder, IdSpace::Raw),
        FP,
        &ds,
    ));
    assert!(
        e.contains("bad.txt:2:") && e.contains("raw item id '8' is not in the dataset's catalogue"),
        "{e}"
    );
    // Raw embeddings missing an item.
    s.embeddings = Some(write(
        tmp.path(),
        "emb7.npy",
        f32_npy(&[7, 4], &full[4..32]),
    ));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("emb7.npy") && e.contains("item 8 (raw id \"7\") has no row"),
        "{e}"
    );
}

#[test]
fn from_files_bad_inputs_name_file_and_line() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let t = &ds.train;
    let keyed = |name: &str, rows: &[(&str, &str)]| {
        let text: String = rows.iter().map(|(k, v)| format!("{k},{v}\n")).collect();
        spec(
            write(tmp.path(), name, text),
            RowKeys::InFile,
            IdSpace::Internal,
        )
    };
    let cases: Vec<(FromFiles, &str)> = vec![
        (keyed("range.csv", &[(&t[0].key, "1,2,3"), (&t[1].key, "1,9,3")]), "range.csv:2: column 1: item id 9 is outside 1..=8"),
        (keyed("zero.csv", &[(&t[0].key, "0,2,3")]), "zero.csv:1: column 0: item id 0 is outside"),
        (keyed("frac.csv", &[(&t[0].key, "1,2,3"), (&t[1].key, "1,12.5,3")]), "frac.csv:2: column 1: '12.5' is not an integral item id"),
        (keyed("dupid.csv", &[(&t[0].key, "1,2,1")]), "dupid.csv:1: item 1 is in columns 0 and 2"),
        (keyed("width.csv", &[(&t[0].key, "1,2,3"), (&t[1].key, "1,2")]), "width.csv:2: 2 value columns but the first data row has 3"),
        (keyed("unknown.csv", &[(&t[0].key, "1,2,3"), ("nope:1", "1,2,3"), ("nope:2", "1,2,3")]), "unknown.csv:2: key \"nope:1\" is not a training row of dataset tiny (2 of 3 keys are unknown)"),
        (keyed("dupkey.csv", &[(&t[0].key, "1,2,3"), (&t[0].key, "4,5,6")]), "dupkey.csv:2: key"),
    ];
    for (s, want) in cases {
        let e = err(from_files(&s, FP, &ds));
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    // Distances with NaN, and with too few columns.
    let mut s = keyed("ok.csv", &[(&t[0].key, "1,2,3")]);
    s.distances = Some(write(
        tmp.path(),
        "nan.csv",
        format!("{},0.5,NaN,1\n", t[0].key),
    ));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("nan.csv:1: column 1") && e.contains("not a finite"),
        "{e}"
    );
    s.distances = Some(write(
        tmp.path(),
        "narrow.csv",
        format!("{},0.5,1\n", t[0].key),
    ));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("narrow.csv:1:") && e.contains("fewer than k = 3"),
        "{e}"
    );
    // Distances out of rank order: refused naming the top-K file's line,
    // unless sorting is asked for (by distance, ties by item id).
    let mut s = keyed("rank.csv", &[(&t[0].key, "1,2,3"), (&t[1].key, "4,5,6")]);
    s.distances = Some(write(
        tmp.path(),
        "rank_d.csv",
        format!("{},0.5,1,2\n{},3,1,1\n", t[0].key, t[1].key),
    ));
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("rank.csv:2:") && e.contains("not in rank order") && e.contains("--sort"),
        "{e}"
    );
    s.sort = true;
    let c = from_files(&s, FP, &ds).unwrap();
    assert_eq!(
        (c.row_items(0), c.row_distances(0)),
        (&[1, 2, 3][..], &[0.5, 1.0, 2.0][..])
    );
    assert_eq!(
        (c.row_items(1), c.row_distances(1)),
        (&[5, 6, 4][..], &[1.0, 1.0, 3.0][..])
    );
    // Keys file with the wrong number of keys.
    let s = spec(
        write(tmp.path(), "t.txt", "1 2 3\n4 5 6\n"),
        RowKeys::KeysFile(write(tmp.path(), "k.txt", format!("{}\n", t[0].key))),
        IdSpace::Internal,
    );
    let e = err(from_files(&s, FP, &ds));
    assert!(
        e.contains("k.txt") && e.contains("1 keys but") && e.contains("has 2 rows"),
        "{e}"
    );
    // Unsupported extension.
    let s = spec(
        write(tmp.path(), "t.json", "[]"),
        RowKeys::TrainOrder,
        IdSpace::Internal,
    );
    assert!(err(from_files(&s, FP, &ds)).contains("unsupported extension"));
}

// ------------------------------------------------------- selection files

#[test]
fn selection_rows_refuse_foreign_short_and_unknown_selections() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sel.csv");
    let t = &ds.train;
    let keys = vec![(t[3].key.clone(), 0.5), (t[1].key.clone(), 0.25)];
    let meta = |fp: &str, n: usize| SelectionMeta {
        policy: Some("loss".into()),
        selected: Some(n),
        dataset: Some(DatasetRef {
            fingerprint: fp.into(),
            name: "tiny".into(),
            dir: None,
        }),
        ..SelectionMeta::default()
    };
    write_selection(&p, &keys, &meta(FP, 2)).unwrap();
    assert_eq!(read_selection_rows(&p, FP, &ds).unwrap(), vec![1, 3]);

    // made for another dataset
    write_selection(&p, &keys, &meta("sha256:other", 2)).unwrap();
    let e = err(read_selection_rows(&p, FP, &ds));
    assert!(
        e.contains("sel.csv.json") && e.contains("sha256:other") && e.contains(FP),
        "{e}"
    );
    // cut short against its sidecar
    write_selection(&p, &keys[..1], &meta(FP, 2)).unwrap();
    let e = err(read_selection_rows(&p, FP, &ds));
    assert!(
        e.contains("1 selected rows") && e.contains("records 2"),
        "{e}"
    );
    // a key that is not a training row: file and line
    let bad = vec![(t[0].key.clone(), 1.0), ("nope:1".to_string(), 1.0)];
    write_selection(&p, &bad, &meta(FP, 2)).unwrap();
    let e = err(read_selection_rows(&p, FP, &ds));
    assert!(
        e.contains("sel.csv:3:") && e.contains("\"nope:1\" is not a training row"),
        "{e}"
    );
    // no sidecar: the keys alone decide
    std::fs::remove_file(selection_meta_path(&p)).unwrap();
    let e = err(read_selection_rows(&p, FP, &ds));
    assert!(e.contains("sel.csv:3:"), "{e}");
    write_selection(&p, &keys, &meta(FP, 2)).unwrap();
    std::fs::remove_file(selection_meta_path(&p)).unwrap();
    assert_eq!(read_selection_rows(&p, FP, &ds).unwrap(), vec![1, 3]);
}

#[test]
fn distance_kinds_and_id_spaces_keep_their_on_disk_names() {
    for (kind, name) in [
        (DistanceKind::NegLogProb, "neg_log_prob"),
        (DistanceKind::L2, "l2"),
        (DistanceKind::Given, "given"),
        (DistanceKind::None, "none"),
    ] {
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<DistanceKind>(&json).unwrap(), kind);
        assert_eq!(name.parse::<DistanceKind>().unwrap(), kind);
    }
    for (ids, name) in [(IdSpace::Internal, "internal"), (IdSpace::Raw, "raw")] {
        assert_eq!(ids.name(), name);
        assert_eq!(name.parse::<IdSpace>().unwrap(), ids);
    }
    // a manifest written before the enum (a plain string) still loads, and
    // an unknown kind is refused naming the valid ones
    let ds = ds();
    let c = cache_of(&ds, 0..3, false);
    let d = tempfile::tempdir().unwrap();
    c.save(d.path()).unwrap();
    let manifest = std::fs::read_to_string(d.path().join(MANIFEST_FILE)).unwrap();
    assert!(
        manifest.contains("\"distance\": \"neg_log_prob\""),
        "{manifest}"
    );
    assert_eq!(
        TeacherCache::load(d.path()).unwrap().manifest.distance,
        DistanceKind::NegLogProb
    );
    std::fs::write(
        d.path().join(MANIFEST_FILE),
        manifest.replace("\"neg_log_prob\"", "\"cosine\""),
    )
    .unwrap();
    let e = TeacherCache::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("cosine") && e.contains("neg_log_prob"), "{e}");
}

#[test]
fn the_selection_sidecar_keeps_its_field_names_and_every_reader_accepts_it() {
    let ds = ds();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sel.csv");
    let keys = vec![
        (ds.train[2].key.clone(), 0.5),
        (ds.train[0].key.clone(), f64::NAN),
    ];
    let meta = SelectionMeta {
        policy: Some("loss".into()),
        budget: serde_json::json!({"count": 2}),
        threshold: Some(0.5),
        seed: 7,
        pool: 4,
        train_rows: ds.train.len(),
        objective: "last".into(),
        max_len: 10,
        selected: Some(2),
        fraction: 0.5,
        dataset: Some(DatasetRef {
            fingerprint: FP.into(),
            name: ds.name.clone(),
            dir: None,
        }),
        student: Some("/r/checkpoints/best.safetensors".into()),
        wall_secs: 0.25,
    };
    write_selection(&p, &keys, &meta).unwrap();
    // the names every sidecar so far was written with
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(selection_meta_path(&p)).unwrap()).unwrap();
    let mut names: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "budget",
            "dataset",
            "fraction",
            "max_len",
            "objective",
            "policy",
            "pool",
            "seed",
            "selected",
            "student",
            "threshold",
            "train_rows",
            "wall_secs"
        ]
    );
    assert_eq!(
        raw["dataset"],
        serde_json::json!({"fingerprint": FP, "name": ds.name})
    );
    assert_eq!(read_selection_meta(&p).unwrap(), Some(meta));
    assert_eq!(read_selection_rows(&p, FP, &ds).unwrap(), vec![0, 2]);
    // a sidecar by hand with only some fields still reads; a malformed one is one line
    std::fs::write(selection_meta_path(&p), r#"{"policy": "random"}"#).unwrap();
    assert_eq!(
        read_selection_meta(&p).unwrap().unwrap().policy.as_deref(),
        Some("random")
    );
    std::fs::write(selection_meta_path(&p), r#"{"selected": "two"}"#).unwrap();
    let e = err(read_selection_rows(&p, FP, &ds));
    assert!(
        e.contains("sel.csv.json") && e.contains("not a selection sidecar") && !e.contains('\n'),
        "{e}"
    );
}
