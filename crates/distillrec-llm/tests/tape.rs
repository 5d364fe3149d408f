//! The explicit forward/backward (`tape`) against the composed candle path
//! (values and gradients, f64 and f32) and against finite differences (f64),
//! with left padding, a per-sample gate and adapters on all seven
//! projections; the blocked LM-head loss against candle's cross-entropy.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use distillrec_llm::adapters::LoraWeights;
use distillrec_llm::lora::{Adapter, AdapterCtx, Lora, MoeLora};
use distillrec_llm::model::Target;
use distillrec_llm::tape;
use distillrec_llm::Model;
use distillrec_llm::{lm_head_loss, AdapterSet, Dropout, Real};

const ALL: [Target; 7] = Target::ALL;

/// Three left-padded rows of 6 positions (0, 2 and 4 pads).
fn mask() -> Vec<Vec<bool>> {
    padded(6, &[0, 2, 4])
}

/// Left-padded rows of `t` positions with the given pad counts.
fn padded(t: usize, pads: &[usize]) -> Vec<Vec<bool>> {
    pads.iter()
        .map(|&p| (0..t).map(|j| j >= p).collect())
        .collect()
}

/// `v [b·t, h]` with the rows of pad positions set to zero: what the
/// explicit path returns for hidden states (it never computes a pad row),
/// and the loss weights a loss may use (none reads a pad position).
fn at_real<T: Real>(v: &[T], m: &[Vec<bool>], h: usize) -> Vec<T> {
    let keep = m.iter().flatten();
    v.chunks(h)
        .zip(keep)
        .flat_map(|(row, &real)| row.iter().map(move |&x| if real { x } else { T::zero() }))
        .collect()
}

fn values<T: Real>(n: usize, seed: u64, scale: f64) -> Vec<T> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| T::from_f64(r.next() as f64 * scale))
        .collect()
}

/// Adapters with non-zero `B` (a fresh set has zero `B`, which hides
/// gradient paths).
fn adapters<T: Real>(model: &Model, experts: usize) -> AdapterSet<T> {
    let mut a = AdapterSet::<T>::new(model, &ALL, experts, 4, 8.0, 3).unwrap();
    for (i, w) in a.weights_mut().enumerate() {
        w.b = values(w.b.len(), 100 + i as u64, 0.2);
    }
    a
}

fn softmax_rows(z: &[f64], e: usize) -> Vec<f64> {
    z.chunks(e)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = r.iter().map(|x| (x - m).exp()).sum();
            r.iter().map(move |x| (x - m).exp() / s).collect::<Vec<_>>()
        })
        .collect()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_close(name: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{name}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

/// The explicit path's hidden states and gradients, and the composed
/// path's, for `loss = Σ hidden ⊙ R`, in dtype `T`.
fn compare<T: Real>(model_type: &str, experts: usize, tol: f64) {
    compare_on::<T>(model_type, experts, tol, mask());
}

fn compare_on<T: Real>(model_type: &str, experts: usize, tol: f64, m: Vec<Vec<bool>>) {
    let cfg = llama_config(model_type, 2, false);
    let mut model = build(&cfg, 11, T::DTYPE);
    let h = model.config().hidden_size;
    let (b, t) = (m.len(), m[0].len());
    let set = adapters::<T>(&model, experts);
    let embeds: Vec<T> = values(b * t * h, 5, 1.0);
    let gate64 = softmax_rows(&values::<f64>(b * experts, 6, 2.0), experts);
    let gate: Vec<T> = gate64.iter().map(|&x| T::from_f64(x)).collect();
    let r: Vec<T> = at_real(&values(b * t * h, 7, 1.0), &m, h);

    let (hidden, tp) = tape::forward(&model, &set, &embeds, &m, Some(&gate)).unwrap();
    let grads = tape::backward(&model, &set, tp, &r).unwrap();

    // the composed candle path with the same adapters
    let vars = set.to_candle(&mut model).unwrap();
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::from_vec(embeds.clone(), (b, t, h), &dev).unwrap()).unwrap();
    let g = Var::from_tensor(&Tensor::from_vec(gate.clone(), (b, experts), &dev).unwrap()).unwrap();
    let mask_t = Tensor::from_vec(
        m.iter().flatten().map(|&x| x as u32).collect::<Vec<_>>(),
        (b, t),
        &dev,
    )
    .unwrap();
    let ctx = AdapterCtx {
        gate: Some(g.as_tensor()),
        train: true,
    };
    let hc = model
        .forward_hidden_with(x.as_tensor(), Some(&mask_t), None, &ctx)
        .unwrap();
    let hidden64: Vec<f64> = hidden
        .iter()
        .map(|v| candle_core::WithDType::to_f64(*v))
        .collect();
    // pad rows are not computed (zero); the real rows agree
    assert_close("hidden", &hidden64, &at_real(&to_f64(&hc), &m, h), tol);
    let rt = Tensor::from_vec(r.clone(), (b, t, h), &dev).unwrap();
    let loss = (hc * rt).unwrap().sum_all().unwrap();
    let gs = loss.backward().unwrap();
    let explicit: Vec<&LoraWeights<T>> = grads.adapters.weights().collect();
    assert_eq!(vars.len(), 2 * explicit.len());
    for (i, w) in explicit.iter().enumerate() {
        let ga = to_f64(gs.get(vars[2 * i].as_tensor()).expect("A has a gradient"));
        let gb = to_f64(
            gs.get(vars[2 * i + 1].as_tensor())
                .expect("B has a gradient"),
        );
        let a64: Vec<f64> =
            w.a.iter()
                .map(|v| candle_core::WithDType::to_f64(*v))
                .collect();
        let b64: Vec<f64> =
            w.b.iter()
                .map(|v| candle_core::WithDType::to_f64(*v))
                .collect();
        assert_close(&format!("dA[{i}]"), &a64, &ga, tol);
        assert_close(&format!("dB[{i}]"), &b64, &gb, tol);
    }
    let dg: Vec<f64> = grads
        .gate
        .unwrap()
        .iter()
        .map(|v| candle_core::WithDType::to_f64(*v))
        .collect();
    assert_close("dgate", &dg, &to_f64(gs.get(g.as_tensor()).unwrap()), tol);
    let dx: Vec<f64> = grads
        .embeds
        .iter()
        .map(|v| candle_core::WithDType::to_f64(*v))
        .collect();
    assert_close("dembeds", &dx, &to_f64(gs.get(x.as_tensor()).unwrap()), tol);
}

