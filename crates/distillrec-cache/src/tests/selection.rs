//! Selection files, their sidecar and the on-disk names of the enums.

use super::*;

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
