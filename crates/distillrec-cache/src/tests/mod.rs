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

mod from_files;
mod selection;
