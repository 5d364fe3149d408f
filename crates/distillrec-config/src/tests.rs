//! Tests of the config: parsing and overrides, value checks, the presets.

mod parsing {
    use crate::*;

    #[test]
    fn a_projection_keeps_the_groups_read_and_defaults_the_rest() {
        let cfg = Config::from_toml_str(
            "seed = 7\n[distill]\nlambda = 0.5\n[train.student]\nmax_epochs = 3\n[train.distill]\nmax_epochs = 4\n[teacher]\nnum_layers = 2\n",
            "t",
            &[],
        )
        .unwrap();
        let p = cfg.project(Reads(&["seed", "train.distill", "distill"]));
        assert_eq!(p.seed, 7);
        assert_eq!(p.distill.lambda, 0.5);
        assert_eq!(p.train.distill.max_epochs, 4);
        let d = Config::default();
        assert_eq!(p.train.student, d.train.student);
        assert_eq!(p.teacher, d.teacher);
        assert_eq!(cfg.project(Reads::ALL), cfg);
        assert_eq!(cfg.project(Reads(&["teacher"])).teacher.num_layers, Some(2));
        assert_eq!(p.teacher.num_layers, None);
    }

    #[test]
    fn teacher_settings_check_on_their_own_and_sampled_negatives_are_honoured_or_refused() {
        // what a teacher manifest carries is checked without a config
        let mut t = TeacherConfig {
            ranking_prompts: vec!["{candidates}{candidates}{history}".into()],
            ..TeacherConfig::default()
        };
        let e = t.check("m.json").unwrap_err().to_string();
        assert!(
            e.starts_with("m.json: config key `teacher.ranking_prompts[0]`"),
            "{e}"
        );
        t.ranking_prompts = vec!["{history} ->".into()];
        t.check("m.json").unwrap();
        // ranking: any count is honoured, 0 is the teacher's own
        t.candidates = 5;
        assert_eq!(t.sampled_negatives(0, "c").unwrap(), 4);
        assert_eq!(t.sampled_negatives(7, "c").unwrap(), 7);
        // generative: only its own count
        t.objective = TeacherObjective::Generative;
        assert_eq!(t.sampled_negatives(4, "c").unwrap(), 4);
        let e = t.sampled_negatives(7, "c").unwrap_err().to_string();
        assert!(
            e.contains("`eval.sampled_negatives`: 7") && e.contains("set it to 4"),
            "{e}"
        );
        // and a config says so before training
        let e = load(
            "[teacher]\nobjective = \"generative\"\ncandidates = 5\n[eval]\nsampled_negatives = 7\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("eval.sampled_negatives"), "{e}");
    }

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str(text, "test.toml", &sets)
    }

    #[test]
    fn a_command_validates_only_what_it_reads_and_names_unread_overrides() {
        const EVAL: Reads = Reads(&["seed", "eval"]);
        const DISTILL: Reads = Reads(&["seed", "student", "distill", "train.distill", "eval"]);
        // eval.ks without 10 breaks train.*.metric = ndcg@10, which `eval student` never uses
        let sets = vec!["eval.ks=[5, 50]".to_string()];
        let c = Config::from_toml_str_for("", "t.toml", &sets, EVAL).unwrap();
        assert_eq!(c.eval.ks, vec![5, 50]);
        let e = Config::from_toml_str_for("", "t.toml", &sets, DISTILL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.distill.metric"), "{e}");
        assert!(Config::from_toml_str("", "t.toml", &sets).is_err());
        // overrides of groups the command does not read are named
        let sets: Vec<String> = [
            "train.student.max_epochs=3",
            "train.distill.max_epochs=2",
            "seed=1",
            "train={}",
        ]
        .map(String::from)
        .to_vec();
        let w = DISTILL.unread_overrides(&sets);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("`train.student.max_epochs`") && w[0].contains("train.distill"),
            "{w:?}"
        );
        assert!(Reads::ALL.unread_overrides(&sets).is_empty());
        assert!(!DISTILL.covers("student_x") && DISTILL.covers("student.hidden"));
    }

