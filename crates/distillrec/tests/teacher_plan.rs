//! `teacher plan`: a Llama-2-7B `config.json` with no weights is sized to
//! its published parameter count and refused on a machine too small for
//! it.

mod common;

use common::*;

/// The tiny teacher preset (short prompts, small adapters).
const TEACHER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../configs/synthetic-teacher-tiny.toml"
);

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
        TEACHER,
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
        TEACHER,
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
