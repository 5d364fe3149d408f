//! The backbone on tiny random-weight models written by the tests: loading
//! (safetensors and GGUF agree), padding, KV cache, gradients, LoRA, errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use distillrec_llm::bench::lm_loss;
use distillrec_llm::chat::ChatTemplate;
use distillrec_llm::embed::gather_rows;
use distillrec_llm::embed::{item_table, load_table, save_table, title_embeddings, TitleCut};
use distillrec_llm::generate::{argmax, generate, next_logits, Finish, GenerateOptions};
use distillrec_llm::lora::{Adapter, AdapterCtx, Lora};
use distillrec_llm::model::Target;
use distillrec_llm::source::MapSource;
use distillrec_llm::{load, Config, KvCache, LoadOptions, Model};

fn opts() -> LoadOptions {
    LoadOptions::default()
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap()
}

fn err_of<T>(r: distillrec_llm::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_and_safetensors_give_the_same_logits_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tie) in [("llama", false), ("llama", true), ("qwen2", false)] {
        let cfg = llama_config(arch, 2, tie);
        let w = random_weights(&cfg, 7);
        let hf = dir.path().join(format!("{arch}-{tie}"));
        write_hf_dir(&hf, &cfg, &w);
        let gg = dir.path().join(format!("{arch}-{tie}.gguf"));
        write_gguf(&gg, &cfg, &w, arch);
        let a = load(&hf, &opts()).unwrap();
        let b = load(&gg, &opts()).unwrap();
        assert_eq!(a.model.config().tie_word_embeddings, tie);
        assert_eq!(b.model.config().tie_word_embeddings, tie);
        assert_eq!(b.model.config().qkv_bias, arch == "qwen2");
        let text = "<|im_start|>the cat sat in 2024 at the inn<|im_end|>";
        let ia = a.tokenizer.encode(text, true).unwrap();
        let ib = b.tokenizer.encode(text, true).unwrap();
        assert_eq!(ia, ib);
        assert_eq!(ia[0], 1, "control token is one special id");
        assert!(ia.len() > 10);
        assert_eq!(a.tokenizer.decode(&ia, false).unwrap(), text);
        let la = a.model.forward(&ids_tensor(&ia), None, None).unwrap();
        let lb = b.model.forward(&ids_tensor(&ia), None, None).unwrap();
        let d = max_abs_diff(&la, &lb);
        assert!(d < 1e-5, "{arch}: safetensors vs GGUF logits differ by {d}");
    }
}

#[test]
fn gguf_q_k_rows_are_unpermuted() {
    // A GGUF whose q/k rows were NOT permuted (as if written by a buggy
    // converter) must give different logits, so the equality above really
    // exercises the un-permutation.
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 1, false);
    let w = random_weights(&cfg, 3);
    let good = dir.path().join("good.gguf");
    write_gguf(&good, &cfg, &w, "llama");
    let bad = dir.path().join("bad.gguf");
    write_gguf(&bad, &cfg, &w, "qwen2"); // same tensors, no permutation, loaded as qwen2 (unpermuted)
    let a = load(&good, &opts()).unwrap().model;
    let b = load(&bad, &opts()).unwrap().model;
    let ids = ids_tensor(&[5, 9, 30, 41, 7]);
    let d = max_abs_diff(
        &a.forward(&ids, None, None).unwrap(),
        &b.forward(&ids, None, None).unwrap(),
    );
    assert!(
        d < 1e-5,
        "un-permuted llama GGUF must equal the plain layout, got {d}"
    );
    let mut wp = w.clone();
    let q = "model.layers.0.self_attn.q_proj.weight".to_string();
    wp.insert(q.clone(), permute_qk(&w[&q], 4));
    let wrong = dir.path().join("wrong.gguf");
    write_gguf(&wrong, &cfg, &wp, "qwen2");
    let c = load(&wrong, &opts()).unwrap().model;
    let d = max_abs_diff(
        &a.forward(&ids, None, None).unwrap(),
        &c.forward(&ids, None, None).unwrap(),
    );
    assert!(d > 1e-3, "permuted q rows must change the output");
}

