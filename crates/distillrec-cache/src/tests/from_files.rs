//! `FromFiles`: top-K and embeddings imported from plain files.

use super::*;

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
