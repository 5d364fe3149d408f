//! `distillrec serve` over real HTTP on loopback: answers equal to
//! `recommend --json`, micro-batching, bad requests, SIGTERM, dropped
//! connections and hot reload.

mod common;
mod serve_http;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ok, prepare_synthetic, s, train_small_args};
use serde_json::{json, Value};
use serve_http::{request, Server};

/// A prepared synthetic dataset and a small student trained on it.
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    ckpt: PathBuf,
    root: PathBuf,
}

/// Prepares data and trains a student with `extra` train arguments.
fn fixture(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    prepare_synthetic(&data, 80, "1");
    ok(&train_small_args(&data, &run, extra));
    Fixture {
        data,
        ckpt: run.join("checkpoints/best.safetensors"),
        root: dir.path().to_path_buf(),
        _dir: dir,
    }
}

/// Trains another student on `f`'s data into `name`, returning its weights.
fn train_another(f: &Fixture, name: &str, extra: &[&str]) -> PathBuf {
    let run = f.root.join(name);
    ok(&train_small_args(&f.data, &run, extra));
    run.join("checkpoints/best.safetensors")
}

/// The 20 test histories: raw ids 1..=40, lengths 1 to 5.
fn histories() -> Vec<Vec<String>> {
    (0..20)
        .map(|i| {
            (0..(i % 5 + 1))
                .map(|j| ((i * 7 + j * 3) % 40 + 1).to_string())
                .collect()
        })
        .collect()
}

