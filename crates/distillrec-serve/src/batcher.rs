//! Micro-batching: requests queue jobs; one task gathers up to `max_batch`
//! rows or waits at most `max_wait`, runs one forward pass on a blocking
//! thread, and answers each job through its oneshot channel.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use distillrec_data::ItemId;
use distillrec_pipeline::stages::{rank_batch, Query};

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::model::{Model, ModelHolder};

/// One history to rank.
pub struct Row {
    /// Items, oldest first.
    pub history: Vec<ItemId>,
    /// How many to return.
    pub top: usize,
    /// Whether history items may be returned.
    pub include_history: bool,
}

/// Ranked items per row, best first.
pub type Ranked = Vec<Vec<(ItemId, f32)>>;

/// What a job gets back: its rows ranked and the model that ranked them.
pub struct Answer {
    /// One list per row of the job.
    pub ranked: Ranked,
    /// The model that answered.
    pub model: Arc<Model>,
}

struct Job {
    rows: Vec<Row>,
    reply: oneshot::Sender<Result<Answer, String>>,
}

/// The handle requests use to reach the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batching task with a queue of `queue` jobs.
    pub fn start(
        holder: Arc<ModelHolder>,
        metrics: Arc<Metrics>,
        max_batch: usize,
        max_wait: Duration,
        queue: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(gather(rx, holder, metrics, max_batch, max_wait));
        Batcher { tx }
    }

    /// Ranks `rows` in the next forward pass; 503 when the queue is full.
    pub async fn rank(&self, rows: Vec<Row>) -> Result<Answer, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Job { rows, reply }).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server overloaded: too many requests waiting; retry later",
            )
        })?;
        let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
        answer
            .await
            .map_err(|_| internal("the scoring task failed".into()))?
            .map_err(internal)
    }
}

/// The batching loop: gather jobs, score them together, answer each.
async fn gather(
    mut rx: mpsc::Receiver<Job>,
    holder: Arc<ModelHolder>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    max_wait: Duration,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut rows = first.rows.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while rows < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) if rows + j.rows.len() > max_batch => {
                    carry = Some(j);
                    break;
                }
                Ok(Some(j)) => {
                    rows += j.rows.len();
                    jobs.push(j);
                }
                _ => break,
            }
        }
        metrics.observe_batch(rows);
        let model = holder.current();
        let scored = tokio::task::spawn_blocking(move || {
            let result = score(&model, &jobs);
            (jobs, result, model)
        })
        .await;
        if let Ok((jobs, result, model)) = scored {
            answer(jobs, result, model);
        }
    }
}

/// One forward pass over every row of `jobs`.
fn score(model: &Model, jobs: &[Job]) -> anyhow::Result<Ranked> {
    let queries: Vec<Query> = jobs
        .iter()
        .flat_map(|j| &j.rows)
        .map(|r| Query {
            history: &r.history,
            top: r.top,
            include_history: r.include_history,
        })
        .collect();
    rank_batch(&model.loaded.student, &queries)
}

/// Splits the batch's ranked rows back into their jobs and answers each.
fn answer(jobs: Vec<Job>, result: anyhow::Result<Ranked>, model: Arc<Model>) {
    match result {
        Ok(ranked) => {
            let mut rest = ranked.into_iter();
            for job in jobs {
                let mine: Ranked = rest.by_ref().take(job.rows.len()).collect();
                let _ = job.reply.send(Ok(Answer {
                    ranked: mine,
                    model: model.clone(),
                }));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(format!("scoring failed: {e}")));
            }
        }
    }
}
