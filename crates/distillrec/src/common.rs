//! What several commands share: the build record, config loading, the
//! device, and the one-line metrics summary.

use anyhow::Result;
use candle_core::Device;

use distillrec_config::{Config, DeviceSpec, Reads};
use distillrec_run::{BuildInfo, Metrics, SplitMetrics};

use crate::args::{ConfigArgs, DeviceArgs};

/// What this binary was built from, for `run.json`.
pub fn build_info() -> BuildInfo {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: opt(env!("DISTILLREC_GIT_COMMIT")),
        git_dirty: opt(env!("DISTILLREC_GIT_DIRTY")).map(|s| s == "true"),
        rustc: opt(env!("DISTILLREC_RUSTC")),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
    }
}

/// A TOML literal for a `--set` value (JSON string escapes are valid TOML).
pub fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The config of `--config` with the `--set` overrides, then `extra` ones,
/// for a command that reads `reads`: only those groups are validated, and a
/// `--set` of a key the command does not read gets a warning on stderr.
pub fn load_config(c: &ConfigArgs, extra: Vec<String>, reads: Reads) -> Result<Config> {
    for w in reads.unread_overrides(&c.set) {
        eprintln!("warning: {w}");
    }
    let mut sets = c.set.clone();
    sets.extend(extra);
    Ok(Config::load_for(c.config.as_deref(), &sets, reads)?)
}

/// Opens the device: `--device` if given (it also becomes the config's
/// `device`, so `config.toml` records it), else the config's.
pub fn config_device(cfg: &mut Config, arg: &DeviceArgs) -> Result<Device> {
    if let Some(d) = arg.device {
        cfg.device = d;
    }
    Ok(distillrec_models::device::open(cfg.device)?)
}

/// Opens the device of a command without a config (default: the CPU).
pub fn device(arg: &DeviceArgs) -> Result<Device> {
    Ok(distillrec_models::device::open(
        arg.device.unwrap_or(DeviceSpec::Cpu),
    )?)
}

/// Prints `value` as one line of JSON (`--json`).
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints the test and validation metrics of one model at the configured
/// cut-offs, a line each.
pub fn print_metrics(model: &str, m: &Metrics, ks: &[usize]) {
    let row = |s: &SplitMetrics| {
        ks.iter()
            .flat_map(|k| [format!("hr@{k}"), format!("ndcg@{k}")])
            .map(|key| {
                let v = s.get(&key).map_or("-".into(), |v| format!("{v:.4}"));
                format!("{key} {v}")
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{model}: test {}", row(&m.test));
    println!(
        "{:width$}  valid {}",
        "",
        row(&m.valid),
        width = model.len()
    );
}

/// The teacher's figures that the ranking summary leaves out: sampled
/// HR@1 over the LLaRA candidates and the generative protocol.
pub fn print_teacher_extras(m: &Metrics) {
    let parts: Vec<String> = distillrec_pipeline::teacher_metric_keys::summary()
        .iter()
        .filter_map(|k| m.test.get(k).map(|v| format!("{k} {v:.4}")))
        .collect();
    if !parts.is_empty() {
        println!("test: {}", parts.join("  "));
    }
}

/// `--data` as the override `dataset.prepared` (absolute), for
/// [`load_config`]: the config's checks see that the dataset is given (no
/// "needs dataset.raw or dataset.prepared"), and the run's `config.toml`
/// names the dataset it was trained on.
pub fn data_override(data: Option<&std::path::Path>) -> Vec<String> {
    data.map(|d| {
        let abs = distillrec_pipeline::absolute(d);
        format!("dataset.prepared={}", quoted(&abs.display().to_string()))
    })
    .into_iter()
    .collect()
}

/// Sets the worker threads of rayon and the matmul kernels, after checking
/// `--threads` against the machine (a count past the cap would fail to
/// spawn).
pub fn use_threads(threads: usize) -> Result<()> {
    distillrec_data::memory::check_threads("--threads", threads).map_err(anyhow::Error::msg)?;
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    Ok(())
}
