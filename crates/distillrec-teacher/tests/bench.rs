//! `bench llm --step teacher | infer` times the real teacher: on a tiny
//! random backbone, the timed training step's loss is
//! `Teacher::micro_step`'s on the same rows, repeated steps train the
//! adapters, the gate and the ranking head, inference runs for both
//! objectives, and the dump records the first losses and the inputs.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
mod common;

use distillrec_config::{AdapterTarget, TeacherConfig, TeacherObjective};
use distillrec_llm::{load, Llm, LoadOptions};
use distillrec_teacher::bench::{Bench, BenchSpec, Mode};

fn backbone(dir: &std::path::Path) -> Llm {
    let cfg = common::llama_config("llama", 2, false);
    let w = common::random_weights(&cfg, 5);
    let p = dir.join("backbone");
    common::write_hf_dir(&p, &cfg, &w);
    load(&p, &LoadOptions::default()).unwrap()
}

fn spec(mode: Mode, objective: TeacherObjective) -> BenchSpec {
    BenchSpec {
        mode,
        objective,
        experts: 2,
        rank: 4,
        alpha: 8.0,
        targets: vec![AdapterTarget::Q, AdapterTarget::V],
        batch: 3,
        tokens: 40,
        items: 40,
        topk: 5,
        repeats: 1,
        seed: 3,
        // prompts that fit the tiny backbone's 128 positions
        base: TeacherConfig {
            prompts: vec!["H: {history} C: {candidates} A:".into()],
            ranking_prompts: vec!["H: {history} ->".into()],
            candidates: 3,
            max_title_tokens: 4,
            gate_hidden: 8,
            ..TeacherConfig::default()
        },
    }
}

fn bench(mode: Mode, objective: TeacherObjective) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    Bench::new(backbone(dir.path()), &spec(mode, objective)).unwrap()
}

#[test]
fn the_timed_training_step_is_the_teachers_micro_step() {
    for objective in [TeacherObjective::Ranking, TeacherObjective::Generative] {
        let mut b = bench(Mode::Train, objective);
        let want = b
            .teacher
            .micro_step(&b.ds, &b.rows(), 0, 1.0, 0)
            .unwrap()
            .loss;
        let got = b.step().unwrap().expect("a training step has a loss");
        assert_eq!(got, want, "{objective}: timed step vs micro_step");
        let t = b.time().unwrap();
        assert!(t.secs > 0.0 && t.prompt_tokens > 0.0, "{t:?}");
    }
}

#[test]
fn repeated_timed_steps_train_adapters_gate_and_head() {
    let mut b = bench(Mode::Train, TeacherObjective::Ranking);
    let before: Vec<(String, Vec<f32>)> = b
        .teacher
        .named_params()
        .into_iter()
        .map(|(n, _, v)| (n, v.to_vec()))
        .collect();
    let first = b.step().unwrap().unwrap();
    let mut last = first;
    for _ in 0..10 {
        last = b.step().unwrap().unwrap();
    }
    assert!(last < first, "loss {first} -> {last}");
    let after = b.teacher.named_params();
    for want in [
        "adapter.1.v.lora_B",
        "gate.2.weight",
        "head.map",
        "projector.0.weight",
    ] {
        let (_, old) = before.iter().find(|(n, _)| n == want).unwrap();
        let (_, _, new) = after.iter().find(|(n, _, _)| n == want).unwrap();
        assert!(
            old.iter().zip(new.iter()).any(|(a, b)| a != b),
            "{want} did not move"
        );
    }
}

#[test]
fn inference_runs_for_both_objectives() {
    for objective in [TeacherObjective::Ranking, TeacherObjective::Generative] {
        let mut b = bench(Mode::Infer, objective);
        assert_eq!(b.step().unwrap(), None);
        assert!(b.time().unwrap().prompt_tokens > 0.0);
    }
}

#[test]
fn the_dump_records_the_first_losses_and_leaves_the_weights_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Bench::new(
        backbone(dir.path()),
        &spec(Mode::Train, TeacherObjective::Generative),
    )
    .unwrap();
    let before: Vec<Vec<f32>> = b.teacher.params_mut().iter().map(|p| p.to_vec()).collect();
    let want = b
        .teacher
        .micro_step(&b.ds, &b.rows(), 0, 1.0, 0)
        .unwrap()
        .loss;
    let path = dir.path().join("dump.safetensors");
    b.dump(&path).unwrap();
    let after: Vec<Vec<f32>> = b.teacher.params_mut().iter().map(|p| p.to_vec()).collect();
    assert_eq!(before, after, "dumping restores the initial weights");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let first: f64 = meta["first_loss"].parse().unwrap();
    assert!((first - want).abs() < 1e-6, "{first} vs {want}");
    assert!(meta.contains_key("second_loss"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "input_ids",
        "slot_pos",
        "student_rep",
        "answer_tok",
        "param.gate.0.weight",
    ] {
        assert!(st.tensor(name).is_ok(), "{name} missing");
    }
}