#[test]
fn explicit_path_matches_the_composed_path_in_f64() {
    compare::<f64>("llama", 2, 1e-9);
    compare::<f64>("qwen2", 4, 1e-9);
}

/// Rows longer than one attention query block (32), with pads spanning
/// whole blocks: the blocked causal attention reads the right keys.
#[test]
fn explicit_path_matches_the_composed_path_over_several_query_blocks() {
    compare_on::<f64>("llama", 2, 1e-9, padded(70, &[0, 20, 45]));
    compare_on::<f32>("qwen2", 2, 5e-4, padded(40, &[3, 33]));
}

#[test]
fn explicit_path_matches_the_composed_path_in_f32() {
    compare::<f32>("llama", 2, 2e-4);
    compare::<f32>("llama", 1, 2e-4);
}

/// `Σ hidden ⊙ R` through the explicit forward, in f64.
fn loss_of(
    model: &Model,
    set: &AdapterSet<f64>,
    x: &[f64],
    m: &[Vec<bool>],
    g: &[f64],
    r: &[f64],
) -> f64 {
    let (h, _) = tape::forward(model, set, x, m, Some(g)).unwrap();
    h.iter().zip(r).map(|(a, b)| a * b).sum()
}

#[test]
fn explicit_gradients_match_finite_differences() {
    let cfg = llama_config("llama", 2, false);
    let model = build(&cfg, 12, DType::F64);
    let h = model.config().hidden_size;
    let m = mask();
    let (b, t, e) = (m.len(), m[0].len(), 2);
    let mut set = adapters::<f64>(&model, e);
    let x: Vec<f64> = values(b * t * h, 8, 1.0);
    let g = softmax_rows(&values::<f64>(b * e, 9, 2.0), e);
    let r: Vec<f64> = at_real(&values(b * t * h, 10, 1.0), &m, h);
    let (_, tp) = tape::forward(&model, &set, &x, &m, Some(&g)).unwrap();
    let grads = tape::backward(&model, &set, tp, &r).unwrap();
    let eps = 1e-6;
    let check = |name: &str, analytic: f64, lp: f64, lm: f64| {
        let fd = (lp - lm) / (2.0 * eps);
        let err = (fd - analytic).abs() / fd.abs().max(analytic.abs()).max(1e-3);
        assert!(
            err < 1e-5,
            "{name}: backward {analytic} vs finite difference {fd}"
        );
    };
    // adapter entries in both layers, on an attention and an MLP projection
    let n_proj = set.weights().count();
    for p in [0, 3, 6, n_proj - 1] {
        for (which, idx) in [("A", 1usize), ("B", 2usize)] {
            let analytic = {
                let w = grads.adapters.weights().nth(p).unwrap();
                if which == "A" {
                    w.a[idx]
                } else {
                    w.b[idx]
                }
            };
            let shift = |set: &mut AdapterSet<f64>, delta: f64| {
                let w = set.weights_mut().nth(p).unwrap();
                let v = if which == "A" {
                    &mut w.a[idx]
                } else {
                    &mut w.b[idx]
                };
                *v += delta;
            };
            shift(&mut set, eps);
            let lp = loss_of(&model, &set, &x, &m, &g, &r);
            shift(&mut set, -2.0 * eps);
            let lm = loss_of(&model, &set, &x, &m, &g, &r);
            shift(&mut set, eps);
            check(&format!("d{which}[{p}][{idx}]"), analytic, lp, lm);
        }
    }
    let dg = grads.gate.as_ref().unwrap();
    for i in [0, 3, 5] {
        let (mut gp, mut gm) = (g.clone(), g.clone());
        gp[i] += eps;
        gm[i] -= eps;
        check(
            &format!("dgate[{i}]"),
            dg[i],
            loss_of(&model, &set, &x, &m, &gp, &r),
            loss_of(&model, &set, &x, &m, &gm, &r),
        );
    }
    // embeddings of real positions and of a padded one (which reaches
    // nothing a loss reads: its gradient is zero)
    for i in [h * 5 + 3, h * (t + 1) + 2, h * (2 * t + 5) + 7] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += eps;
        xm[i] -= eps;
        check(
            &format!("dembeds[{i}]"),
            grads.embeds[i],
            loss_of(&model, &set, &xp, &m, &g, &r),
            loss_of(&model, &set, &xm, &m, &g, &r),
        );
    }
}

