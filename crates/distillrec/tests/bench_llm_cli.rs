//! `bench llm --step teacher | infer` through the binary on a tiny random
//! backbone: both objectives run the real teacher and print their RESULT
//! line (objective, catalogue, mean prompt tokens, first loss), and
//! `--dump` writes the step's inputs.

mod common;
#[path = "../../distillrec-llm/tests/common/mod.rs"]
mod llmcommon;

use common::*;

/// A tiny Llama directory whose context fits the default teacher prompts.
fn backbone(dir: &std::path::Path) -> std::path::PathBuf {
    let mut cfg = llmcommon::llama_config("llama", 2, false);
    cfg["max_position_embeddings"] = 4096.into();
    let w = llmcommon::random_weights(&cfg, 5);
    let p = dir.join("backbone");
    llmcommon::write_hf_dir(&p, &cfg, &w);
    p
}

#[test]
fn bench_llm_times_the_teacher_for_both_objectives() {
    let d = tempfile::tempdir().unwrap();
    let model = backbone(d.path());
    for step in ["teacher", "infer"] {
        for objective in ["ranking", "generative"] {
            let dump = d.path().join(format!("{step}-{objective}.safetensors"));
            let out = ok(&[
                "bench",
                "llm",
                "--model",
                s(&model),
                "--step",
                step,
                "--objective",
                objective,
                "--batch",
                "2",
                "--tokens",
                "40",
                "--items",
                "40",
                "--repeats",
                "1",
                "--dump",
                s(&dump),
            ]);
            let result = out.lines().find(|l| l.starts_with("RESULT ")).unwrap();
            for field in [
                "impl=distillrec".to_string(),
                format!("step={step}"),
                format!("objective={objective}"),
                "batch=2".into(),
                "prompt_tokens=".into(),
                "items=".into(),
            ] {
                assert!(result.contains(&field), "{field} missing: {result}");
            }
            assert_eq!(
                result.contains("first_loss="),
                step == "teacher",
                "{result}"
            );
            assert!(dump.is_file(), "{step} {objective}: no dump");
        }
    }
}
