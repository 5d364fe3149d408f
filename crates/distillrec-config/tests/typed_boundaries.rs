//! The config's closed sets are enums with one spelling each: every name
//! round-trips through TOML, an unknown name is refused naming the key and
//! the valid names, `budget = 1` is ambiguous, and keys that nothing reads
//! are refused; the LLM teacher's keys are typed and checked.

use distillrec_config::{AdapterTarget, Budget, Config, Metric, MetricKind, TeacherObjective};

fn load(text: &str, sets: &[&str]) -> Result<Config, String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_toml_str(text, "t.toml", &sets).map_err(|e| e.to_string())
}

/// `key = "name"` for every documented name of `key`: it loads, the loaded
/// value prints as that name, and the resolved config writes it back.
fn round_trips(key: &str, names: &[&str], got: impl Fn(&Config) -> String) {
    let (group, leaf) = key.rsplit_once('.').unwrap();
    for name in names {
        let mut sets = vec![format!("{key}=\"{name}\"")];
        if key == "dataset.kind" && *name != "synthetic" {
            sets.push("dataset.raw=\"/nowhere\"".into());
        }
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let c = load("", &sets).unwrap_or_else(|e| panic!("{key} = {name}: {e}"));
        assert_eq!(got(&c), *name, "{key}");
        let toml = c.to_toml();
        let line = format!("{leaf} = \"{name}\"");
        assert!(
            toml.contains(&format!("[{group}]")) && toml.contains(&line),
            "{line} not written: {toml}"
        );
        assert_eq!(load(&toml, &[]).unwrap(), c, "{key} = {name} reloads");
    }
}

#[test]
fn every_closed_set_round_trips_through_toml_with_its_documented_names() {
    round_trips(
        "dataset.kind",
        &[
            "synthetic",
            "ml-100k",
            "ml-1m",
            "amazon",
            "csv",
            "dllm2rec",
            "ilora",
        ],
        |c| c.dataset.kind.to_string(),
    );
    round_trips(
        "dataset.split",
        &["leave_one_out", "temporal", "by_user"],
        |c| c.dataset.options.split.name().into(),
    );
    round_trips("dataset.dedup", &["keep", "drop_consecutive"], |c| {
        c.dataset.options.dedup.name().into()
    });
    round_trips("student.model", &["sasrec", "gru4rec", "caser"], |c| {
        c.student.model.name().into()
    });
    round_trips("student.loss", &["ce", "bce"], |c| {
        c.student.loss.name().into()
    });
    round_trips("student.objective", &["last", "all_positions"], |c| {
        c.student.objective.name().into()
    });
    round_trips(
        "selection.policy",
        &[
            "all",
            "random",
            "loss",
            "entropy",
            "least_confidence",
            "margin",
            "gradient_norm",
            "coreset",
            "kmeans",
            "badge",
            "kl",
            "gt_error",
        ],
        |c| c.selection.policy.name().into(),
    );
    round_trips(
        "train.student.metric",
        &["hr@10", "ndcg@1", "recall@5", "mrr@20"],
        |c| c.train.student.metric.to_string(),
    );
}

