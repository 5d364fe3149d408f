//! The teacher on a tiny random-weight backbone and a small synthetic
//! dataset with a real (briefly trained) student: gradients reach every
//! trainable tensor, gates differ between users, placeholders carry the
//! projector's output, prompts never leak the target, an interrupted run
//! resumes to the same metrics, checkpoints refuse another backbone or
//! student, and sharded caches merge into the one-go cache.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
mod common;
mod fixture;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use distillrec_cache::{ShardSpec, TeacherCache};
use distillrec_teacher::checkpoint;
use distillrec_teacher::infer::{cache_from_teacher, shard_range, InferOptions};
use distillrec_teacher::model::{standardised, Teacher};
use distillrec_teacher::prompt::Tok;
use distillrec_teacher::setup::assemble;
use distillrec_teacher::train::train;

use fixture::*;

#[test]
fn gradients_reach_every_trainable_tensor_and_gates_differ_between_users() {
    let f = fixture();
    let cfg = config(&[
        "teacher.objective=\"both\"",
        "teacher.targets=[\"q\", \"v\", \"down\"]",
        "teacher.student_prior=true",
    ]);
    let mut a = teacher(&f, &cfg, "t");
    // fresh B is zero, which hides the A path: give every tensor a value
    let mut rng = common::Rng::new(9);
    for p in a.teacher.params_mut() {
        if p.iter().all(|&x| x == 0.0) {
            p.iter_mut().for_each(|x| *x = 0.05 * rng.next());
        }
    }
    let rows: Vec<_> = f.ds.train.iter().take(5).collect();
    let out = a.teacher.micro_step(&f.ds, &rows, 0, 1.0, 1).unwrap();
    assert!(out.loss.is_finite() && out.loss > 0.0);
    let names: Vec<String> = a
        .teacher
        .named_params()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names.len(), out.grads.len());
    for (n, g) in names.iter().zip(&out.grads) {
        assert!(g.iter().any(|&x| x != 0.0), "no gradient reaches {n}");
        assert!(
            g.iter().all(|x| x.is_finite()),
            "non-finite gradient in {n}"
        );
    }
    // checkpoint tensor names are a file format: pinned spelling and order
    let adapters: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("adapter."))
        .collect();
    let layers = adapters.len() / 6;
    assert!(layers >= 2, "{adapters:?}");
    let pinned: Vec<String> = (0..layers)
        .flat_map(|li| {
            ["q", "v", "down"]
                .into_iter()
                .flat_map(move |t| ["lora_A", "lora_B"].map(|m| format!("adapter.{li}.{t}.{m}")))
        })
        .collect();
    assert_eq!(adapters, pinned);
    for want in [
        "adapter.1.down.lora_A",
        "projector.0.weight",
        "gate.2.bias",
        "prior.cue",
        "head.map",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not trained: {names:?}"
        );
    }
    let g = a.teacher.gates(&f.ds, &rows).unwrap().unwrap();
    assert_eq!(g.len(), 5 * 2);
    assert!((g[0] + g[1] - 1.0).abs() < 1e-5);
    assert!(
        (g[0] - g[2]).abs() > 1e-6,
        "two users got the same gate {g:?}"
    );
}