/// `bench llm --grads-out`: the file holds, after one update, the next
/// micro-step's loss and every trainable tensor's gradient by name, none of
/// them all zero (training), or the first batch's ranking scores
/// (inference), from the initial weights; the weights are left as they were.
#[test]
fn the_grads_file_holds_the_second_steps_loss_gradients_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bench(Mode::Train, TeacherObjective::Ranking);
    let path = dir.path().join("grads.safetensors");
    let before: Vec<Vec<f32>> = b.teacher.params_mut().iter().map(|p| p.to_vec()).collect();
    b.write_grads(&path).unwrap();
    let after: Vec<Vec<f32>> = b.teacher.params_mut().iter().map(|p| p.to_vec()).collect();
    assert_eq!(before, after, "write_grads left the weights changed");
    let got = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let want = b
        .after_one_update(|b, _| b.teacher.micro_step(&b.ds, &b.rows(), 0, 1.0, 0))
        .unwrap();
    for (name, _, _) in b.teacher.named_params() {
        let g = got[&format!("grad.{name}")].flatten_all().unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        assert!(g.iter().any(|&x| x != 0.0), "grad.{name} is all zero");
    }
    let loss = got["loss"].to_vec1::<f32>().unwrap();
    assert_eq!(loss, vec![want.loss as f32]);
    let named = b.teacher.named_params();
    assert_eq!(got.len(), named.len() + 1);
    for ((name, shape, _), g) in named.iter().zip(&want.grads) {
        let t = &got[&format!("grad.{name}")];
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        assert_eq!(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g);
    }
    let mut b = bench(Mode::Infer, TeacherObjective::Ranking);
    b.write_grads(&path).unwrap();
    let got = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let table = b.teacher.eval_table().unwrap();
    let want = b.teacher.rank_scores(&b.ds, &b.rows(), &table).unwrap();
    let s = &got["scores"];
    assert_eq!(s.dims(), &[3, b.ds.num_items() + 1]);
    assert_eq!(s.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    let mut g = bench(Mode::Infer, TeacherObjective::Generative);
    let e = g.write_grads(&path).unwrap_err().to_string();
    assert!(e.contains("--objective ranking"), "{e}");
}

/// `bench llm --random-weights`: a backbone of a `config.json`'s shape with
/// seeded weights (the same seed the same model, another seed another),
/// built in the asked dtype, that the teacher trains on.
#[test]
fn a_random_weight_backbone_is_seeded_shaped_and_trainable() {
    use candle_core::DType;
    use distillrec_llm::random::random_backbone;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::llama_config("llama", 2, false);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let opts = |dtype| LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    let emb = |l: &Llm| {
        l.model
            .embed_table()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a = random_backbone(dir.path(), &opts(DType::F32), 1).unwrap();
    let b = random_backbone(&dir.path().join("config.json"), &opts(DType::F32), 1).unwrap();
    let c = random_backbone(dir.path(), &opts(DType::F32), 2).unwrap();
    assert_eq!(a.model.layers.len(), 2);
    assert_eq!(
        a.model.embed_table().dims(),
        &[cfg["vocab_size"].as_u64().unwrap() as usize, 32]
    );
    assert_eq!(emb(&a), emb(&b));
    assert_ne!(emb(&a), emb(&c));
    let sd = (emb(&a).iter().map(|x| x * x).sum::<f32>() / emb(&a).len() as f32).sqrt();
    assert!((sd - 0.02).abs() < 0.002, "standard deviation {sd}");
    let h = random_backbone(dir.path(), &opts(DType::BF16), 1).unwrap();
    assert_eq!(h.model.dtype(), DType::BF16);
    let mut bench = Bench::new(h, &spec(Mode::Train, TeacherObjective::Ranking)).unwrap();
    let l = bench.step().unwrap().unwrap();
    assert!(l.is_finite() && l > 0.0, "{l}");
}