#[test]
fn blocked_lm_head_loss_matches_cross_entropy() {
    let cfg = llama_config("llama", 1, true);
    let model = build(&cfg, 13, DType::F64);
    let h = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    let n = 70; // rows, a third of them without a target (the vocabulary chunks: loss.rs)
    let hidden: Vec<f64> = values(n * h, 14, 1.0);
    let pairs: Vec<(usize, u32)> = (0..n)
        .filter(|i| i % 3 != 1)
        .map(|i| (i, ((i * 7) % vocab) as u32))
        .collect();
    let (loss, dh) = lm_head_loss(&model, &hidden, &pairs).unwrap();
    let dev = Device::Cpu;
    let hv = Var::from_tensor(&Tensor::from_vec(hidden.clone(), (n, h), &dev).unwrap()).unwrap();
    let rows = Tensor::from_vec(
        pairs.iter().map(|p| p.0 as u32).collect::<Vec<_>>(),
        pairs.len(),
        &dev,
    )
    .unwrap();
    let logits = model
        .logits(
            &hv.as_tensor()
                .index_select(&rows, 0)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let targets: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let tl = Tensor::from_vec(targets, pairs.len(), &dev).unwrap();
    let ce = candle_nn::loss::cross_entropy(&logits, &tl).unwrap();
    let ref_loss = ce.to_scalar::<f64>().unwrap();
    assert!((loss - ref_loss).abs() < 1e-10, "{loss} vs {ref_loss}");
    let g = ce.backward().unwrap();
    assert_close(
        "dhidden",
        &dh,
        &to_f64(g.get(hv.as_tensor()).unwrap()),
        1e-10,
    );
    // rows without a target get no gradient
    assert!(dh[h..2 * h].iter().all(|&v| v == 0.0));
}

#[test]
fn one_expert_is_plain_lora() {
    let dev = Device::Cpu;
    let mut r = Rng::new(3);
    let a = r.tensor(&[4, 8], 0.5, 0.0);
    let b = r.tensor(&[6, 4], 0.5, 0.0);
    let x = r.tensor(&[2, 3, 8], 1.0, 0.0);
    let lora = Lora::from_tensors(&a, &b, 16.0).unwrap();
    let moe = MoeLora::from_tensors(&a, &b, 1, 16.0).unwrap();
    let ones = Tensor::ones((2, 1), DType::F32, &dev).unwrap();
    let ctx = AdapterCtx {
        gate: Some(&ones),
        train: true,
    };
    let d1 = lora.delta(&x, &ctx).unwrap();
    let d2 = moe.delta(&x, &ctx).unwrap();
    assert_eq!(max_abs_diff(&d1, &d2), 0.0);
}

/// `infer_last` (packed rows, last layer on the last rows only) against the
/// padded `infer` read at each row's last real position.
fn packed_last_rows_match<T: Real>(model_type: &str, m: Vec<Vec<bool>>, tol: f64) {
    let cfg = llama_config(model_type, 2, false);
    let model = build(&cfg, 11, T::DTYPE);
    let h = model.config().hidden_size;
    let (b, t) = (m.len(), m[0].len());
    let set = adapters::<T>(&model, 2);
    let embeds: Vec<T> = values(b * t * h, 5, 1.0);
    let gate64 = softmax_rows(&values::<f64>(b * 2, 6, 2.0), 2);
    let gate: Vec<T> = gate64.iter().map(|&x| T::from_f64(x)).collect();
    let full = tape::infer(&model, &set, &embeds, &m, Some(&gate)).unwrap();
    let expected: Vec<f64> = m
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            let j = row.iter().rposition(|&x| x).unwrap();
            full[(i * t + j) * h..(i * t + j + 1) * h]
                .iter()
                .map(|v| candle_core::WithDType::to_f64(*v))
                .collect::<Vec<_>>()
        })
        .collect();
    let last = tape::infer_last(&model, &set, &embeds, &m, Some(&gate)).unwrap();
    let last64: Vec<f64> = last
        .iter()
        .map(|v| candle_core::WithDType::to_f64(*v))
        .collect();
    assert_close(&format!("{model_type} last rows"), &last64, &expected, tol);
}