fn padded_batch(rows: &[Vec<u32>], left: bool, pad: u32) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids: Vec<u32> = Vec::new();
    let mut mask: Vec<u8> = Vec::new();
    for r in rows {
        let p = t - r.len();
        let (pi, pm): (Vec<u32>, Vec<u8>) = (vec![pad; p], vec![0; p]);
        if left {
            ids.extend(pi.iter().chain(r));
            mask.extend(pm.iter().chain(vec![1u8; r.len()].iter()));
        } else {
            ids.extend(r.iter().chain(&pi));
            mask.extend(vec![1u8; r.len()].iter().chain(pm.iter()));
        }
    }
    let n = rows.len();
    (
        Tensor::from_vec(ids, (n, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (n, t), &Device::Cpu).unwrap(),
    )
}

#[test]
fn padding_invariance_left_and_right() {
    let rows = vec![
        vec![5u32, 9, 30],
        vec![11, 12, 13, 14, 15, 16, 17],
        vec![40, 3, 99, 100, 101],
    ];
    for (name, cfg) in [
        ("llama", llama_config("llama", 2, false)),
        ("qwen2", llama_config("qwen2", 2, true)),
        ("opt", opt_config(true, 16)),
        ("opt-post-norm", opt_config(false, 32)),
    ] {
        let m = build(&cfg, 11, DType::F32);
        let alone: Vec<Tensor> = rows
            .iter()
            .map(|r| {
                let h = m
                    .forward_hidden(&m.embed(&ids_tensor(r)).unwrap(), None, None)
                    .unwrap();
                gather_rows(&h, &[r.len() - 1]).unwrap()
            })
            .collect();
        let alone = Tensor::cat(&alone, 0).unwrap();
        for left in [true, false] {
            let (ids, mask) = padded_batch(&rows, left, 0);
            let h = m
                .forward_hidden(&m.embed(&ids).unwrap(), Some(&mask), None)
                .unwrap();
            let t = ids.dim(1).unwrap();
            let idx: Vec<usize> = rows
                .iter()
                .map(|r| if left { t - 1 } else { r.len() - 1 })
                .collect();
            let d = max_abs_diff(&gather_rows(&h, &idx).unwrap(), &alone);
            assert!(d < 1e-5, "{name} left={left}: padded batch differs by {d}");
        }
    }
}

