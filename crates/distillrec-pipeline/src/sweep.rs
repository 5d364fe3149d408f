//! `sweep`: the pipeline over the cross product of config values and
//! student seeds, as resumable runs that share every stage they can (their
//! stages live in one content-addressed store, see [`Layout::Shared`]), then
//! one report with mean ± std per setting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;

use distillrec_config::Config;
use distillrec_run::{BuildInfo, Metrics};

use crate::pipeline::{self, Layout, ModelRun, StageKeys, StageReport};

/// One swept key and its values (`distill.lambda=0.5,1.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct GridAxis {
    /// Dotted config key.
    pub key: String,
    /// Its values, as `--set` would take each.
    pub values: Vec<String>,
}

/// Splits `s` at the commas outside brackets, braces and quotes, so a list
/// value (`[5,10]`) or a quoted string stays whole, as in Hydra's multirun.
pub fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut depth, mut quote) = (0i32, None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}

impl GridAxis {
    /// Parses `key=v1,v2,...`; one value is an axis of one.
    pub fn parse(arg: &str) -> Result<GridAxis> {
        let Some((key, values)) = arg.split_once('=') else {
            bail!("--grid {arg}: expected key=value1,value2,...");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--grid {arg}: the key is empty");
        }
        let values = split_values(values);
        if let Some(i) = values.iter().position(String::is_empty) {
            bail!("--grid {arg}: value {} is empty", i + 1);
        }
        let distinct: BTreeSet<&String> = values.iter().collect();
        if distinct.len() != values.len() {
            bail!("--grid {arg}: a value is repeated");
        }
        Ok(GridAxis {
            key: key.to_string(),
            values,
        })
    }
}

/// `--set` arguments split into fixed overrides and sweeps: a value with a
/// comma outside brackets and quotes is swept (`--set distill.lambda=0.5,1`),
/// as Hydra's multirun reads it.
pub fn split_sets(sets: &[String]) -> Result<(Vec<String>, Vec<GridAxis>)> {
    let (mut fixed, mut axes) = (Vec::new(), Vec::new());
    for s in sets {
        match s.split_once('=') {
            Some((_, v)) if split_values(v).len() > 1 => axes.push(GridAxis::parse(s)?),
            _ => fixed.push(s.clone()),
        }
    }
    Ok((fixed, axes))
}

/// The key of a `--set key=value` argument, trimmed as [`GridAxis::parse`]
/// trims it.
fn set_key(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(k, _)| k).trim()
}

/// Refuses a key swept twice (two `--grid`, or `--grid` and a swept `--set`)
/// or both swept and fixed by `--set`: only one of the values would be used.
pub fn check_keys(fixed: &[String], axes: &[GridAxis]) -> Result<()> {
    let mut swept = BTreeSet::new();
    for a in axes {
        if !swept.insert(a.key.as_str()) {
            bail!(
                "--grid {}: the key is swept twice (by --grid or a comma-valued --set); give all its values once: --grid {}=v1,v2,...",
                a.key,
                a.key
            );
        }
    }
    if let Some(f) = fixed.iter().find(|f| swept.contains(set_key(f))) {
        bail!(
            "--set {f}: the key is also swept; drop the --set or put the value among the swept ones"
        );
    }
    Ok(())
}

/// Refuses a seed given twice in `--seeds` (its runs would be one
/// directory), and `--seeds` with `student_seed` also set by `--set` or
/// `--grid` (the seeds would override it).
pub fn check_seeds(seeds: &[u64], fixed: &[String], axes: &[GridAxis]) -> Result<()> {
    let mut seen = BTreeSet::new();
    if let Some(s) = seeds.iter().find(|s| !seen.insert(**s)) {
        bail!("--seeds: seed {s} is given twice; give each seed once");
    }
    let sets_seed = fixed.iter().any(|f| set_key(f) == "student_seed")
        || axes.iter().any(|a| a.key == "student_seed");
    if !seeds.is_empty() && sets_seed {
        bail!(
            "--seeds sets `student_seed` for each run: drop `student_seed` from --set and --grid"
        );
    }
    Ok(())
}

/// One run of the sweep: a setting (one value per axis) and a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRun {
    /// `key=value` per axis, in axis order.
    pub setting: Vec<String>,
    /// Student seed (`None`: the config's).
    pub seed: Option<u64>,
}

