//! `recommend`.

use anyhow::Result;

use distillrec_pipeline::stages;

use crate::args::RecommendArgs;
use crate::common::device;

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