#[test]
fn kv_cache_generation_equals_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 2, false);
    let gg = dir.path().join("m.gguf");
    write_gguf(&gg, &cfg, &random_weights(&cfg, 5), "llama");
    let llm = load(&gg, &opts()).unwrap();
    let prompt = llm
        .tokenizer
        .encode("the weather in the inn", true)
        .unwrap();
    let g = generate(
        &llm.model,
        &llm.tokenizer,
        &prompt,
        &GenerateOptions {
            max_tokens: 12,
            stop: vec![],
        },
    )
    .unwrap();
    // Naive: a full forward over everything for every new token.
    let mut all = prompt.clone();
    let mut naive = Vec::new();
    for _ in 0..12 {
        let logits = llm.model.forward(&ids_tensor(&all), None, None).unwrap();
        let last: Vec<f32> = logits
            .narrow(1, all.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = argmax(&last) as u32;
        naive.push(next);
        all.push(next);
    }
    match g.finish {
        Finish::Eos => {
            assert_eq!(g.ids[..], naive[..g.ids.len()]);
            assert!(llm.tokenizer.eos_ids().contains(&naive[g.ids.len()]));
        }
        _ => assert_eq!(g.ids, naive),
    }
    // Step logits agree too.
    let mut cache = KvCache::new(&llm.model);
    let mut step = next_logits(&llm.model, &prompt, &mut cache).unwrap();
    for (i, &tok) in naive.iter().enumerate().take(6) {
        let full = llm
            .model
            .forward(&ids_tensor(&all[..prompt.len() + i]), None, None)
            .unwrap();
        let full = full
            .narrow(1, prompt.len() + i - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let d = max_abs_diff(&full, &Tensor::new(step.as_slice(), &Device::Cpu).unwrap());
        assert!(d < 1e-4, "step {i}: cached logits differ by {d}");
        step = next_logits(&llm.model, &[tok], &mut cache).unwrap();
    }
}

#[test]
fn batched_cache_with_left_padding_matches_single_rows() {
    for cfg in [llama_config("llama", 2, false), opt_config(true, 32)] {
        let m = build(&cfg, 21, DType::F32);
        let rows = vec![vec![5u32, 9, 30], vec![11, 12, 13, 14, 15, 16]];
        let (ids, mask) = padded_batch(&rows, true, 0);
        let mut cache = KvCache::new(&m);
        m.forward(&ids, Some(&mask), Some(&mut cache)).unwrap();
        let next = Tensor::from_vec(vec![50u32, 60], (2, 1), &Device::Cpu).unwrap();
        let batched = m.forward(&next, None, Some(&mut cache)).unwrap();
        assert_eq!(cache.len(), 7);
        for (r, row) in rows.iter().enumerate() {
            let mut full = row.clone();
            full.push([50, 60][r]);
            let l = m.forward(&ids_tensor(&full), None, None).unwrap();
            let l = l.narrow(1, full.len() - 1, 1).unwrap();
            let d = max_abs_diff(&l, &batched.narrow(0, r, 1).unwrap());
            assert!(d < 1e-4, "row {r}: {d}");
        }
    }
}

#[test]
fn inputs_embeds_replace_tokens_causally() {
    let m = build(&llama_config("llama", 2, false), 2, DType::F32);
    let ids = ids_tensor(&[5, 9, 30, 41, 7]);
    let e = m.embed(&ids).unwrap();
    let a = m.forward_hidden(&e, None, None).unwrap();
    let b = m
        .forward_hidden(&m.embed(&ids).unwrap(), None, None)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // Replace the embedding at position 2 (a placeholder) by another vector.
    let v = Rng::new(9).tensor(&[1, 1, 32], 1.0, 0.0);
    let e2 = Tensor::cat(
        &[&e.narrow(1, 0, 2).unwrap(), &v, &e.narrow(1, 3, 2).unwrap()],
        1,
    )
    .unwrap();
    let c = m.forward_hidden(&e2, None, None).unwrap();
    assert_eq!(
        max_abs_diff(&a.narrow(1, 0, 2).unwrap(), &c.narrow(1, 0, 2).unwrap()),
        0.0
    );
    assert!(max_abs_diff(&a.narrow(1, 2, 3).unwrap(), &c.narrow(1, 2, 3).unwrap()) > 1e-3);
}

#[test]
fn fused_and_differentiable_paths_agree() {
    for cfg in [llama_config("llama", 2, false), opt_config(true, 16)] {
        let mut m = build(&cfg, 4, DType::F32);
        let rows = vec![vec![5u32, 9, 30], vec![11, 12, 13, 14, 15]];
        let (ids, mask) = padded_batch(&rows, true, 0);
        let a = m
            .forward_hidden(&m.embed(&ids).unwrap(), Some(&mask), None)
            .unwrap();
        m.set_allow_fused(false);
        let b = m
            .forward_hidden(&m.embed(&ids).unwrap(), Some(&mask), None)
            .unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "fused vs composed: {d}");
    }
}

