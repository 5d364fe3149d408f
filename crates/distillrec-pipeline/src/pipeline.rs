//! `pipeline`: every available stage from one config — the dataset, the
//! popularity baseline, the student — each in its own run directory under
//! `out`, and `report.md` with their test metrics and costs. The coming
//! teacher, selection and distillation stages join here.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

use distillrec_config::Config;
use distillrec_data::fsutil::atomic_write;
use distillrec_models::device::spec_of;
use distillrec_run::{BuildInfo, Metrics, Run};

use crate::prepared::run_data;
use crate::runs::with_run;
use crate::stages::{popularity, train_student_in};

/// Runs the pipeline in `out` on `device`. `on_model` is called with each
/// model's name and metrics as soon as it is evaluated (the binary prints
/// them). Returns the path of `report.md`.
pub fn run(
    cfg: &Config,
    out: &Path,
    build: BuildInfo,
    device: &Device,
    on_model: &mut dyn FnMut(&str, &Metrics),
) -> Result<PathBuf> {
    with_run(out, cfg, build.clone(), |run| {
        run.set_device(spec_of(device))?;
        let data = run.stage("data", || run_data(cfg, None, out))?;
        let mut pop_run = Run::create(&out.join("popularity"), Some(cfg), cfg.seed, build.clone())?;
        let pop = run.stage("popularity", || popularity(&data.ds, cfg, &mut pop_run))?;
        pop_run.write_metrics(&pop)?;
        pop_run.finish(Ok(()))?;
        on_model("popularity", &pop);
        let student_dir = out.join("student");
        let mut student_run = Run::create(&student_dir, Some(cfg), cfg.seed, build)?;
        student_run.set_device(spec_of(device))?;
        let trained = train_student_in(cfg, &data, &student_dir, &mut student_run, device)?;
        student_run.write_metrics(&trained.metrics)?;
        student_run.finish(Ok(()))?;
        let name = cfg.student.model.name();
        on_model(name, &trained.metrics);
        let o = &trained.outcome;
        let rows = [
            ("popularity", &pop, "-".to_string()),
            (
                name,
                &trained.metrics,
                format!(
                    "{} epochs, {:.1} s/epoch, eval {:.0} rows/s",
                    o.epochs, o.mean_epoch_secs, o.test_cost.rows_per_sec
                ),
            ),
        ];
        let report = format!(
            "# distillrec pipeline report\n\ndataset: {} ({} items, {} test rows), seed {}\n\n## Test metrics\n\n{}",
            data.ds.name,
            data.ds.num_items(),
            data.ds.test.len(),
            cfg.seed,
            report_table(&rows, &cfg.eval.ks)
        );
        let path = out.join("report.md");
        atomic_write(&path, report.as_bytes())?;
        run.write_metrics(&trained.metrics)?;
        Ok(path)
    })
}

/// Markdown table of test metrics, one row per model, with its cost.
fn report_table(rows: &[(&str, &Metrics, String)], ks: &[usize]) -> String {
    let mut cols = Vec::new();
    for k in ks {
        cols.push(format!("hr@{k}"));
        cols.push(format!("ndcg@{k}"));
    }
    let mut s = format!(
        "| model | {} | cost |\n|---|{}---|\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    for (name, m, cost) in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| m.test.get(c).map_or("-".into(), |v| format!("{v:.4}")))
            .collect();
        s.push_str(&format!("| {name} | {} | {cost} |\n", cells.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_table_lists_each_model_with_missing_metrics_dashed() {
        let mut m = Metrics::default();
        m.test.insert("hr@10".into(), 0.5);
        m.test.insert("ndcg@10".into(), 0.25);
        let t = report_table(&[("pop", &m, "-".into())], &[10, 20]);
        assert_eq!(
            t,
            "| model | hr@10 | ndcg@10 | hr@20 | ndcg@20 | cost |\n\
             |---|---|---|---|---|---|\n\
             | pop | 0.5000 | 0.2500 | - | - | - |\n"
        );
    }
}