#[test]
fn packed_last_rows_equal_the_padded_pass() {
    // left padding over several query blocks, a row of one token
    let left = padded(70, &[0, 5, 40, 69]);
    packed_last_rows_match::<f64>("llama", left.clone(), 1e-10);
    packed_last_rows_match::<f64>("qwen2", left.clone(), 1e-10);
    packed_last_rows_match::<f32>("llama", left, 2e-5);
    // right padding, and a mask with a hole (takes the padded pass)
    let right: Vec<Vec<bool>> = [6, 3, 1]
        .iter()
        .map(|&n| (0..6).map(|j| j < n).collect())
        .collect();
    packed_last_rows_match::<f64>("llama", right, 1e-10);
    let holes = vec![vec![true, false, true, true], vec![false, true, true, true]];
    packed_last_rows_match::<f64>("llama", holes, 1e-10);
    // a prompt without a real token is refused, not read at a pad
    let cfg = llama_config("llama", 1, false);
    let model = build(&cfg, 1, DType::F64);
    let set = AdapterSet::<f64>::new(&model, &[Target::Q], 1, 2, 4.0, 0).unwrap();
    let h = model.config().hidden_size;
    let m = vec![vec![true, true], vec![false, false]];
    let e = tape::infer_last(&model, &set, &vec![0.5; 4 * h], &m, None).unwrap_err();
    assert!(e.to_string().contains("prompt 1 has no real token"), "{e}");
}