#[test]
fn unknown_names_name_the_key_and_list_the_valid_names() {
    for (set, key, listed) in [
        ("selection.policy=bald", "selection.policy", "`gt_error`"),
        ("dataset.split=random", "dataset.split", "`by_user`"),
        ("dataset.dedup=drop", "dataset.dedup", "`drop_consecutive`"),
        ("dataset.kind=ml-20m", "dataset.kind", "`ml-100k`"),
        (
            "student.objective=first",
            "student.objective",
            "`all_positions`",
        ),
    ] {
        let e = load("", &[set]).unwrap_err();
        assert!(
            e.contains(&format!("config key `{key}`: unknown variant")),
            "{e}"
        );
        assert!(e.contains(listed), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let e = load("[train.distill]\nmetric = \"auc@10\"\n", &[]).unwrap_err();
    assert!(e.contains("config key `train.distill.metric`"), "{e}");
    assert!(e.contains("hr, ndcg, recall, mrr"), "{e}");
    // a known kind at a K that is not evaluated
    let e = load("", &["train.student.metric=hr@7"]).unwrap_err();
    assert!(
        e.contains("`train.student.metric`") && e.contains("eval.ks"),
        "{e}"
    );
}

#[test]
fn budgets_are_fractions_percentages_or_counts_and_a_bare_one_is_refused() {
    let budget = |text: &str| load(&format!("[selection]\nbudget = {text}\n"), &[]);
    assert_eq!(
        budget("0.25").unwrap().selection.budget,
        Budget::Fraction(0.25)
    );
    assert_eq!(
        budget("\"25%\"").unwrap().selection.budget,
        Budget::Fraction(0.25)
    );
    assert_eq!(
        budget("1.0").unwrap().selection.budget,
        Budget::Fraction(1.0)
    );
    assert_eq!(
        budget("1000").unwrap().selection.budget,
        Budget::Count(1000)
    );
    for (text, want) in [
        ("1", "ambiguous"),
        ("\"1\"", "ambiguous"),
        ("0", "must be > 0"),
        ("-3", "must be > 0"),
        ("2.5", "whole number"),
        ("\"lots\"", "'lots'"),
        ("true", "invalid type"),
    ] {
        let e = budget(text).unwrap_err();
        assert!(
            e.contains("config key `selection.budget`") && e.contains(want),
            "{text}: {e}"
        );
    }
    let e = load("", &["selection.budget=1"]).unwrap_err();
    assert!(e.contains("ambiguous") && e.contains("100%"), "{e}");
    // the resolved config writes a count as an integer and a fraction as a float
    for (text, line) in [("1000", "budget = 1000\n"), ("\"25%\"", "budget = 0.25\n")] {
        let c = budget(text).unwrap();
        assert!(c.to_toml().contains(line), "{}", c.to_toml());
        assert_eq!(load(&c.to_toml(), &[]).unwrap(), c);
    }
}

#[test]
fn keys_that_nothing_reads_are_refused_by_name() {
    for (text, key) in [
        ("[teacher]\nlora_rank = 8\n", "teacher.lora_rank"),
        ("[teacher]\ntemperature = 1.0\n", "teacher.temperature"),
        (
            "[train.student]\ngrad_accum = 1\n",
            "train.student.grad_accum",
        ),
        (
            "[train.distill]\nwarmup_steps = 0\n",
            "train.distill.warmup_steps",
        ),
        (
            "[train.teacher]\nwarmup_steps = 0\n",
            "train.teacher.warmup_steps",
        ),
    ] {
        let e = load(text, &[]).unwrap_err();
        assert!(
            e.starts_with(&format!("t.toml: config key `{key}`: unknown field")),
            "{e}"
        );
    }
    // and the resolved config does not write them
    let toml = Config::default().to_toml();
    for gone in ["lora_rank", "warmup_steps"] {
        assert!(!toml.contains(gone), "{gone} in {toml}");
    }
}

#[test]
fn the_llm_teacher_keys_are_typed_and_checked_by_name() {
    let c = load(
        "[teacher]\nbackbone = \"m.gguf\"\nnum_layers = 4\nobjective = \"generative\"\nexperts = 1\nrank = 8\ntargets = [\"q\", \"down\"]\n[train.teacher]\nmax_epochs = 5\ngrad_accum = 4\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.teacher.objective, TeacherObjective::Generative);
    assert_eq!(
        c.teacher.targets,
        vec![AdapterTarget::Q, AdapterTarget::Down]
    );
    assert_eq!(
        (c.train.teacher.max_epochs, c.train.teacher.grad_accum),
        (5, 4)
    );
    assert_eq!(load(&c.to_toml(), &[]).unwrap(), c);
    for (text, key, says) in [
        (
            "[teacher]\nrank = 6\nexperts = 4\n",
            "teacher.rank",
            "multiple",
        ),
        (
            "[teacher]\ntargets = [\"q_proj\"]\n",
            "teacher.targets[0]",
            "q_proj",
        ),
        (
            "[teacher]\nobjective = \"rank\"\n",
            "teacher.objective",
            "rank",
        ),
        (
            "[teacher]\nlora_dropout = 1.0\n",
            "teacher.lora_dropout",
            "[0, 1)",
        ),
        (
            "[teacher]\nranking_prompts = [\"no history here\"]\n",
            "teacher.ranking_prompts[0]",
            "{history}",
        ),
        (
            "[teacher]\nprompts = [\"{history} only\"]\n",
            "teacher.prompts[0]",
            "{candidates}",
        ),
        (
            "[train.teacher]\nwarmup = 1.5\n",
            "train.teacher.warmup",
            "fraction",
        ),
        (
            "[train.teacher]\nmetric = \"ndcg@7\"\n",
            "train.teacher.metric",
            "eval.ks",
        ),
    ] {
        let e = load(text, &[]).unwrap_err();
        assert!(e.contains(&format!("config key `{key}`")), "{text}: {e}");
        assert!(e.contains(says), "{text}: {e}");
    }
    // what `teacher from-student` reads stays where it was
    let c = load("[teacher]\ntop_k = 5\nmask_history = false\n", &[]).unwrap();
    assert_eq!((c.teacher.top_k, c.teacher.mask_history), (5, false));
}

#[test]
fn the_default_metric_is_ndcg_at_10() {
    assert_eq!(
        Config::default().train.student.metric,
        Metric {
            kind: MetricKind::Ndcg,
            k: 10
        }
    );
}