impl SweepRun {
    /// The setting as a label (`distill.lambda=0.5 train.distill.lr=0.01`),
    /// `base` without axes.
    pub fn label(&self) -> String {
        if self.setting.is_empty() {
            "base".into()
        } else {
            self.setting.join(" ")
        }
    }

    /// The setting with each key cut to its last segment
    /// (`lambda=0.5,ed_weight=0`): how the report names its models.
    pub fn short_label(&self) -> String {
        let short: Vec<&str> = self
            .setting
            .iter()
            .map(|kv| {
                let (k, _) = kv.split_once('=').unwrap_or((kv, ""));
                let cut = k.rfind('.').map_or(0, |i| i + 1);
                &kv[cut..]
            })
            .collect();
        if short.is_empty() {
            "base".into()
        } else {
            short.join(",")
        }
    }

    /// Its directory name: the label with path-unsafe characters replaced,
    /// and the seed.
    pub fn dir_name(&self) -> String {
        let mut s: String = self
            .label()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "=.-_@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(seed) = self.seed {
            s.push_str(&format!("-s{seed}"));
        }
        s
    }

    /// The overrides that make this run's config from the sweep's.
    pub fn overrides(&self) -> Vec<String> {
        let mut o = self.setting.clone();
        if let Some(seed) = self.seed {
            o.push(format!("student_seed={seed}"));
        }
        o
    }
}

/// The cross product of `axes` (first axis outermost) times `seeds`.
pub fn expand(axes: &[GridAxis], seeds: &[u64]) -> Vec<SweepRun> {
    let mut settings: Vec<Vec<String>> = vec![Vec::new()];
    for a in axes {
        settings = settings
            .into_iter()
            .flat_map(|s| {
                a.values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.push(format!("{}={v}", a.key));
                    s
                })
            })
            .collect();
    }
    let seeds: Vec<Option<u64>> = if seeds.is_empty() {
        vec![None]
    } else {
        seeds.iter().copied().map(Some).collect()
    };
    settings
        .into_iter()
        .flat_map(|setting| {
            seeds.iter().map(move |&seed| SweepRun {
                setting: setting.clone(),
                seed,
            })
        })
        .collect()
}

/// How many runs a sweep may have unless `--max-runs` raises it.
pub const DEFAULT_MAX_RUNS: usize = 1000;

/// What a sweep will do, known before anything is written: its runs, their
/// configs (each made, and so validated) and how many distinct stages they
/// share.
pub struct SweepPlan {
    /// Settings (one value per axis).
    pub settings: usize,
    /// Seeds per setting (1 when the config's seed is used).
    pub seeds: usize,
    /// The runs, settings times seeds.
    pub runs: Vec<SweepRun>,
    /// Each run's config, in the order of `runs`.
    pub configs: Vec<Config>,
    /// Distinct stages of the shared store (stages with equal keys are one).
    pub stages: usize,
}

impl SweepPlan {
    /// Plans the sweep over `axes` × `seeds`: refuses more than `max_runs`
    /// runs (counted before any is listed) and two runs that would share a
    /// directory, then makes every run's config with `config_for`.
    pub fn new(
        axes: &[GridAxis],
        seeds: &[u64],
        max_runs: usize,
        config_for: &dyn Fn(&[String]) -> Result<Config>,
    ) -> Result<SweepPlan> {
        let settings = axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
        let n_seeds = seeds.len().max(1);
        let runs = settings.and_then(|s| s.checked_mul(n_seeds));
        let (Some(settings), Some(n_runs)) = (settings, runs) else {
            bail!("the sweep's grid has more settings than can be counted; sweep fewer values");
        };
        if n_runs > max_runs {
            bail!(
                "the sweep has {settings} settings × {n_seeds} seeds = {n_runs} runs, more than --max-runs {max_runs}; sweep fewer values or raise --max-runs"
            );
        }
        let runs = expand(axes, seeds);
        check_dirs(&runs)?;
        let configs: Vec<Config> = runs
            .iter()
            .map(|r| {
                config_for(&r.overrides()).with_context(|| format!("sweep run `{}`", r.label()))
            })
            .collect::<Result<_>>()?;
        let stages = distinct_stages(&configs)?;
        Ok(SweepPlan {
            settings,
            seeds: n_seeds,
            runs,
            configs,
            stages,
        })
    }

