//! Evaluating a teacher (SPEC 5): the ranking head with the full-ranking
//! metrics of `eval student` plus the sampled HR@1 over the LLaRA
//! candidates; the generative answer by greedy decoding over the same
//! candidates (valid ratio, HR@1 = correct / all, and correct / valid).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use distillrec_data::{Dataset, SplitName};
use distillrec_eval::{evaluate_all, split_candidates, EvalError, EvalOptions, EvalReport};

use distillrec_llm::generate::argmax;

use crate::keys;
use crate::model::Teacher;

/// The generative protocol's result.
#[derive(Clone, Debug, Serialize)]
pub struct GenerativeReport {
    /// Valid answers (exactly one candidate title in them) / rows.
    pub valid_ratio: f64,
    /// Correct answers / all rows (the LLaRA README's HR@1).
    pub hr1: f64,
    /// Correct answers / valid answers.
    pub hr1_of_valid: f64,
    /// Rows evaluated.
    pub rows: usize,
    /// Wall time, seconds.
    pub wall_secs: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
    /// Every row's answer, in split order (written as `answers-<split>.jsonl`).
    #[serde(skip)]
    pub answers: Vec<Answer>,
}

/// One greedy answer of the generative protocol, kept so that answers can
/// be read and their errors analysed (position bias, invalid forms).
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// The row's key (SPEC 2.5).
    pub key: String,
    /// The target item.
    pub target: u32,
    /// The candidates in prompt order.
    pub candidates: Vec<u32>,
    /// The decoded answer (first line).
    pub answer: String,
    /// The candidates the answer names (valid when exactly one).
    pub named: Vec<u32>,
    /// Whether the answer names exactly the target.
    pub correct: bool,
    /// The frozen student's top candidate (the first of equal scores):
    /// whether the teacher follows the student or departs from it.
    pub student_pick: u32,
}

impl GenerativeReport {
    /// As metrics keyed `valid_ratio`, `gen_hr@1`, `gen_hr@1_of_valid`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        [
            (keys::VALID_RATIO, self.valid_ratio),
            (keys::GEN_HR1, self.hr1),
            (keys::GEN_HR1_OF_VALID, self.hr1_of_valid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Where an `eval.sampled_negatives` refused for a teacher was set, for
/// the error line.
const EVAL_SOURCE: &str = "the config or --set";

/// Full ranking of `split` by the ranking head, plus the sampled protocol
/// over `eval.sampled_negatives` negatives (0: the teacher's candidate
/// count − 1, see `TeacherConfig::sampled_negatives`).
pub fn eval_ranking(
    teacher: &Teacher,
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let table = teacher.eval_table()?;
    let mut o = opts.clone();
    o.batch_size = teacher.cfg.infer_batch;
    o.sampled_negatives = teacher
        .cfg
        .sampled_negatives(opts.sampled_negatives, EVAL_SOURCE)?;
    Ok(evaluate_all(ds, split, &o, |rows| {
        teacher
            .rank_scores(ds, rows, &table)
            .map_err(|e| EvalError::Model(format!("{e:#}")))
    })?)
}

/// Which candidates an answer names (case-insensitive title match).
pub fn named_candidates(ds: &Dataset, answer: &str, candidates: &[u32]) -> Vec<u32> {
    let a = answer.to_lowercase();
    candidates
        .iter()
        .copied()
        .filter(|&c| {
            ds.title(c)
                .is_some_and(|t| !t.trim().is_empty() && a.contains(&t.trim().to_lowercase()))
        })
        .collect()
}

/// Greedy answers on `split` (the first `limit` rows when given) over the
/// sampled protocol's candidates.
pub fn eval_generative(
    teacher: &mut Teacher,
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
    limit: Option<usize>,
) -> Result<GenerativeReport> {
    let start = Instant::now();
    // another count than the teacher's own is refused, not replaced
    teacher
        .cfg
        .sampled_negatives(opts.sampled_negatives, EVAL_SOURCE)?;
    let cands = split_candidates(ds, split, opts, teacher.prompter.candidates - 1)?;
    let rows = ds.rows(split);
    let n = limit.unwrap_or(rows.len()).min(rows.len());
    teacher.attach()?;
    let result = (|| -> Result<Vec<Answer>> {
        let mut answers = Vec::with_capacity(n);
        for (row, c) in rows.iter().zip(&cands).take(n) {
            // one student pass feeds the gate, the cue and the student's pick
            let (answer, scores) = teacher.answer_scored(ds, row, c)?;
            let named = named_candidates(ds, &answer, c);
            let target = ds.target(row);
            let of_cands: Vec<f32> = c.iter().map(|&x| scores[x as usize]).collect();
            let student_pick = c.get(argmax(&of_cands)).copied().unwrap_or(0);
            answers.push(Answer {
                key: row.key.clone(),
                target,
                candidates: c.clone(),
                correct: named == [target],
                answer,
                named,
                student_pick,
            });
        }
        Ok(answers)
    })();
    teacher.detach()?;
    let answers = result?;
    let valid = answers.iter().filter(|a| a.named.len() == 1).count();
    let correct = answers.iter().filter(|a| a.correct).count();
    let wall = start.elapsed().as_secs_f64();
    let n_f = n.max(1) as f64;
    Ok(GenerativeReport {
        valid_ratio: valid as f64 / n_f,
        hr1: correct as f64 / n_f,
        hr1_of_valid: if valid > 0 {
            correct as f64 / valid as f64
        } else {
            0.0
        },
        rows: n,
        wall_secs: wall,
        rows_per_sec: n as f64 / wall.max(1e-9),
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillrec_data::{Item, Sequence};

    fn ds(titles: &[&str]) -> Dataset {
        Dataset {
            name: "t".into(),
            items: titles
                .iter()
                .enumerate()
                .map(|(i, t)| Item {
                    raw_id: format!("{i}"),
                    title: t.to_string(),
                })
                .collect(),
            sequences: vec![Sequence {
                user: "u".into(),
                items: vec![1, 2],
                timestamps: None,
            }],
            train: vec![],
            valid: vec![],
            test: vec![],
            users_known: true,
            row_layout: false,
            provenance: serde_json::Value::Null,
        }
    }

    #[test]
    fn an_answer_is_valid_when_it_names_exactly_one_candidate() {
        let d = ds(&["Muse", "Radiohead", "The Cure", "Blur"]);
        let c = [1, 2, 3];
        assert_eq!(named_candidates(&d, "I think RADIOHEAD.", &c), vec![2]);
        assert_eq!(
            named_candidates(&d, "radiohead or the cure", &c),
            vec![2, 3]
        );
        assert!(
            named_candidates(&d, "Blur", &c).is_empty(),
            "not a candidate"
        );
        assert!(named_candidates(&d, "", &c).is_empty());
        // a title inside a longer word still counts, as in LLaRA's matching
        assert_eq!(named_candidates(&d, "Museum", &c), vec![1]);
    }
}