#[test]
fn placeholders_carry_the_projector_output_and_prompts_never_leak_the_target() {
    let f = fixture();
    let cfg = config(&[]);
    let a = teacher(&f, &cfg, "t");
    let t = &a.teacher;
    let h = t.llm.model.config().hidden_size;
    let row = &f.ds.valid[0];
    let (embeds, slots) = t.prompt_inputs(&f.ds, row).unwrap();
    let hist = f.ds.history(row);
    assert_eq!(slots.len(), hist.len().min(4));
    for &(pos, item) in &slots {
        assert_eq!(
            &embeds[pos * h..(pos + 1) * h],
            &t.projected(item).unwrap()[..]
        );
        assert!(hist.contains(&item));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for row in &f.ds.train {
        let (hist, target) = (f.ds.history(row), f.ds.target(row));
        let c = t.prompter.draw_candidates(hist, target, &mut rng);
        assert_eq!(c.len(), 5);
        assert_eq!(c.iter().filter(|&&x| x == target).count(), 1);
        // the other candidates come from outside the history (the target
        // itself may repeat an earlier item in data with repeats)
        assert!(
            c.iter()
                .filter(|&&x| x != target)
                .all(|x| !hist.contains(x)),
            "candidate from the history"
        );
        let p = t.prompter.generative(hist, &c, target, true, &mut rng);
        let shown: Vec<u32> = p.input.iter().filter_map(|x| x.item()).collect();
        // history items then candidates; the target only as a candidate
        let n_hist = hist.len().min(4);
        assert_eq!(&shown[..n_hist], &hist[hist.len() - n_hist..]);
        assert_eq!(&shown[n_hist..], &c[..]);
        // each candidate's title tokens are marked as its own, and only they
        let marked: Vec<(u32, u32)> = p
            .input
            .iter()
            .filter_map(|x| match *x {
                Tok::CandText(id, it) => Some((id, it)),
                _ => None,
            })
            .collect();
        let titles: Vec<(u32, u32)> = c
            .iter()
            .flat_map(|&it| t.prompter.title(it).iter().map(move |&id| (id, it)))
            .collect();
        assert_eq!(marked, titles);
        let r = t.prompter.ranking(hist, true, &mut rng);
        assert!(!r.input.contains(&Tok::Item(target)) || hist.contains(&target));
        assert!(!r.input.iter().any(|t| matches!(t, Tok::Cand(_))));
        assert!(r.input.len() < 64, "prompt of {} positions", r.input.len());
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_metrics() {
    let f = fixture();
    let cfg = config(&[]);
    let mut a = teacher(&f, &cfg, "t");
    let whole = f.dir.path().join("whole");
    let done = {
        let tt = trainer(&f, &cfg, &a, &whole, None);
        train(&mut a.teacher, &tt, "k")
    }
    .unwrap();
    assert_eq!(done.epochs, 2);
    let cut = f.dir.path().join("cut");
    let mut b = teacher(&f, &cfg, "t");
    let e = {
        let tt = trainer(&f, &cfg, &b, &cut, Some(1));
        train(&mut b.teacher, &tt, "k")
    }
    .unwrap_err();
    assert!(e.to_string().contains("halted after epoch 1"), "{e}");
    let mut c = teacher(&f, &cfg, "t");
    let resumed = {
        let tt = trainer(&f, &cfg, &c, &cut, None);
        train(&mut c.teacher, &tt, "k")
    }
    .unwrap();
    assert_eq!(resumed.resumed_after, 1);
    let strip = |h: &[std::collections::BTreeMap<String, f64>]| -> Vec<Vec<(String, f64)>> {
        h.iter()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.contains("secs") && !k.contains("per_sec"))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .collect()
    };
    assert_eq!(strip(&resumed.history), strip(&done.history));
    assert_eq!(
        a.teacher
            .named_params()
            .iter()
            .map(|x| x.2.to_vec())
            .collect::<Vec<_>>(),
        c.teacher
            .named_params()
            .iter()
            .map(|x| x.2.to_vec())
            .collect::<Vec<_>>()
    );

    // the state of another run (another key) is refused, not silently
    // trained over, and left as it was
    let state = cut.join("checkpoints/state.json");
    let kept = std::fs::read(&state).unwrap();
    let mut e = teacher(&f, &cfg, "t");
    let err = {
        let tt = trainer(&f, &cfg, &e, &cut, None);
        train(&mut e.teacher, &tt, "another run")
    }
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: this run directory holds training state",
            state.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), kept);

    // another backbone, another student: refused in one line
    let best = whole.join("checkpoints/best.safetensors");
    let other_backbone = write_backbone(f.dir.path(), 6);
    let mut d = assemble(
        &cfg.teacher,
        cfg.seed,
        &other_backbone,
        &f.student,
        &f.ds,
        &f.reference,
        (&f.dir.path().join("t6"), true),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let e = checkpoint::load_into(
        &best,
        &mut d.teacher,
        &d.backbone.sha256,
        &d.student.sha256,
        &f.reference.fingerprint,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("belongs to the backbone") && !e.contains('\n'),
        "{e}"
    );
    let mut scfg = config(&[]);
    scfg.seed = 7;
    let other_student = train_a_student(&f.ds, &f.reference, &scfg, &f.dir.path().join("student7"));
    let mut s = assemble(
        &cfg.teacher,
        cfg.seed,
        &f.backbone,
        &other_student,
        &f.ds,
        &f.reference,
        (&f.dir.path().join("t"), false),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let e = checkpoint::load_into(
        &best,
        &mut s.teacher,
        &s.backbone.sha256,
        &s.student.sha256,
        &f.reference.fingerprint,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("belongs to the student") && !e.contains('\n'),
        "{e}"
    );
    // a ranking head trained without the student's scores is refused by a
    // teacher that would add them
    let pcfg = config(&["teacher.student_prior=true"]);
    let mut p = teacher(&f, &pcfg, "t");
    let e = checkpoint::load_into(
        &best,
        &mut p.teacher,
        &p.backbone.sha256,
        &p.student.sha256,
        &f.reference.fingerprint,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("trained without the student's scores") && !e.contains('\n'),
        "{e}"
    );
}

/// The composed candle path (`teacher.path = "composed"`, the computation
/// the explicit path replaced) trains the same teacher: the same loss curve
/// and the same adapters within float noise, with LoRA dropout, a gate and
/// both objectives.
#[test]
fn the_composed_path_trains_the_same_teacher() {
    let f = fixture();
    let mut runs = Vec::new();
    for path in ["auto", "composed"] {
        let cfg = config(&[
            "teacher.objective=\"both\"",
            "train.teacher.max_epochs=3",
            &format!("teacher.path=\"{path}\""),
        ]);
        let mut a = teacher(&f, &cfg, "t");
        let out = f.dir.path().join(format!("path-{path}"));
        let done = {
            let tt = trainer(&f, &cfg, &a, &out, None);
            train(&mut a.teacher, &tt, "k")
        }
        .unwrap();
        runs.push((a.teacher.path, done.history, a.teacher.adapters.clone()));
    }
    let (explicit, composed) = (&runs[0], &runs[1]);
    assert_eq!(explicit.0, distillrec_llm::pass::Path::Explicit);
    assert_eq!(composed.0, distillrec_llm::pass::Path::Composed);
    assert_eq!(explicit.1.len(), 3);
    for (e, c) in explicit.1.iter().zip(&composed.1) {
        let (le, lc) = (e["train_loss"], c["train_loss"]);
        assert!((le - lc).abs() <= 1e-4 * le.abs(), "loss {le} vs {lc}");
    }
    let mut moved = 0f32;
    for (we, wc) in explicit.2.weights().zip(composed.2.weights()) {
        for (x, y) in we.b.iter().zip(&wc.b) {
            assert!((x - y).abs() <= 1e-4 + 1e-3 * x.abs(), "B {x} vs {y}");
            moved = moved.max(x.abs());
        }
    }
    assert!(moved > 1e-3, "the adapters trained");
}

/// A backbone the explicit path cannot run (OPT: layer norms, learnt
/// positions, biases) trains and scores on the composed path.
#[test]
fn an_opt_backbone_trains_on_the_composed_path() {
    let f = fixture();
    let opt = f.dir.path().join("opt");
    let mut ocfg = common::opt_config(true, 32);
    ocfg["max_position_embeddings"] = 256.into();
    common::write_hf_dir(&opt, &ocfg, &common::random_weights(&ocfg, 8));
    let cfg = config(&["teacher.objective=\"both\""]);
    let mut a = assemble(
        &cfg.teacher,
        cfg.seed,
        &opt,
        &f.student,
        &f.ds,
        &f.reference,
        (&f.dir.path().join("opt-titles"), true),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(a.teacher.path, distillrec_llm::pass::Path::Composed);
    let before = a.teacher.adapters.clone();
    let out = f.dir.path().join("opt-run");
    let done = {
        let tt = trainer(&f, &cfg, &a, &out, None);
        train(&mut a.teacher, &tt, "k")
    }
    .unwrap();
    assert_eq!(done.epochs, 2);
    assert!(done.history.iter().all(|h| h["train_loss"].is_finite()));
    assert_ne!(a.teacher.adapters, before, "the adapters trained");
    // forcing the explicit path onto it is refused in one line
    let e = distillrec_llm::pass::Path::Explicit
        .check(&a.teacher.llm.model)
        .unwrap_err();
    assert!(e.to_string().contains("use the composed path"), "{e}");
}

#[test]
fn sharded_caches_merge_into_the_one_go_cache() {
    let f = fixture();
    let cfg = config(&[]);
    let mut a = teacher(&f, &cfg, "t");
    let rows: Vec<usize> = (0..f.ds.train.len()).step_by(3).collect();
    let opts = InferOptions {
        k: 4,
        mask_history: true,
        source: "test".into(),
        progress: false,
    };
    let (whole, _) = cache_from_teacher(
        &mut a.teacher,
        &f.ds,
        &f.reference.fingerprint,
        &rows,
        &opts,
    )
    .unwrap();
    for r in 0..whole.rows() {
        let d = whole.row_distances(r);
        assert!(
            d.windows(2).all(|w| w[0] <= w[1]),
            "row {r} not in rank order: {d:?}"
        );
    }
    let mut shards = Vec::new();
    for index in 0..2 {
        let r = shard_range(
            &ShardSpec { index, count: 2 },
            rows.len(),
            cfg.teacher.infer_batch,
        );
        assert_eq!(r.start % cfg.teacher.infer_batch, 0);
        shards.push(
            cache_from_teacher(
                &mut a.teacher,
                &f.ds,
                &f.reference.fingerprint,
                &rows[r],
                &opts,
            )
            .unwrap()
            .0,
        );
    }
    let merged = TeacherCache::merge(shards, &f.reference.fingerprint, &f.ds).unwrap();
    let (d1, d2) = (f.dir.path().join("c1"), f.dir.path().join("c2"));
    whole.save(&d1).unwrap();
    merged.save(&d2).unwrap();
    for e in std::fs::read_dir(&d1).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            std::fs::read(d1.join(&name)).unwrap() == std::fs::read(d2.join(&name)).unwrap(),
            "{name:?} differs"
        );
    }
    let e = whole
        .check_against("another-fingerprint", &f.ds)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fingerprint") || e.contains("dataset"), "{e}");
}

#[test]
fn with_the_student_prior_a_fresh_teacher_scores_near_the_student() {
    let f = fixture();
    let cfg = config(&["teacher.student_prior=true"]);
    let a = teacher(&f, &cfg, "t");
    let rows: Vec<_> = f.ds.valid.iter().take(6).collect();
    let table = a.teacher.eval_table().unwrap();
    let got = a.teacher.rank_scores(&f.ds, &rows, &table).unwrap();
    let hist: Vec<&[u32]> = rows.iter().map(|r| f.ds.history(r)).collect();
    let want = a.teacher.student.score_histories(&hist).unwrap();
    let w = f.ds.num_items() + 1;
    let mut spread = 0f32;
    for (g, s) in got.chunks(w).zip(want.chunks(w)) {
        assert!(g[0] < -1e8, "padding column not masked");
        for (x, y) in g[1..].iter().zip(&s[1..]) {
            // the LLM head adds a cosine times its initial scale 1
            assert!((x - y).abs() <= 1.0 + 1e-4, "{x} vs student {y}");
            spread = spread.max((x - y).abs());
        }
    }
    assert!(spread > 1e-3, "the LLM head added nothing");
}

#[test]
fn the_curriculum_moves_from_text_only_to_hybrid_prompts() {
    let f = fixture();
    let cfg = config(&["teacher.curriculum=true"]);
    let a = teacher(&f, &cfg, "t");
    let rows: Vec<_> = f.ds.train.iter().take(40).collect();
    let hybrid = |p: f64| -> usize {
        a.teacher
            .train_prompts(&f.ds, &rows, true, 0, p)
            .iter()
            .filter(|p| p.input.iter().any(|t| t.item().is_some()))
            .count()
    };
    assert_eq!(hybrid(0.0), 0);
    assert_eq!(hybrid(1.0), 40);
    let half = hybrid(0.5);
    assert!((8..=32).contains(&half), "{half} of 40 hybrid at p = 0.5");
}

#[test]
fn a_generative_teacher_answers_and_grounds_its_answers() {
    let f = fixture();
    let cfg = config(&["teacher.objective=\"generative\""]);
    let mut a = teacher(&f, &cfg, "t");
    let g = distillrec_teacher::evaluate::eval_generative(
        &mut a.teacher,
        &f.ds,
        distillrec_data::SplitName::Valid,
        &cfg.eval,
        Some(3),
    )
    .unwrap();
    assert_eq!(g.rows, 3);
    assert!((0.0..=1.0).contains(&g.valid_ratio) && g.hr1 <= g.valid_ratio);
    // every row's answer is kept, and the ratios are counted from them
    assert_eq!(g.answers.len(), 3);
    let valid = g.answers.iter().filter(|a| a.named.len() == 1).count();
    let correct = g.answers.iter().filter(|a| a.correct).count();
    assert_eq!(g.valid_ratio, valid as f64 / 3.0);
    assert_eq!(g.hr1, correct as f64 / 3.0);
    for (ans, row) in g.answers.iter().zip(&f.ds.valid) {
        assert_eq!(ans.key, row.key);
        assert_eq!(ans.target, f.ds.target(row));
        assert_eq!(ans.candidates.len(), 5);
        assert!(ans.candidates.contains(&ans.target));
        assert!(ans.named.iter().all(|c| ans.candidates.contains(c)));
        assert_eq!(ans.correct, ans.named == [ans.target]);
        // the student's pick is its highest-scored candidate
        let s = a
            .teacher
            .student
            .score_histories(&[f.ds.history(row)])
            .unwrap();
        let best = ans
            .candidates
            .iter()
            .map(|&c| s[c as usize])
            .fold(f32::MIN, f32::max);
        assert!(ans.candidates.contains(&ans.student_pick));
        assert_eq!(s[ans.student_pick as usize], best);
    }
    let rows: Vec<usize> = (0..6).collect();
    let opts = InferOptions {
        k: 4,
        mask_history: true,
        source: "test".into(),
        progress: false,
    };
    let (cache, _) = cache_from_teacher(
        &mut a.teacher,
        &f.ds,
        &f.reference.fingerprint,
        &rows,
        &opts,
    )
    .unwrap();
    assert_eq!(cache.manifest.distance, distillrec_cache::DistanceKind::L2);
    for r in 0..cache.rows() {
        let d = cache.row_distances(r);
        assert!(
            d.windows(2).all(|w| w[0] <= w[1])
                && d.iter().all(|&x| (0.0..=2.0 + 1e-5).contains(&x)),
            "{d:?}"
        );
        let hist = f.ds.history(&f.ds.train[r]);
        assert!(
            cache.row_items(r).iter().all(|i| !hist.contains(i)),
            "history not masked"
        );
    }
    // the adapters are detached again: the composed path is plain
    assert!((0..a.teacher.llm.model.layers.len())
        .all(|l| a.teacher.llm.model.layers[l].attn.q_proj.is_plain()));
}

/// `answer_scored` gives `answer`'s answer and, from the student pass that
/// fed the gate and the cue, the student's scores of the row exactly as
/// `score_histories` computes them (generative evaluation reads the
/// student's pick from them instead of running the student twice per row).
#[test]
fn one_student_pass_gives_the_answer_and_the_students_scores() {
    let f = fixture();
    let cfg = config(&[
        "teacher.objective=\"generative\"",
        "teacher.student_prior=true",
    ]);
    let mut a = teacher(&f, &cfg, "t");
    a.teacher.attach().unwrap();
    for row in f.ds.valid.iter().take(2) {
        let target = f.ds.target(row);
        let cands: Vec<u32> = (1..=f.ds.num_items() as u32)
            .filter(|&c| c != target)
            .take(3)
            .chain([target])
            .collect();
        let (answer, scores) = a.teacher.answer_scored(&f.ds, row, &cands).unwrap();
        assert_eq!(answer, a.teacher.answer(&f.ds, row, &cands).unwrap());
        let want = a
            .teacher
            .student
            .score_histories(&[f.ds.history(row)])
            .unwrap();
        assert_eq!(scores, want);
    }
    a.teacher.detach().unwrap();
}

/// With `teacher.student_prior`, a generative teacher's candidate
/// placeholders carry the projector's output plus the cue vector times the
/// frozen student's score of that candidate, standardised over the
/// prompt's candidates; history placeholders carry the projector's output
/// alone; and a checkpoint trained with the cue is refused by a teacher
/// configured without it.
#[test]
fn candidate_placeholders_carry_the_students_standardised_scores() {
    let f = fixture();
    let cfg = config(&[
        "teacher.objective=\"generative\"",
        "teacher.student_prior=true",
        "train.teacher.max_epochs=1",
    ]);
    let mut a = teacher(&f, &cfg, "t");
    let cue_at = a
        .teacher
        .named_params()
        .iter()
        .position(|(n, _, _)| n == "prior.cue")
        .expect("no prior.cue among the trained tensors");
    // the same prompts without the cue: what the cue adds, position by position
    let cue = a.teacher.params_mut()[cue_at].to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let rows: Vec<_> = f.ds.valid.iter().take(6).collect();
    a.teacher.params_mut()[cue_at].fill(0.0);
    let bare: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            let hist = f.ds.history(row);
            let cands = a
                .teacher
                .prompter
                .draw_candidates(hist, f.ds.target(row), &mut rng);
            a.teacher
                .answer_prompt_inputs(&f.ds, row, &cands)
                .unwrap()
                .0
        })
        .collect();
    a.teacher.params_mut()[cue_at].copy_from_slice(&cue);
    let t = &a.teacher;
    let h = t.llm.model.config().hidden_size;
    assert_eq!(cue.len(), h);
    assert!(cue.iter().any(|&x| x != 0.0));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut tops = 0;
    for (row, bare) in rows.iter().zip(&bare) {
        let hist = f.ds.history(row);
        let cands = t.prompter.draw_candidates(hist, f.ds.target(row), &mut rng);
        let (embeds, slots) = t.answer_prompt_inputs(&f.ds, row, &cands).unwrap();
        let (_, scores) = t.student.represent_and_score(&[hist]).unwrap();
        let s: Vec<f32> = cands.iter().map(|&c| scores[c as usize]).collect();
        let z = standardised(&s);
        let mean = z.iter().sum::<f32>() / z.len() as f32;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / z.len() as f32;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "{z:?}");
        let best = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j]));
        tops += usize::from(best(&z) == best(&s));
        let n_hist = hist.len().min(4);
        assert_eq!(slots.len(), n_hist + cands.len());
        for (i, &(pos, item)) in slots.iter().enumerate() {
            let p = t.projected(item).unwrap();
            let want: Vec<f32> = if i < n_hist {
                p
            } else {
                assert_eq!(item, cands[i - n_hist]);
                let zk = z[i - n_hist];
                p.iter().zip(&cue).map(|(x, c)| x + zk * c).collect()
            };
            let got = &embeds[pos * h..(pos + 1) * h];
            let err = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "placeholder {i} off by {err}");
        }
        // the cue marks each candidate's title tokens and placeholder with
        // its weight, and nothing else
        let mut added = vec![0f32; embeds.len()];
        for (k, &(pos, item)) in slots[n_hist..].iter().enumerate() {
            for p in pos - t.prompter.title(item).len()..=pos {
                for (a, c) in added[p * h..(p + 1) * h].iter_mut().zip(&cue) {
                    *a = z[k] * c;
                }
            }
        }
        let err = embeds
            .iter()
            .zip(bare)
            .zip(&added)
            .map(|((e, b), a)| (e - b - a).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "the cue's marks are off by {err}");
    }
    assert_eq!(tops, 6, "the cue's largest weight is not the student's top");

    // the cue's gradient (Σ z · d embedding) against central differences
    // of the loss, without dropout
    let nd_cfg = config(&[
        "teacher.objective=\"generative\"",
        "teacher.student_prior=true",
        "teacher.lora_dropout=0.0",
    ]);
    let mut nd = teacher(&f, &nd_cfg, "t");
    let ci = nd
        .teacher
        .named_params()
        .iter()
        .position(|(n, _, _)| n == "prior.cue")
        .unwrap();
    let rows: Vec<_> = f.ds.train.iter().take(4).collect();
    let g = nd
        .teacher
        .micro_step(&f.ds, &rows, 0, 1.0, 1)
        .unwrap()
        .grads[ci]
        .clone();
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&i, &j| g[j].abs().total_cmp(&g[i].abs()));
    assert!(g[order[0]].abs() > 1e-4, "the cue gets no gradient");
    for &i in &order[..3] {
        let eps = 1e-2f32;
        let mut loss_at = |d: f32| {
            nd.teacher.params_mut()[ci][i] += d;
            let l = nd.teacher.micro_step(&f.ds, &rows, 0, 1.0, 1).unwrap().loss;
            nd.teacher.params_mut()[ci][i] -= d;
            l
        };
        let fd = ((loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64)) as f32;
        assert!(
            (fd - g[i]).abs() <= 0.05 * g[i].abs() + 1e-4,
            "cue[{i}]: gradient {} vs central difference {fd}",
            g[i]
        );
    }

    // a plain generative teacher has no cue; the trained cue checkpoint is
    // refused by it in one line
    let plain_cfg = config(&["teacher.objective=\"generative\""]);
    let mut plain = teacher(&f, &plain_cfg, "t");
    assert!(plain
        .teacher
        .named_params()
        .iter()
        .all(|(n, _, _)| n != "prior.cue"));
    let out = f.dir.path().join("cue");
    {
        let tt = trainer(&f, &cfg, &a, &out, None);
        train(&mut a.teacher, &tt, "k").unwrap();
    }
    let e = checkpoint::load_into(
        &out.join("checkpoints/best.safetensors"),
        &mut plain.teacher,
        &plain.backbone.sha256,
        &plain.student.sha256,
        &f.reference.fingerprint,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("trained with the candidate cue") && e.contains("student_prior = true"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // a cue from checkpoint v1 marked the placeholders only: refused
    let best = out.join("checkpoints/best.safetensors");
    let load = |t: &mut Teacher| {
        checkpoint::load_into(
            &best,
            t,
            &a.backbone.sha256,
            &a.student.sha256,
            &f.reference.fingerprint,
        )
        .map(|_| ())
    };
    load(&mut a.teacher).unwrap();
    let mpath = checkpoint::manifest_path(&best);
    let text = std::fs::read_to_string(&mpath).unwrap();
    let v1 = text.replacen(
        &format!("\"version\": {}", checkpoint::VERSION),
        "\"version\": 1",
        1,
    );
    assert_ne!(v1, text);
    std::fs::write(&mpath, v1).unwrap();
    let e = load(&mut a.teacher).unwrap_err().to_string();
    assert!(
        e.contains("marks the placeholders only") && !e.contains('\n'),
        "{e}"
    );
}
