//! `recommend`.

use anyhow::Result;

use distillrec_pipeline::stages;

use crate::args::RecommendArgs;
use crate::common::{device, print_json};

/// Runs `recommend`.
pub fn run(a: RecommendArgs) -> Result<()> {
    let device = device(&a.device)?;
    let r = stages::recommend(
        &a.checkpoint,
        a.data.as_deref(),
        &a.history,
        a.top,
        a.include_history,
        &device,
    )?;
    if a.json {
        let item = |it: &distillrec_data::Item| serde_json::json!({"raw_id": it.raw_id, "title": it.title});
        let ranked: Vec<serde_json::Value> = r
            .ranked
            .iter()
            .enumerate()
            .map(|(rank, (it, score))| {
                let mut v = item(it);
                v["rank"] = (rank + 1).into();
                v["score"] = serde_json::json!(score);
                v
            })
            .collect();
        let history: Vec<serde_json::Value> = r.history.iter().map(item).collect();
        return print_json(&serde_json::json!({"history": history, "recommendations": ranked}));
    }
    let titles: Vec<&str> = r.history.iter().map(|it| it.title.as_str()).collect();
    println!("history: {}", titles.join(" | "));
    for (rank, (it, score)) in r.ranked.iter().enumerate() {
        println!(
            "{:>3}. {:<60} (id {}, score {:.3})",
            rank + 1,
            it.title,
            it.raw_id,
            score
        );
    }
    Ok(())
}