/// Central finite differences of `loss` w.r.t. some entries of `var`,
/// compared with the backprop gradient.
fn check_grad(name: &str, var: &Var, grad: &Tensor, loss: &dyn Fn() -> f64, entries: &[usize]) {
    let base = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let shape = var.as_tensor().shape().clone();
    let eps = 1e-6;
    for &i in entries {
        let mut p = base.clone();
        p[i] += eps;
        var.set(&Tensor::from_vec(p.clone(), shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        let lp = loss();
        p[i] -= 2.0 * eps;
        var.set(&Tensor::from_vec(p, shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        let lm = loss();
        var.set(&Tensor::from_vec(base.clone(), shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        let fd = (lp - lm) / (2.0 * eps);
        let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
        assert!(
            err < 1e-5,
            "{name}[{i}]: backprop {} vs finite difference {fd}",
            g[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences_through_one_layer() {
    let mut llama = llama_config("llama", 1, false);
    llama["num_hidden_layers"] = 1.into();
    let mut opt = opt_config(true, 32);
    opt["num_hidden_layers"] = 1.into();
    for cfg in [llama, opt] {
        let mut m = build(&cfg, 13, DType::F64);
        let targets = if cfg["model_type"] == "opt" {
            vec![
                Target::Q,
                Target::K,
                Target::V,
                Target::O,
                Target::Up,
                Target::Down,
            ]
        } else {
            Target::ALL.to_vec()
        };
        let mut r = Rng::new(17);
        let mut loras = Vec::new();
        for &t in &targets {
            let lin = m.linear_mut(0, t).unwrap();
            let (i, o) = (lin.in_dim(), lin.out_dim());
            let a = r.tensor(&[2, i], 0.3, 0.0).to_dtype(DType::F64).unwrap();
            let b = r.tensor(&[o, 2], 0.3, 0.0).to_dtype(DType::F64).unwrap();
            let lora = Arc::new(Lora::from_tensors(&a, &b, 4.0).unwrap());
            lin.set_adapter(Some(lora.clone() as Arc<dyn Adapter>));
            loras.push(lora);
        }
        assert_eq!(m.trainable_vars().len(), 2 * targets.len());
        let emb = Var::from_tensor(
            &r.tensor(&[2, 4, 32], 0.5, 0.0)
                .to_dtype(DType::F64)
                .unwrap(),
        )
        .unwrap();
        let mask = Tensor::from_vec(vec![0u8, 1, 1, 1, 1, 1, 1, 1], (2, 4), &Device::Cpu).unwrap();
        let proj = r
            .tensor(&[2, 4, cfg_hidden(&m)], 1.0, 0.0)
            .to_dtype(DType::F64)
            .unwrap();
        let loss_t = || {
            let h = m
                .forward_hidden(emb.as_tensor(), Some(&mask), None)
                .unwrap();
            (h * &proj).unwrap().sum_all().unwrap()
        };
        let loss = || loss_t().to_scalar::<f64>().unwrap();
        let grads = loss_t().backward().unwrap();
        let ge = grads
            .get(emb.as_tensor())
            .expect("gradient reaches inputs_embeds");
        check_grad("inputs_embeds", &emb, ge, &loss, &[0, 37, 100, 200, 255]);
        for (t, l) in targets.iter().zip(&loras) {
            let ga = grads
                .get(l.a().as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {t:?}.A"));
            let gb = grads
                .get(l.b().as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {t:?}.B"));
            check_grad(&format!("{t:?}.A"), l.a(), ga, &loss, &[0, 5, 33]);
            check_grad(&format!("{t:?}.B"), l.b(), gb, &loss, &[0, 7, 20]);
        }
    }
}

fn cfg_hidden(m: &Model) -> usize {
    m.last_hidden_size()
}

#[test]
fn gradients_reach_adapters_in_every_layer() {
    let mut m = build(&llama_config("llama", 3, false), 8, DType::F32);
    let vars = m.add_lora(&[Target::Q, Target::V], 4, 8.0, 1).unwrap();
    assert_eq!(vars.len(), 3 * 2 * 2);
    let ids = [5u32, 9, 30, 41, 7, 8];
    let loss = lm_loss(&m, &ids, &AdapterCtx::default()).unwrap();
    let grads = loss.backward().unwrap();
    // B starts at zero, so dL/dB is the one that must be nonzero in every layer.
    for (i, v) in vars.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let g = grads.get(v.as_tensor()).expect("gradient");
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "adapter B #{i} gets no gradient");
    }
}

#[test]
fn fresh_lora_changes_nothing_and_training_lowers_the_loss() {
    let mut m = build(&llama_config("llama", 2, false), 8, DType::F32);
    let ids: Vec<u32> = (0..24).map(|i| [5u32, 9, 30, 41][i % 4]).collect();
    let before = m.forward(&ids_tensor(&ids), None, None).unwrap();
    use candle_nn::Optimizer;
    let vars = m.add_lora(&[Target::Q, Target::V], 4, 8.0, 0).unwrap();
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let after = m.forward(&ids_tensor(&ids), None, None).unwrap();
    // B = 0: only the (composed instead of fused) op path differs.
    assert!(max_abs_diff(&before, &after) < 1e-5);
    let ctx = AdapterCtx {
        gate: None,
        train: true,
    };
    let mut step = || {
        let loss = lm_loss(&m, &ids, &ctx).unwrap();
        opt.backward_step(&loss).unwrap();
        loss.to_scalar::<f32>().unwrap()
    };
    let first = step();
    let mut last = first;
    for _ in 0..15 {
        last = step();
    }
    assert!(last < first * 0.9, "loss {first} -> {last}");
    let moved = max_abs_diff(&before, &m.forward(&ids_tensor(&ids), None, None).unwrap());
    assert!(moved > 1e-3);
}

#[test]
fn num_layers_keeps_the_first_layers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 3, false);
    let w = random_weights(&cfg, 12);
    write_hf_dir(dir.path(), &cfg, &w);
    let two = load(
        dir.path(),
        &LoadOptions {
            num_layers: Some(2),
            ..opts()
        },
    )
    .unwrap()
    .model;
    assert_eq!(two.layers.len(), 2);
    let mut cfg2 = cfg.clone();
    cfg2["num_hidden_layers"] = 2.into();
    let w2: HashMap<String, Tensor> = w
        .into_iter()
        .filter(|(k, _)| !k.starts_with("model.layers.2."))
        .collect();
    let c2 = Config::from_hf_value(&cfg2, Path::new("c")).unwrap();
    let reference = Model::new(
        &c2,
        &mut MapSource::new("mem", w2),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = ids_tensor(&[5, 9, 30]);
    assert_eq!(
        max_abs_diff(
            &two.forward(&ids, None, None).unwrap(),
            &reference.forward(&ids, None, None).unwrap()
        ),
        0.0
    );
    let full = load(dir.path(), &opts()).unwrap().model;
    assert!(
        max_abs_diff(
            &two.forward(&ids, None, None).unwrap(),
            &full.forward(&ids, None, None).unwrap()
        ) > 1e-4
    );
    let e = err_of(load(
        dir.path(),
        &LoadOptions {
            num_layers: Some(4),
            ..opts()
        },
    ));
    assert!(e.contains("num_layers 4"), "{e}");
}

#[test]
fn sliding_window_limits_attention() {
    let mut cfg = llama_config("mistral", 1, false);
    cfg["sliding_window"] = 3.into();
    let m = build(&cfg, 6, DType::F32);
    let mut no_window = cfg.clone();
    no_window["sliding_window"] = serde_json::Value::Null;
    let full = build(&no_window, 6, DType::F32);
    let a = [5u32, 9, 30, 41, 7, 8];
    let b = [6u32, 9, 30, 41, 7, 8];
    let last = |m: &Model, ids: &[u32]| {
        m.forward_hidden(&m.embed(&ids_tensor(ids)).unwrap(), None, None)
            .unwrap()
            .narrow(1, 5, 1)
            .unwrap()
    };
    assert_eq!(
        max_abs_diff(&last(&m, &a), &last(&m, &b)),
        0.0,
        "token 0 is outside the window of token 5"
    );
    assert!(max_abs_diff(&last(&full, &a), &last(&full, &b)) > 1e-4);
}

#[test]
fn chat_template_and_special_tokens_from_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 1, true);
    let gg = dir.path().join("m.gguf");
    write_gguf(&gg, &cfg, &random_weights(&cfg, 1), "llama");
    let llm = load(&gg, &opts()).unwrap();
    let sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    assert_eq!(
        llm.chat,
        ChatTemplate::ChatMl {
            default_system: Some(sys.into())
        }
    );
    let p = llm.chat.render("hi");
    assert_eq!(p, format!("<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    let ids = llm.tokenizer.encode(&p, true).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    assert_eq!(llm.tokenizer.eos_ids(), &[2]);
    let hf = dir.path().join("hf");
    write_hf_dir(&hf, &cfg, &random_weights(&cfg, 1));
    assert_eq!(load(&hf, &opts()).unwrap().chat, llm.chat);
}

#[test]
fn title_embeddings_are_batch_invariant_and_saved_with_row_zero() {
    let m = build(&llama_config("llama", 2, true), 3, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer_json(dir.path(), &vocab());
    let cfg = Config::from_hf_value(&llama_config("llama", 2, true), Path::new("c")).unwrap();
    let tok = distillrec_llm::Tokenizer::from_hf_dir(dir.path(), &cfg).unwrap();
    let titles = [
        "the inn",
        "Toy Story (1995)",
        "at",
        "the weather in the west at noon",
    ];
    let cut = |max_tokens| TitleCut {
        max_tokens,
        what: "item",
    };
    let batched = title_embeddings(&m, &tok, &titles, 3, cut(64)).unwrap();
    let single = title_embeddings(&m, &tok, &titles, 1, cut(64)).unwrap();
    assert!(max_abs_diff(&batched, &single) < 1e-5);
    // a title far longer than the context embeds as its first tokens
    let long = "at ".repeat(200_000);
    let short = "at ".repeat(10);
    let a = title_embeddings(&m, &tok, &[&long], 1, cut(5)).unwrap();
    let b = title_embeddings(&m, &tok, &[&short], 1, cut(5)).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // a cut beyond the context is refused naming the item
    let err = title_embeddings(&m, &tok, &["x", &long], 1, cut(1_000_000))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("item 2 (`at at at") && err.contains("more than the model's context"),
        "{err}"
    );
    let ds = distillrec_data::Dataset {
        name: "t".into(),
        items: titles
            .iter()
            .enumerate()
            .map(|(i, t)| distillrec_data::Item {
                raw_id: i.to_string(),
                title: t.to_string(),
            })
            .collect(),
        sequences: vec![],
        train: vec![],
        valid: vec![],
        test: vec![],
        users_known: true,
        row_layout: false,
        provenance: serde_json::Value::Null,
    };
    let table = item_table(&m, &tok, &ds, 2, 64).unwrap();
    assert_eq!(table.dims(), &[5, 32]);
    assert_eq!(
        max_abs_diff(
            &table.narrow(0, 0, 1).unwrap(),
            &Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap()
        ),
        0.0
    );
    assert!(max_abs_diff(&table.narrow(0, 1, 4).unwrap(), &batched) < 1e-5);
    let path = dir.path().join("emb.safetensors");
    save_table(
        &path,
        &table,
        HashMap::from([("dataset_fingerprint".to_string(), "sha256:x".to_string())]),
    )
    .unwrap();
    let (back, meta) = load_table(&path).unwrap();
    assert_eq!(max_abs_diff(&back, &table), 0.0);
    assert_eq!(meta["dataset_fingerprint"], "sha256:x");
}

#[test]
fn sharded_safetensors_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 2, false);
    let w = random_weights(&cfg, 4);
    write_hf_dir(dir.path(), &cfg, &w);
    let single = load(dir.path(), &opts()).unwrap().model;
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    // three shards as Hugging Face writes them: layer 0, layer 1, the rest
    let shard_of = |k: &str| {
        if k.contains("layers.0.") {
            0
        } else if k.contains("layers.1.") {
            1
        } else {
            2
        }
    };
    let mut map = serde_json::Map::new();
    for (i, file) in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    .into_iter()
    .enumerate()
    {
        let part: Vec<_> = w.iter().filter(|(k, _)| shard_of(k) == i).collect();
        assert!(!part.is_empty(), "shard {i} is empty");
        let part: std::collections::BTreeMap<String, Tensor> = part
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for k in part.keys() {
            map.insert(k.clone(), file.into());
        }
        write_safetensors(&dir.path().join(file), &part);
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": map }).to_string(),
    )
    .unwrap();
    let sharded = load(dir.path(), &opts()).unwrap().model;
    let ids = ids_tensor(&[5, 9, 30]);
    assert_eq!(
        max_abs_diff(
            &single.forward(&ids, None, None).unwrap(),
            &sharded.forward(&ids, None, None).unwrap()
        ),
        0.0
    );
}

#[test]
fn bad_models_are_refused_with_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let cfg = llama_config("llama", 2, false);
    let w = random_weights(&cfg, 1);

    // Missing tensor.
    let d = root.path().join("missing");
    let mut w2 = w.clone();
    w2.remove("model.layers.1.mlp.down_proj.weight");
    write_hf_dir(&d, &cfg, &w2);
    let e = err_of(load(&d, &opts()));
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.1.mlp.down_proj.weight")
            && e.contains("missing"),
        "{e}"
    );

    // Wrong shape.
    let d = root.path().join("shape");
    let mut w2 = w.clone();
    w2.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Rng::new(1).tensor(&[32, 32], 1.0, 0.0),
    );
    write_hf_dir(&d, &cfg, &w2);
    let e = err_of(load(&d, &opts()));
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("[32, 32]")
            && e.contains("[16, 32]"),
        "{e}"
    );

    // Truncated safetensors.
    let d = root.path().join("trunc");
    write_hf_dir(&d, &cfg, &w);
    let f = d.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = err_of(load(&d, &opts()));
    assert!(e.contains("model.safetensors"), "{e}");

    // Truncated GGUF: the header parses, a tensor's data is cut off.
    let g = root.path().join("trunc.gguf");
    write_gguf(&g, &cfg, &w, "llama");
    let len = std::fs::metadata(&g).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&g)
        .unwrap()
        .set_len(len - 5000)
        .unwrap();
    let e = err_of(load(&g, &opts()));
    assert!(e.contains("trunc.gguf") && e.contains("tensor `"), "{e}");

    // Not a GGUF at all.
    let g = root.path().join("junk.gguf");
    std::fs::write(&g, b"definitely not a model").unwrap();
    let e = err_of(load(&g, &opts()));
    assert!(
        e.contains("junk.gguf") && e.contains("not a valid GGUF"),
        "{e}"
    );

    // Unsupported architectures.
    let d = root.path().join("neox");
    let mut c2 = cfg.clone();
    c2["model_type"] = "gpt_neox".into();
    write_hf_dir(&d, &c2, &w);
    let e = err_of(load(&d, &opts()));
    assert!(
        e.contains("config.json") && e.contains("unsupported") && e.contains("gpt_neox"),
        "{e}"
    );
    let mut c3 = cfg.clone();
    c3["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    write_hf_dir(&d, &c3, &w);
    let e = err_of(load(&d, &opts()));
    assert!(e.contains("yarn"), "{e}");
    let g = root.path().join("falcon.gguf");
    write_gguf(&g, &cfg, &w, "falcon");
    let e = err_of(load(&g, &opts()));
    assert!(
        e.contains("falcon.gguf") && e.contains("architecture `falcon`"),
        "{e}"
    );

    // Missing tokenizer.json.
    let d = root.path().join("notok");
    write_hf_dir(&d, &cfg, &w);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = err_of(load(&d, &opts()));
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");

    // Out-of-vocabulary ids are an error, not a panic.
    let m = load(
        &root.path().join("trunc.gguf").with_file_name("falcon.gguf"),
        &opts(),
    );
    assert!(m.is_err());
    let m = build(&cfg, 1, DType::F32);
    let e = err_of(m.forward(&ids_tensor(&[5, 100000]), None, None));
    assert!(e.contains("100000"), "{e}");
}

#[test]
fn rope_parameters_of_transformers_5_equal_the_legacy_keys() {
    let mut legacy = llama_config("llama", 1, false);
    legacy["rope_theta"] = 500000.0.into();
    legacy["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let mut v5 = llama_config("llama", 1, false);
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let a = Config::from_hf_value(&legacy, Path::new("a")).unwrap();
    let b = Config::from_hf_value(&v5, Path::new("b")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rope_theta, 500000.0);
    // Llama 3 scaling leaves high frequencies alone and divides low ones by `factor`.
    let plain = Config {
        rope_scaling: None,
        ..a.clone()
    }
    .rope_inv_freq();
    let scaled = a.rope_inv_freq();
    assert_eq!(scaled[0], plain[0]);
    let last = plain.len() - 1;
    assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
}