/// `pass` runs the same step on both paths: hidden states, every adapter's
/// gradient, the gate's and the embeddings' agree, with LoRA dropout (the
/// composed adapters draw the explicit path's masks) and without.
#[test]
fn both_paths_give_the_same_training_pass() {
    use distillrec_llm::pass::{self, Path};
    let cfg = llama_config("llama", 2, false);
    let model = build(&cfg, 11, DType::F32);
    let h = model.config().hidden_size;
    let m = mask();
    let (b, t) = (m.len(), m[0].len());
    let set = adapters::<f32>(&model, 2);
    let embeds: Vec<f32> = values(b * t * h, 5, 1.0);
    let gate: Vec<f32> = softmax_rows(&values::<f64>(b * 2, 6, 2.0), 2)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let r: Vec<f32> = at_real(&values(b * t * h, 7, 1.0), &m, h);
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut dropped_hidden = Vec::new();
    for p in [0.3, 0.0] {
        let dr = Dropout { p, seed: 9 };
        let run = |path| {
            let (hidden, ps) =
                pass::forward(path, &model, &set, &embeds, &m, Some(&gate), dr.into()).unwrap();
            (hidden, pass::backward(&model, &set, ps, &r).unwrap())
        };
        let (he, ge) = run(Path::Explicit);
        let (hc, gc) = run(Path::Composed);
        let hc = at_real(&hc, &m, h);
        assert_close(&format!("hidden p={p}"), &f64s(&hc), &f64s(&he), 2e-4);
        for (i, (we, wc)) in ge.adapters.weights().zip(gc.adapters.weights()).enumerate() {
            assert_close(&format!("dA[{i}] p={p}"), &f64s(&wc.a), &f64s(&we.a), 2e-4);
            assert_close(&format!("dB[{i}] p={p}"), &f64s(&wc.b), &f64s(&we.b), 2e-4);
        }
        let (dge, dgc) = (ge.gate.unwrap(), gc.gate.unwrap());
        assert_close(&format!("dgate p={p}"), &f64s(&dgc), &f64s(&dge), 2e-4);
        assert_close(
            &format!("dembeds p={p}"),
            &f64s(&gc.embeds),
            &f64s(&ge.embeds),
            2e-4,
        );
        dropped_hidden.push(he);
    }
    // the dropout masks were applied (the two settings differ)
    assert!(max_abs_diff_f32(&dropped_hidden[0], &dropped_hidden[1]) > 1e-3);
    // inference reads the same last rows on both paths
    let le = pass::infer_last(Path::Explicit, &model, &set, &embeds, &m, Some(&gate)).unwrap();
    let lc = pass::infer_last(Path::Composed, &model, &set, &embeds, &m, Some(&gate)).unwrap();
    assert_close("last rows", &f64s(&lc), &f64s(&le), 2e-4);
}

fn max_abs_diff_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn the_explicit_path_refuses_what_it_cannot_run() {
    let cfg = llama_config("llama", 1, false);
    let model = build(&cfg, 1, DType::F32);
    let set = AdapterSet::<f64>::new(&model, &[Target::Q], 1, 2, 4.0, 0).unwrap();
    let h = model.config().hidden_size;
    let e = tape::forward(&model, &set, &vec![0.0; 2 * h], &[vec![true; 2]], None)
        .err()
        .expect("f64 tape on an f32 model");
    assert!(e.to_string().contains("explicit training path"), "{e}");
    let e = AdapterSet::<f32>::new(&model, &[Target::Q], 3, 4, 4.0, 0).unwrap_err();
    assert!(e.to_string().contains("multiple of the 3 experts"), "{e}");
    let set = AdapterSet::<f32>::new(&model, &[Target::Q], 1, 2, 4.0, 0).unwrap();
    let e = tape::forward(&model, &set, &[0.0; 3], &[vec![true; 2]], None)
        .err()
        .expect("wrong embedding size");
    assert!(e.to_string().contains("embeddings hold 3 values"), "{e}");
}

/// The "same loss curve before and after": eight causal-LM steps on
/// the explicit path and on the composed candle path (same adapters, same
/// AdamW) give the same losses within float noise.
#[test]
fn explicit_and_composed_training_give_the_same_loss_curve() {
    use candle_nn::Optimizer;
    use distillrec_llm::bench::lm_loss;
    use distillrec_llm::bench::{Batch, LmStep};
    let model = build(&llama_config("llama", 2, false), 8, DType::F32);
    let ids: Vec<u32> = (0..24).map(|i| [5u32, 9, 30, 41, 7][i % 5]).collect();
    let batch = Batch {
        ids: vec![ids.clone()],
        mask: vec![vec![true; ids.len()]],
    };
    let mut step = LmStep::new(
        &model,
        &[Target::Q, Target::V, Target::Down],
        (1, 4, 8.0),
        1e-2,
        0,
    )
    .unwrap();
    let mut composed = model.clone();
    let vars = step.adapters.to_candle(&mut composed).unwrap();
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let ctx = AdapterCtx {
        gate: None,
        train: true,
    };
    let mut losses = Vec::new();
    for _ in 0..8 {
        let a = step.step(&model, &batch).unwrap();
        let l = lm_loss(&composed, &ids, &ctx).unwrap();
        let b = l.to_scalar::<f32>().unwrap() as f64;
        opt.backward_step(&l).unwrap();
        assert!(
            (a - b).abs() < 1e-4 * b.abs(),
            "explicit {a} vs composed {b}"
        );
        losses.push(a);
    }
    assert!(losses[7] < 0.8 * losses[0], "the loss falls: {losses:?}");
}