/// `recommend --json` as (raw id, score) pairs.
fn cli_top(ckpt: &Path, history: &[String], k: usize) -> Vec<(String, f64)> {
    let out = ok(&[
        "recommend",
        "--checkpoint",
        s(ckpt),
        "--history",
        &history.join(","),
        "--top",
        &k.to_string(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["raw_id"].as_str().unwrap().into(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// A `/recommend` answer as (raw id, score) pairs.
fn served_top(items: &Value) -> Vec<(String, f64)> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("no items: {items}"))
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Asserts two top-k lists agree: the same scores up to f32 rounding (the
/// CPU kernels' summation order varies with the batch's shape and the
/// threads' split, so scores may differ in the last bits), and the same item
/// at each rank unless the two items' scores are that close (a near-tie).
fn assert_same_top(got: &[(String, f64)], want: &[(String, f64)], what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, ((gid, gs), (wid, ws))) in got.iter().zip(want).enumerate() {
        assert!(close(*gs, *ws), "{what}: rank {i}: {got:?} vs {want:?}");
        let tie = want.iter().any(|(id, s)| id == gid && close(*s, *gs));
        assert!(gid == wid || tie, "{what}: rank {i}: {got:?} vs {want:?}");
    }
}

/// `POST /recommend` for `history`, asserting 200.
fn ask(addr: &str, history: &[String], k: usize) -> Vec<(String, f64)> {
    let body = json!({"history": history, "k": k}).to_string();
    let r = request(addr, "POST", "/recommend", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    served_top(&r.json()["items"])
}

#[test]
fn answers_equal_recommend_json_for_20_histories() {
    let f = fixture(&[]);
    let srv = Server::start(&["--checkpoint", s(&f.ckpt)]);
    for h in histories() {
        let want = cli_top(&f.ckpt, &h, 10);
        assert_eq!(want.len(), 10);
        assert_same_top(&ask(&srv.addr, &h, 10), &want, &format!("history {h:?}"));
    }
    // numbers and titles name the same items as raw-id strings
    let r = srv
        .post("/recommend", r#"{"history": [3, 5], "k": 4}"#)
        .json();
    let want = cli_top(&f.ckpt, &["3".into(), "5".into()], 4);
    assert_same_top(&served_top(&r["items"]), &want, "numbers");
    let title = r["items"][0]["title"].as_str().unwrap().to_string();
    let by_title = srv.post(
        "/recommend",
        &json!({"history": [title], "k": 3}).to_string(),
    );
    let by_id = srv.post(
        "/recommend",
        &json!({"history": [r["items"][0]["id"]], "k": 3}).to_string(),
    );
    let (by_title, by_id) = (
        served_top(&by_title.json()["items"]),
        served_top(&by_id.json()["items"]),
    );
    assert_same_top(&by_title, &by_id, "title");
    // the batch endpoint answers each history as /recommend does
    let hs = histories();
    let b = srv.post(
        "/recommend/batch",
        &json!({"histories": hs[..3], "k": 5}).to_string(),
    );
    assert_eq!(b.status, 200, "{}", b.body);
    for (i, h) in hs[..3].iter().enumerate() {
        let got = served_top(&b.json()["results"][i]["items"]);
        assert_same_top(&got, &cli_top(&f.ckpt, h, 5), "batch");
    }
    // the model's identity is the checkpoint's
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(f.ckpt.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(r["model"]["checkpoint_sha256"], manifest["weights_sha256"]);
    let info = format!(
        "distillrec_model_info{{checkpoint_sha256=\"{}\"",
        manifest["weights_sha256"].as_str().unwrap()
    );
    assert_eq!(srv.metric(&info), 1.0);
}

#[test]
fn concurrent_requests_share_a_forward_pass_and_answer_as_alone() {
    let f = fixture(&[]);
    // one row per forward pass: the single-request answers
    let alone = Server::start(&["--checkpoint", s(&f.ckpt), "--max-batch", "1"]);
    let hs: Vec<Vec<String>> = histories().into_iter().cycle().take(32).collect();
    let want: Vec<_> = hs.iter().map(|h| ask(&alone.addr, h, 10)).collect();
    assert_eq!(alone.metric("distillrec_batch_rows_max"), 1.0);
    // a long wait gathers the 32 concurrent requests into few passes
    let srv = Server::start(&[
        "--checkpoint",
        s(&f.ckpt),
        "--max-batch",
        "64",
        "--max-wait-us",
        "300000",
    ]);
    let threads: Vec<_> = hs
        .iter()
        .cloned()
        .map(|h| {
            let addr = srv.addr.clone();
            std::thread::spawn(move || ask(&addr, &h, 10))
        })
        .collect();
    for (t, want) in threads.into_iter().zip(&want) {
        assert_same_top(&t.join().unwrap(), want, "batched");
    }
    assert!(srv.metric("distillrec_batch_rows_max") > 1.0);
    assert!(srv.metric("distillrec_batch_rows_count") < 32.0);
    assert_eq!(srv.metric("distillrec_batch_rows_sum"), 32.0);
    assert_eq!(
        srv.metric("distillrec_http_requests_total{route=\"/recommend\",status=\"200\"}"),
        32.0
    );
}

#[test]
fn every_bad_request_gets_its_4xx_and_the_server_keeps_serving() {
    let f = fixture(&[]);
    let mut srv = Server::start(&[
        "--checkpoint",
        s(&f.ckpt),
        "--max-body-bytes",
        "2048",
        "--max-history",
        "5",
        "--max-k",
        "50",
        "--max-batch",
        "4",
    ]);
    let long_body = format!(r#"{{"history": ["1"], "pad": "{}"}}"#, "x".repeat(3000));
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/recommend",
            "{\"history\": [1,",
            400,
            "invalid JSON",
        ),
        ("POST", "/recommend", "", 400, "invalid JSON"),
        ("POST", "/recommend", r#"{"k": 3}"#, 400, "history"),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1"], "topk": 3}"#,
            400,
            "topk",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": []}"#,
            400,
            "history is empty",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1"], "k": 0}"#,
            400,
            "k must be between 1 and 50",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1"], "k": 51}"#,
            400,
            "--max-k",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1"], "k": -2}"#,
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1","2","3","4","5","6"]}"#,
            400,
            "--max-history",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": ["1", "no such item zzz"]}"#,
            422,
            "history[1]",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": [999999]}"#,
            422,
            "no item has raw id 999999",
        ),
        (
            "POST",
            "/recommend",
            r#"{"history": [{"id": 1}]}"#,
            422,
            "history[0]: must be an item id",
        ),
        ("POST", "/recommend", &long_body, 413, "--max-body-bytes"),
        (
            "POST",
            "/recommend/batch",
            r#"{"histories": []}"#,
            400,
            "histories has 0 entries",
        ),
        (
            "POST",
            "/recommend/batch",
            r#"{"histories": [["1"],["2"],["3"],["4"],["5"]]}"#,
            400,
            "--max-batch",
        ),
        (
            "POST",
            "/recommend/batch",
            r#"{"histories": [["1"], []]}"#,
            400,
            "histories[1] is empty",
        ),
        ("GET", "/recommend", "", 405, "wrong method"),
        ("GET", "/nowhere", "", 404, "no such endpoint"),
        (
            "POST",
            "/admin/reload",
            r#"{"path": "x"}"#,
            400,
            "invalid JSON",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let r = request(&srv.addr, method, path, body).unwrap();
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.body);
        assert_eq!(r.body.lines().count(), 1, "one line: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "want '{want}' in: {msg}");
        // and it still answers a good request
        let good = srv.post("/recommend", r#"{"history": ["1", "2"], "k": 3}"#);
        assert_eq!(
            good.status, 200,
            "after {method} {path} {body}: {}",
            good.body
        );
    }
    assert!(srv.alive());
    assert_eq!(srv.get("/healthz").status, 200);
    assert!(
        srv.metric("distillrec_http_requests_total{route=\"/recommend\",status=\"422\"}") >= 3.0
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let f = fixture(&[]);
    let mut srv = Server::start(&["--checkpoint", s(&f.ckpt), "--max-wait-us", "3000000"]);
    let hs = histories();
    let want: Vec<_> = hs[..8].iter().map(|h| cli_top(&f.ckpt, h, 5)).collect();
    let threads: Vec<_> = hs[..8]
        .iter()
        .cloned()
        .map(|h| {
            let addr = srv.addr.clone();
            std::thread::spawn(move || ask(&addr, &h, 5))
        })
        .collect();
    // the requests wait up to 3 s for their batch to fill
    std::thread::sleep(Duration::from_millis(1000));
    srv.signal(libc::SIGTERM);
    for (t, want) in threads.into_iter().zip(&want) {
        assert_same_top(&t.join().unwrap(), want, "in flight at SIGTERM");
    }
    let (status, stderr) = srv.wait();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_dropped_connections_leave_the_server_up_and_bounded() {
    let f = fixture(&[]);
    let mut srv = Server::start(&["--checkpoint", s(&f.ckpt)]);
    let h = vec!["1".to_string(), "2".to_string()];
    let want = ask(&srv.addr, &h, 10);
    let before = rss_kib(srv.pid());
    for _ in 0..10 {
        let open: Vec<_> = (0..100)
            .map(|_| std::net::TcpStream::connect(&srv.addr).unwrap())
            .collect();
        drop(open);
    }
    assert!(srv.alive());
    assert_same_top(&ask(&srv.addr, &h, 10), &want, "after drops");
    let grew = rss_kib(srv.pid()).saturating_sub(before);
    assert!(grew < 64 * 1024, "resident memory grew by {grew} KiB");
}

/// Copies a checkpoint's weights and manifest into `dir`.
fn copy_checkpoint(from: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::copy(from.with_extension("json"), to.with_extension("json")).unwrap();
    to
}

#[test]
fn reload_refuses_bad_checkpoints_and_switches_to_good_ones_without_failing_requests() {
    let f = fixture(&[]);
    let other = train_another(&f, "other", &["--set", "train.student.max_epochs=1"]);
    let served = copy_checkpoint(&f.ckpt, &f.root.join("served"));
    let mut srv = Server::start(&["--checkpoint", s(&served), "--data", s(&f.data)]);
    let old = srv.model_sha();
    // corrupt weights: refused, the old model keeps serving
    let bad = copy_checkpoint(&other, &f.root.join("bad"));
    let mut bytes = std::fs::read(&bad).unwrap();
    let n = bytes.len();
    bytes[n - 8..].copy_from_slice(&[0xff; 8]);
    std::fs::write(&bad, bytes).unwrap();
    let r = srv.post("/admin/reload", &json!({"checkpoint": bad}).to_string());
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("old model keeps serving"));
    assert_eq!(srv.model_sha(), old);
    // a student of another dataset: refused by its fingerprint
    let elsewhere = f.root.join("data2");
    prepare_synthetic(&elsewhere, 80, "2");
    let run2 = f.root.join("run2");
    ok(&train_small_args(&elsewhere, &run2, &[]));
    let r = srv.post(
        "/admin/reload",
        &json!({"checkpoint": run2.join("checkpoints/best.safetensors")}).to_string(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("trained on dataset"),
        "{}",
        r.body
    );
    assert_eq!(srv.model_sha(), old);
    assert_eq!(
        srv.metric("distillrec_reloads_total{result=\"failed\"}"),
        2.0
    );
    // a good one switches, with no failed request under a small load
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (srv.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = request(&addr, "POST", "/recommend", r#"{"history": ["4"]}"#).unwrap();
                    assert_eq!(r.status, 200, "{}", r.body);
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = srv.post("/admin/reload", &json!({"checkpoint": other}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let served_during: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served_during > 0);
    let new = srv.model_sha();
    assert_ne!(new, old);
    let h = vec!["4".to_string(), "9".to_string()];
    assert_same_top(
        &ask(&srv.addr, &h, 10),
        &cli_top(&other, &h, 10),
        "after reload",
    );
    // SIGHUP reloads the served path: put the first student back there
    copy_checkpoint(&f.ckpt, &f.root.join("served"));
    srv.signal(libc::SIGHUP);
    let mut waited = 0;
    while srv.model_sha() != old {
        assert!(waited < 100, "SIGHUP did not reload within 10 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert_same_top(
        &ask(&srv.addr, &h, 10),
        &cli_top(&f.ckpt, &h, 10),
        "after SIGHUP",
    );
    assert!(srv.alive());
}

#[test]
fn bench_serve_reports_every_level_without_errors() {
    let f = fixture(&[]);
    let srv = Server::start(&["--checkpoint", s(&f.ckpt)]);
    let url = format!("http://{}/recommend", srv.addr);
    let out = ok(&[
        "bench",
        "serve",
        "--url",
        &url,
        "--concurrency",
        "1,4",
        "--duration",
        "500ms",
        "--max-requests",
        "2000",
    ]);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("RESULT")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, c) in lines.iter().zip(["concurrency=1 ", "concurrency=4 "]) {
        assert!(line.contains(c) && line.contains(" errors=0 "), "{line}");
        let n: u64 = line
            .split("requests=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0 && n <= 2000, "{line}");
    }
    let served = srv.metric("distillrec_http_requests_total{route=\"/recommend\",status=\"200\"}");
    assert!(served >= 2.0);
}

#[test]
fn a_request_past_the_timeout_gets_503_and_the_server_keeps_serving() {
    let f = fixture(&[]);
    // a request waits up to 2 s for its batch, far past the 100 ms bound
    let srv = Server::start(&[
        "--checkpoint",
        s(&f.ckpt),
        "--timeout-ms",
        "100",
        "--max-wait-us",
        "2000000",
    ]);
    let r = srv.post("/recommend", r#"{"history": ["1"]}"#);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("--timeout-ms"),
        "{}",
        r.body
    );
    assert_eq!(srv.get("/healthz").status, 200);
    assert_eq!(
        srv.metric("distillrec_http_requests_total{route=\"/recommend\",status=\"503\"}"),
        1.0
    );
}

#[test]
fn connections_past_the_limit_wait_until_one_closes() {
    let f = fixture(&[]);
    let srv = Server::start(&["--checkpoint", s(&f.ckpt), "--max-connections", "2"]);
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&srv.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let addr = srv.addr.clone();
    let waiting = std::thread::spawn(move || {
        let h = vec!["1".to_string()];
        ask(&addr, &h, 3)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiting.is_finished(), "a third connection was served");
    drop(idle);
    assert_eq!(waiting.join().unwrap().len(), 3);
}

#[test]
fn idle_connections_are_closed_so_they_cannot_hold_every_slot() {
    let f = fixture(&[]);
    let srv = Server::start(&[
        "--checkpoint",
        s(&f.ckpt),
        "--max-connections",
        "2",
        "--idle-timeout-ms",
        "300",
        "--timeout-ms",
        "200",
    ]);
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&srv.addr).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let h = vec!["1".to_string()];
    assert_eq!(ask(&srv.addr, &h, 3).len(), 3);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
}