    /// One line for people: `sweep: 2 settings × 3 seeds = 6 runs, 14 distinct stages`.
    pub fn summary(&self) -> String {
        format!(
            "sweep: {} settings × {} seeds = {} runs, {} distinct stages",
            self.settings,
            self.seeds,
            self.runs.len(),
            self.stages
        )
    }
}

/// Refuses two runs whose directory names are equal (values that differ
/// only in characters a directory name cannot hold): one would overwrite
/// the other's `config.toml`.
fn check_dirs(runs: &[SweepRun]) -> Result<()> {
    let mut by_dir: BTreeMap<String, &SweepRun> = BTreeMap::new();
    for r in runs {
        if let Some(first) = by_dir.insert(r.dir_name(), r) {
            bail!(
                "sweep runs `{}` and `{}` would share the directory runs/{}: their values differ only in characters a directory name cannot hold; change one of them",
                first.label(),
                r.label(),
                r.dir_name()
            );
        }
    }
    Ok(())
}

/// How many distinct stages (kind and key) the runs of `configs` have in
/// the shared store.
fn distinct_stages(configs: &[Config]) -> Result<usize> {
    let mut fingerprints: BTreeMap<Option<PathBuf>, String> = BTreeMap::new();
    let mut stages: BTreeSet<(&'static str, String)> = BTreeSet::new();
    for cfg in configs {
        let given = match fingerprints.get(&cfg.dataset.prepared) {
            Some(f) => f.clone(),
            None => {
                let f = pipeline::prepared_fingerprint(cfg)?.unwrap_or_default();
                fingerprints.insert(cfg.dataset.prepared.clone(), f.clone());
                f
            }
        };
        let keys = StageKeys::new(cfg, &given);
        stages.extend(keys.stages().into_iter().map(|(k, v)| (k, v.to_string())));
    }
    Ok(stages.len())
}

/// What the sweep did.
pub struct SweepOutcome {
    /// `report.md` of the whole sweep.
    pub report: PathBuf,
    /// Per run: its stages.
    pub runs: Vec<(SweepRun, Vec<StageReport>)>,
}

/// Report labels: a model whose run directory is the same for every setting
/// of a seed (a baseline the swept keys do not touch) keeps its label, so
/// its seeds average into one row; one that differs gets the setting too.
fn report_runs(runs: &[(SweepRun, Vec<ModelRun>)]) -> Vec<distillrec_report::RunSpec> {
    // label -> seed -> distinct dirs
    let mut dirs: BTreeMap<&str, BTreeMap<Option<u64>, BTreeSet<&Path>>> = BTreeMap::new();
    for (r, models) in runs {
        for m in models {
            dirs.entry(&m.label)
                .or_default()
                .entry(r.seed)
                .or_default()
                .insert(&m.dir);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (r, models) in runs {
        for m in models {
            let shared = dirs[m.label.as_str()].values().all(|d| d.len() == 1);
            let label = if shared {
                m.label.clone()
            } else {
                format!("{} [{}]", m.label, r.short_label())
            };
            if seen.insert(m.dir.clone()) {
                out.push(distillrec_report::RunSpec {
                    label: Some(label),
                    dir: m.dir.clone(),
                });
            }
        }
    }
    out
}

/// Runs every run of the plan in `out/runs/<setting>-s<seed>` with the
/// stages in `out/stages`, then the report in `out/report`.
pub fn run(
    plan: &SweepPlan,
    out: &Path,
    build: BuildInfo,
    device: &Device,
    on_model: &mut dyn FnMut(&str, &Metrics),
) -> Result<SweepOutcome> {
    let (runs, configs) = (&plan.runs, &plan.configs);
    if runs.is_empty() {
        bail!("the sweep has no run");
    }
    let _lock = distillrec_data::lock::DirLock::acquire(out)?;
    distillrec_run::init_logging(Some(&out.join("sweep.log")))?;
    let store = out.join("stages");
    let mut done = Vec::new();
    let mut models = Vec::new();
    let mut metric = None;
    for (r, cfg) in runs.iter().zip(configs) {
        let dir = out.join("runs").join(r.dir_name());
        tracing::info!(run = %r.label(), seed = ?r.seed, "sweep run");
        let o = pipeline::run(
            cfg,
            &dir,
            Layout::Shared(store.clone()),
            build.clone(),
            device,
            on_model,
        )
        .with_context(|| format!("sweep run `{}` ({})", r.label(), dir.display()))?;
        metric.get_or_insert_with(|| cfg.train.student.metric.to_string());
        models.push((r.clone(), o.models));
        done.push((r.clone(), o.stages));
    }
    let student = configs[0].student.model.name().to_string();
    let specs = report_runs(&models);
    let baseline = specs
        .iter()
        .filter_map(|s| s.label.clone())
        .find(|l| *l == student);
    let req = distillrec_report::ReportRequest {
        runs: specs,
        ablation_runs: Vec::new(),
        active_runs: Vec::new(),
        converged: None,
        budget_runs: Vec::new(),
        baseline,
        metric: metric.unwrap_or_else(|| "ndcg@10".into()),
        out: out.join("report"),
    };
    distillrec_report::write_report(&req)?;
    Ok(SweepOutcome {
        report: out.join("report").join("report.md"),
        runs: done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_outside_brackets_and_quotes() {
        assert_eq!(split_values("0.5,1.0"), ["0.5", "1.0"]);
        assert_eq!(split_values("[5,10],[20]"), ["[5,10]", "[20]"]);
        assert_eq!(split_values("\"a,b\",c"), ["\"a,b\"", "c"]);
        assert_eq!(split_values("[5,10]"), ["[5,10]"]);
    }

    #[test]
    fn sets_with_commas_are_swept_and_lists_are_not() {
        let sets = vec![
            "distill.lambda=0.5,1".to_string(),
            "eval.ks=[5,10]".to_string(),
            "seed=3".to_string(),
        ];
        let (fixed, axes) = split_sets(&sets).unwrap();
        assert_eq!(fixed, ["eval.ks=[5,10]", "seed=3"]);
        assert_eq!(
            axes,
            [GridAxis {
                key: "distill.lambda".into(),
                values: vec!["0.5".into(), "1".into()]
            }]
        );
        assert!(GridAxis::parse("x=1,,2").is_err());
        assert!(GridAxis::parse("x=1,1").is_err());
        assert!(GridAxis::parse("=1,2").is_err());
        assert!(GridAxis::parse("x").is_err());
    }

    #[test]
    fn expansion_is_the_cross_product_times_the_seeds() {
        let axes = [
            GridAxis::parse("a=1,2").unwrap(),
            GridAxis::parse("b=x,y,z").unwrap(),
        ];
        let runs = expand(&axes, &[7, 8]);
        assert_eq!(runs.len(), 12);
        assert_eq!(runs[0].overrides(), ["a=1", "b=x", "student_seed=7"]);
        assert_eq!(runs[11].label(), "a=2 b=z");
        assert_eq!(runs[11].dir_name(), "a=2_b=z-s8");
        let r = SweepRun {
            setting: vec!["distill.lambda=0.5".into(), "eval.ks=[5,10]".into()],
            seed: None,
        };
        assert_eq!(r.short_label(), "lambda=0.5,ks=[5,10]");
        assert_eq!(
            expand(&[], &[]),
            [SweepRun {
                setting: vec![],
                seed: None
            }]
        );
    }

    #[test]
    fn a_key_swept_twice_or_also_fixed_is_refused() {
        let axes = |args: &[&str]| -> Vec<GridAxis> {
            args.iter().map(|a| GridAxis::parse(a).unwrap()).collect()
        };
        let e = check_keys(
            &[],
            &axes(&["distill.lambda=0.5,0.6", " distill.lambda =0.7"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--grid distill.lambda: the key is swept twice"),
            "{e}"
        );
        // a swept --set and a --grid on one key
        let (fixed, mut a) = split_sets(&["distill.lambda=0.1,0.2".into()]).unwrap();
        a.extend(axes(&["distill.lambda=0.3"]));
        assert!(check_keys(&fixed, &a).is_err());
        let fixed = vec!["distill.lambda=0.9".to_string(), "seed=3".to_string()];
        let e = check_keys(&fixed, &axes(&["distill.lambda=0.3,0.4"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--set distill.lambda=0.9: the key is also swept"),
            "{e}"
        );
        assert!(check_keys(&fixed[1..], &axes(&["distill.lambda=0.3", "a=1,2"])).is_ok());
        assert!(check_seeds(&[1, 2, 1], &[], &[]).is_err());
        assert!(check_seeds(&[1, 2], &[], &[]).is_ok());
        let seed_axis = axes(&["student_seed=3,4"]);
        assert!(check_seeds(&[1, 2], &[], &seed_axis).is_err());
        assert!(check_seeds(&[1, 2], &["student_seed=5".into()], &[]).is_err());
        assert!(check_seeds(&[], &[], &seed_axis).is_ok());
    }

    fn default_config(_: &[String]) -> Result<Config> {
        Ok(Config::default())
    }

    #[test]
    fn runs_over_the_limit_are_refused_before_any_is_listed() {
        // 10^12 settings: counted, never expanded
        let axis = GridAxis::parse("a=0,1,2,3,4,5,6,7,8,9").unwrap();
        let axes = vec![axis; 12];
        let e = SweepPlan::new(&axes, &[1, 2], 1000, &default_config)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "the sweep has 1000000000000 settings × 2 seeds = 2000000000000 runs, more than --max-runs 1000; sweep fewer values or raise --max-runs"
        );
        let axes = vec![GridAxis::parse("a=0,1,2,3,4,5,6,7,8,9").unwrap(); 40];
        let e = SweepPlan::new(&axes, &[], 1000, &default_config)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("more settings than can be counted"),
            "{e}"
        );
        let axes = [GridAxis::parse("a=1,2,3").unwrap()];
        assert!(SweepPlan::new(&axes, &[1, 2], 5, &default_config).is_err());
        assert!(SweepPlan::new(&axes, &[1, 2], 6, &default_config).is_ok());
    }

    #[test]
    fn values_that_name_one_directory_are_refused() {
        let axes = [GridAxis::parse("tag=a/b,a_b").unwrap()];
        let e = SweepPlan::new(&axes, &[], 1000, &default_config)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "sweep runs `tag=a/b` and `tag=a_b` would share the directory runs/tag=a_b: their values differ only in characters a directory name cannot hold; change one of them"
        );
    }

    #[test]
    fn the_plan_counts_settings_runs_and_distinct_stages() {
        // without a teacher a run has data, popularity and student stages;
        // the student seed changes only the student stage: 1 + 1 + 3
        let with_seed = |extra: &[String]| -> Result<Config> {
            let mut c = Config::default();
            for o in extra {
                if let Some(s) = o.strip_prefix("student_seed=") {
                    c.student_seed = Some(s.parse()?);
                }
            }
            Ok(c)
        };
        let axes = [GridAxis::parse("unread.key=1,2").unwrap()];
        let plan = SweepPlan::new(&axes, &[1, 2, 3], 1000, &with_seed).unwrap();
        assert_eq!(
            plan.summary(),
            "sweep: 2 settings × 3 seeds = 6 runs, 5 distinct stages"
        );
        assert_eq!(plan.configs.len(), 6);
    }

    #[test]
    fn models_shared_across_settings_keep_one_label() {
        let run = |v: &str, seed| SweepRun {
            setting: vec![format!("distill.lambda={v}")],
            seed: Some(seed),
        };
        let m = |label: &str, dir: &str| ModelRun {
            label: label.into(),
            dir: PathBuf::from(dir),
        };
        let runs = vec![
            (run("0.5", 1), vec![m("sasrec", "s1"), m("d", "d05-1")]),
            (run("1", 1), vec![m("sasrec", "s1"), m("d", "d1-1")]),
            (run("0.5", 2), vec![m("sasrec", "s2"), m("d", "d05-2")]),
        ];
        let specs = report_runs(&runs);
        let labels: Vec<(String, String)> = specs
            .iter()
            .map(|s| (s.label.clone().unwrap(), s.dir.display().to_string()))
            .collect();
        assert_eq!(
            labels,
            [
                ("sasrec".into(), "s1".into()),
                ("d [lambda=0.5]".into(), "d05-1".into()),
                ("d [lambda=1]".into(), "d1-1".into()),
                ("sasrec".into(), "s2".into()),
                ("d [lambda=0.5]".into(), "d05-2".into()),
            ]
        );
    }
}