#[test]
fn lora_dropout_gradients_match_finite_differences() {
    let cfg = llama_config("llama", 2, false);
    let model = build(&cfg, 12, DType::F64);
    let h = model.config().hidden_size;
    let m = mask();
    let (b, t, e) = (m.len(), m[0].len(), 2);
    let set = adapters::<f64>(&model, e);
    let x: Vec<f64> = values(b * t * h, 8, 1.0);
    let g = softmax_rows(&values::<f64>(b * e, 9, 2.0), e);
    let r: Vec<f64> = values(b * t * h, 10, 1.0);
    let drop = Dropout { p: 0.3, seed: 77 };
    let loss = |set: &AdapterSet<f64>, x: &[f64]| -> f64 {
        let (h, _) = tape::forward_dropout(&model, set, x, &m, Some(&g), drop).unwrap();
        h.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    // the masks change the output, and p = 0 is the plain forward
    let plain = loss_of(&model, &set, &x, &m, &g, &r);
    assert!((loss(&set, &x) - plain).abs() > 1e-6);
    let (h0, _) =
        tape::forward_dropout(&model, &set, &x, &m, Some(&g), Dropout { p: 0.0, seed: 77 })
            .unwrap();
    let hp: f64 = h0.iter().zip(&r).map(|(a, b)| a * b).sum();
    assert_eq!(hp, plain);
    let (_, tp) = tape::forward_dropout(&model, &set, &x, &m, Some(&g), drop).unwrap();
    let grads = tape::backward(&model, &set, tp, &r).unwrap();
    let eps = 1e-6;
    let check = |name: &str, analytic: f64, lp: f64, lm: f64| {
        let fd = (lp - lm) / (2.0 * eps);
        let err = (fd - analytic).abs() / fd.abs().max(analytic.abs()).max(1e-3);
        assert!(
            err < 1e-5,
            "{name}: backward {analytic} vs finite difference {fd}"
        );
    };
    let n_proj = set.weights().count();
    for p in [0, 2, n_proj - 1] {
        for idx in [1usize, 5] {
            let analytic = grads.adapters.weights().nth(p).unwrap().a[idx];
            let (mut sp, mut sm) = (set.clone(), set.clone());
            sp.weights_mut().nth(p).unwrap().a[idx] += eps;
            sm.weights_mut().nth(p).unwrap().a[idx] -= eps;
            check(
                &format!("dA[{p}][{idx}]"),
                analytic,
                loss(&sp, &x),
                loss(&sm, &x),
            );
        }
    }
    for i in [h * 5 + 3, h * (2 * t + 5) + 7, 11] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += eps;
        xm[i] -= eps;
        check(
            &format!("dembeds[{i}]"),
            grads.embeds[i],
            loss(&set, &xp),
            loss(&set, &xm),
        );
    }
}

/// Adapters attached for inference (`to_candle_frozen`) give the same
/// hidden states as trainable ones but build no autograd graph, even with
/// a gate that is a variable (the teacher's gate comes out of its gate
/// network's graph): otherwise every layer's intermediates stay alive
/// until the output is dropped (1.5 GB in a 320-token SmolLM2 prefill).
#[test]
fn frozen_adapters_keep_no_graph_and_match_trainable_ones() {
    let cfg = llama_config("llama", 2, false);
    let (b, t) = (2, 5);
    let dev = Device::Cpu;
    let run = |frozen: bool| {
        let mut model = build(&cfg, 11, DType::F32);
        let h = model.config().hidden_size;
        let set = adapters::<f32>(&model, 2);
        if frozen {
            set.to_candle_frozen(&mut model).unwrap();
        } else {
            set.to_candle(&mut model).unwrap();
        }
        let x = Tensor::from_vec(values::<f32>(b * t * h, 5, 1.0), (b, t, h), &dev).unwrap();
        let g = Var::from_vec(vec![0.3f32, 0.7, 0.9, 0.1], (b, 2), &dev).unwrap();
        let ctx = AdapterCtx {
            gate: Some(g.as_tensor()),
            train: false,
        };
        model.forward_hidden_with(&x, None, None, &ctx).unwrap()
    };
    let (frozen, trainable) = (run(true), run(false));
    assert!(trainable.track_op(), "trainable adapters build a graph");
    assert!(!frozen.track_op(), "frozen adapters must build no graph");
    // without a graph the inference kernels run (same values, other order)
    assert_close("hidden", &to_f64(&frozen), &to_f64(&trainable), 1e-6);
}
