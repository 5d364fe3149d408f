//! `teacher plan`: a Llama-2-7B `config.json` with no weights is sized to
//! its published parameter count and refused on a machine too small for
//! it.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
#[allow(unused_imports)]
mod tiny;

mod common;

use common::*;

/// The total of a printed plan (`  62 GB  in all (...)`) in bytes.
fn planned_total(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains("in all"))
        .unwrap_or_else(|| panic!("no total in {text}"));
    let mut w = line.split_whitespace();
    let x: f64 = w.next().unwrap().parse().unwrap();
    let unit = match w.next().unwrap() {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        u => panic!("unit {u}"),
    };
    x * unit
}

/// A Llama-2-7B `config.json` (no weights) in `dir`.
fn llama_2_7b(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("llama-2-7b.json");
    std::fs::write(
        &cfg,
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false}"#,
    )
    .unwrap();
    cfg
}

/// `--device cuda --no-measure` plans a GPU run on a machine without one
/// (this CPU build cannot open a GPU): the device is opened only to measure
/// its throughput, and the frozen weights are sized in bf16, half the CPU's
/// f32.
#[test]
fn a_gpu_run_is_planned_without_opening_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_synthetic(&data, 60, "42");
    let cfg = llama_2_7b(dir.path());
    let text = ok(&[
        "teacher",
        "plan",
        "--config",
        TINY_TEACHER,
        "--data",
        s(&data),
        "--backbone",
        s(&cfg),
        "--device",
        "cuda",
        "--no-measure",
        "--memory-gb",
        "80",
        "--prompt-tokens",
        "512",
    ]);
    assert!(text.contains("backbone: 6.74B parameters"), "{text}");
    assert!(text.contains("13 GB  the frozen backbone"), "{text}");
    assert!(text.contains("fits: yes"), "{text}");
}

#[test]
fn a_7b_config_is_planned_without_weights_and_refused_where_it_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    prepare_synthetic(&data, 60, "42");
    let cfg = llama_2_7b(d);
    let base = [
        "teacher",
        "plan",
        "--config",
        TINY_TEACHER,
        "--data",
        s(&data),
        "--backbone",
        s(&cfg),
        "--no-measure",
        "--prompt-tokens",
        "512",
    ];
    let mut fits = base.to_vec();
    fits.extend(["--memory-gb", "80"]);
    let text = ok(&fits);
    assert!(text.contains("backbone: 6.74B parameters"), "{text}");
    assert!(text.contains("fits: yes"), "{text}");
    // bf16 weights would be 13.5 GB; the CPU plan holds them in f32
    assert!(text.contains("27 GB  the frozen backbone"), "{text}");
    // weights, activations of 8 × 512 tokens over 32 layers, adapters
    let total = planned_total(&text);
    assert!((40e9..80e9).contains(&total), "{text}");
    let mut small = base.to_vec();
    small.extend(["--memory-gb", "8"]);
    clean_error(&small, &["needs about", "8.0 GB available"][..]);
}

/// `train teacher` records its plan beside what it measured: the plan's
/// total is within 25% of the run's counted peak of live allocations
/// above what was live before the backbone loaded, at two batch sizes. The
/// backbone is small enough for a test but large enough that the model,
/// not the program, fills the memory (8 layers of hidden 512: 94 MB of f32
/// weights). The resident peak (`peak_rss_mb`) is recorded too; it is
/// larger, by the pages the allocator keeps for reuse.
#[test]
fn a_training_run_peaks_within_a_quarter_of_its_plan() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    prepare_synthetic(&data, 60, "42");
    let mut cfg = tiny::llama_config("llama", 8, false);
    cfg["hidden_size"] = 512.into();
    cfg["intermediate_size"] = 1376.into();
    cfg["num_attention_heads"] = 8.into();
    cfg["num_key_value_heads"] = 4.into();
    let backbone = d.join("backbone");
    tiny::write_hf_dir(&backbone, &cfg, &tiny::random_weights(&cfg, 3));
    let ckpt = one_epoch_student(&data, &d.join("student"));
    let sel = d.join("sel.csv");
    random_selection(&data, &ckpt, 40, &sel);
    for batch in [8, 16] {
        let out = d.join(format!("teacher-{batch}"));
        let batch = format!("train.teacher.batch_size={batch}");
        let mut a = train_teacher_args(&data, &ckpt, &backbone, &out);
        a.extend_from_slice(&["--selection", s(&sel), "--set", &batch]);
        ok(&a);
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        let c = &run["costs"]["teacher.train"];
        let mb = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {c}"));
        let planned = mb("planned_mb");
        let measured = mb("peak_heap_mb") - mb("heap_before_load_mb");
        let resident = mb("peak_rss_mb") - mb("rss_before_load_mb");
        assert!(
            (planned - measured).abs() <= 0.25 * measured,
            "{batch}: planned {planned:.1} MiB, measured {measured:.1} MiB (resident {resident:.1})"
        );
        // the weights alone are 90 MiB: the model fills the memory
        assert!(measured > 150.0 && resident >= measured, "{c}");
    }
}