    #[test]
    fn defaults_and_partial_groups_merge() {
        let c = load(
            "[train.student]\nmax_epochs = 5\n[train.distill]\nlr = 0.0002\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.train.distill.lr, 2e-4);
        // a partial group keeps the stage's own defaults, not another stage's
        assert_eq!(c.train.student.max_epochs, 5);
        assert_eq!(c.train.distill.max_epochs, 200);
        assert_eq!(
            c,
            load(&c.to_toml(), &[]).unwrap(),
            "resolved config round-trips"
        );
    }

    #[test]
    fn overrides_parse_values() {
        let c = load(
            "",
            &[
                "train.student.max_epochs=5",
                "eval.ks=[1, 10]",
                "student.model=gru4rec",
                "dataset.kind=ml-1m",
                "dataset.raw=/x",
            ],
        )
        .unwrap();
        assert_eq!(c.train.student.max_epochs, 5);
        assert_eq!(c.eval.ks, vec![1, 10]);
        assert_eq!(c.student.model, StudentKind::Gru4rec);
        assert_eq!(c.dataset.kind, DatasetKind::Ml1m);
        assert_eq!(c.dataset.raw.as_deref(), Some(Path::new("/x")));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = load("[train.student]\nmax_epoch = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml: config key `train.student.max_epoch`"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        let e = load("", &["train.student.max_epochs=many"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config key `train.student.max_epochs`: invalid type: string \"many\""),
            "{e}"
        );
        let e = load("", &["student.model=bert4rec"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`student.model`: unknown variant `bert4rec`"),
            "{e}"
        );
        let e = load("[student]\nhidden = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`student.hidden`"), "{e}");
        let e = load("", &["seed"]).unwrap_err().to_string();
        assert_eq!(e, "--set seed: expected key=value");
        let e = load("", &["seed.x=1"]).unwrap_err().to_string();
        assert!(e.contains("`seed` is not a group"), "{e}");
    }

    #[test]
    fn syntax_errors_and_value_checks() {
        let e = load("[student\nhidden = 3\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("test.toml: ") && e.contains("line 1"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = load("", &["student.heads=3"]).unwrap_err().to_string();
        assert!(e.contains("`student.heads`: 3 does not divide"), "{e}");
        let e = load("", &["train.student.metric=auc@10"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`train.student.metric`"), "{e}");
        let e = load("", &["dataset.kind=ml-1m"]).unwrap_err().to_string();
        assert!(e.contains("`dataset.raw`"), "{e}");
    }
}

mod validation_tests {
    use crate::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str(text, "test.toml", &sets)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn distill_values_are_refused_by_the_config_check_naming_the_key() {
        for (set, want) in [
            ("distill.k=0", "config key `distill.k`: must be at least 1"),
            (
                "distill.lambda=-0.5",
                "config key `distill.lambda`: -0.5: must be a finite number >= 0",
            ),
            (
                "distill.ps_power=nan",
                "config key `distill.ps_power`: NaN: must be a finite number >= 0",
            ),
            (
                "distill.tau=0.0",
                "config key `distill.tau`: 0: must be a finite number > 0",
            ),
            (
                "distill.beta=-1.0",
                "config key `distill.beta`: -1: must be a finite number > 0",
            ),
        ] {
            let e = err("", &[set]);
            assert!(
                e.starts_with("test.toml: ") && e.contains(want),
                "{set}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // a command that does not read [distill] is not refused for it
        let sets = vec!["distill.k=0".to_string()];
        assert!(
            Config::from_toml_str_for("", "t.toml", &sets, crate::reads::TRAIN_STUDENT).is_ok()
        );
        assert!(Config::from_toml_str_for("", "t.toml", &sets, crate::reads::DISTILL).is_err());
    }

    #[test]
    fn negative_or_nan_optimiser_settings_name_their_key() {
        let e = err("", &["train.student.grad_clip=-1.0"]);
        assert!(
            e.contains("config key `train.student.grad_clip`: must be a finite number >= 0"),
            "{e}"
        );
        let e = err("", &["train.distill.weight_decay=-0.1"]);
        assert!(e.contains("config key `train.distill.weight_decay`"), "{e}");
        let e = err("[train.student]\nweight_decay = nan\n", &[]);
        assert!(e.contains("config key `train.student.weight_decay`"), "{e}");
        assert!(!e.contains("lr"), "{e}");
    }

    #[test]
    fn bce_without_negatives_is_refused() {
        let e = err("", &["student.loss=bce", "student.negatives=0"]);
        assert!(
            e.contains("config key `student.negatives`: must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors_keep_the_reason_and_position() {
        let e = err("seed = 1\n[student]\nhidden = = 3\n", &[]);
        assert!(
            e.starts_with("test.toml: invalid TOML at line 3, column 10: "),
            "{e}"
        );
        assert!(
            e.contains("string") || e.contains("value"),
            "reason kept: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn unreadable_config_paths_say_why() {
        let d = tempfile::tempdir().unwrap();
        let e = Config::load(Some(d.path()), &[]).unwrap_err().to_string();
        assert!(e.ends_with(": is a directory, not a file"), "{e}");
        #[cfg(unix)]
        {
            let l = d.path().join("loop.toml");
            std::os::unix::fs::symlink(&l, &l).unwrap();
            let e = Config::load(Some(&l), &[]).unwrap_err().to_string();
            assert!(e.ends_with("loop.toml: symbolic link loop"), "{e}");
        }
        let e = Config::load(Some(&d.path().join("none.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("none.toml: file not found"), "{e}");
    }
}

mod preset_tests {
    use crate::*;

    /// Every preset in `configs/` resolves without error.
    #[test]
    fn presets_resolve() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "expected the presets in {}", dir.display());
        let c = Config::load(Some(&dir.join("dllm2rec-game-sasrec.toml")), &[]).unwrap();
        assert_eq!(
            (c.student.max_len, c.student.loss, c.student.negatives),
            (10, LossKind::Bce, 1)
        );
        assert!(!c.eval.exclude_history);
        let c = Config::load(Some(&dir.join("ml-1m-sasrec.toml")), &[]).unwrap();
        assert_eq!(c.student.max_len, 200);
    }
}

mod teacher_dtype_tests {
    use crate::*;

    #[test]
    fn teacher_dtype_takes_its_four_names_and_refuses_others_in_one_line() {
        for (name, want) in [
            ("auto", TeacherDtype::Auto),
            ("f32", TeacherDtype::F32),
            ("bf16", TeacherDtype::Bf16),
            ("f16", TeacherDtype::F16),
        ] {
            let c = Config::from_toml_str("", "t.toml", &[format!("teacher.dtype=\"{name}\"")])
                .unwrap();
            assert_eq!(c.teacher.dtype, want);
        }
        assert_eq!(TeacherConfig::default().dtype, TeacherDtype::Auto);
        for bad in ["\"f64\"", "\"BF16\"", "16"] {
            let e = Config::from_toml_str("", "t.toml", &[format!("teacher.dtype={bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("`teacher.dtype`"), "{e}");
            assert!(!e.trim_end().contains('\n'), "one line: {e}");
        }
        let e = Config::from_toml_str("[teacher]\ndtype = \"f64\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`teacher.dtype`") && e.contains("f64"), "{e}");
        assert!(e.contains("`auto`, `f32`, `bf16`, `f16`"), "{e}");
    }

    #[test]
    fn default_dtype_and_recompute_leave_the_serialised_settings_unchanged() {
        let t = TeacherConfig::default();
        let s = serde_json::to_string(&t).unwrap();
        assert!(!s.contains("dtype") && !s.contains("recompute"), "{s}");
        let back: TeacherConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
        let bf = TeacherConfig {
            dtype: TeacherDtype::Bf16,
            recompute: true,
            ..TeacherConfig::default()
        };
        let s = serde_json::to_string(&bf).unwrap();
        assert!(
            s.contains("\"dtype\":\"bf16\"") && s.contains("\"recompute\":true"),
            "{s}"
        );
    }
}
