//! The distillation objective (SPEC 7) plugged into the shared training
//! loop (`t_r` the target, `c_rk` the teacher's candidates, `w_rk` their
//! weights, `s_neg_r` a sampled negative, `p_i` the propensities):
//!
//! ```text
//! L = L_base + (1/S) · Σ_{r ∈ T} [α·DRO_r(t_r) + λ·(RD_r + α·Σ_k w_rk·DRO_r(c_rk))]
//!   L_base    mean student loss (CE or BCE) over the S supervised targets of the batch
//!   T         the supervised positions whose training row has teacher output
//!   RD_r      Σ_k w_rk·(−log σ(s_c_rk) − log σ(−s_neg_r))
//!   DRO_r(j)  log Σ_i exp(p_i·(s_i − 1[i = j])² / β)
//! ```
//!
//! Dividing by `S` makes every row with teacher output add the same amount
//! whatever the coverage (partial distillation); rows without it train on
//! `L_base` alone.
//!
//! With `all_positions`, a position is distilled when the training row
//! whose target sits there has teacher output, so long histories distil
//! in one pass per sequence.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use distillrec_cache::TeacherCache;
use distillrec_config::{DistillConfig, LossKind, StudentConfig};
use distillrec_data::{Dataset, ItemId};
use distillrec_models::params::{Init, Params};
use distillrec_models::Student;
use distillrec_train::units::{trained_rows, HostBatch, NO_ROW};
use distillrec_train::{base_loss, forward_rep, StageObjective};

use crate::fused::{fused_ce_distill_rows, fused_distill_rows, DistillCoefs, DistillRows, NO_SLOT};
use crate::losses::{
    item_columns, projected_table, propensity, ranking_distill_rows, CandidateWeights, DroRows,
};
use crate::topk::top_k_items;

/// The teacher's output aligned with the dataset's training rows.
#[derive(Clone, Debug)]
pub struct TeacherRows {
    /// Candidates per row.
    pub k: usize,
    /// Per `ds.train` index: the teacher row holding it, if any.
    pub of_train: Vec<Option<usize>>,
    /// Candidate item ids `[rows, k]`.
    pub items: Vec<ItemId>,
    /// Confidence distances `[rows, k]` (smaller = more confident).
    pub distances: Vec<f32>,
    /// LLM item embeddings `[N + 1, D]` and `D`, if the teacher has them.
    pub embeddings: Option<(Vec<f32>, usize)>,
    /// SHA-256 of the rows' keys and contents and of the embeddings: part of
    /// the run key, so a run is never resumed with another teacher.
    pub content_sha256: String,
}

impl TeacherRows {
    /// Aligns a loaded cache with `ds` (fingerprint and keys checked).
    pub fn from_cache(cache: &TeacherCache, fingerprint: &str, ds: &Dataset) -> Result<Self> {
        let of_train = cache.row_lookup(fingerprint, ds)?;
        let mut h = Sha256::new();
        for key in &cache.keys {
            h.update(key.as_bytes());
            h.update([b'\n']);
        }
        for &i in &cache.items {
            h.update(i.to_le_bytes());
        }
        for &d in &cache.distances {
            h.update(d.to_le_bytes());
        }
        if let Some(e) = &cache.embeddings {
            for &x in e {
                h.update(x.to_le_bytes());
            }
        }
        let content_sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(TeacherRows {
            k: cache.k(),
            of_train,
            items: cache.items.clone(),
            distances: cache.distances.clone(),
            embeddings: cache.embeddings.clone().zip(cache.embedding_dim()),
            content_sha256,
        })
    }
}

/// Which terms are active, after the config and the teacher are combined;
/// recorded in `run.json` so an ablation says what it left out.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActiveTerms {
    /// Ranking distillation (λ > 0).
    pub ranking: bool,
    /// DRO (α > 0).
    pub dro: bool,
    /// Embedding distillation (ed_weight > 0 and the teacher has embeddings).
    pub embedding: bool,
    /// Trained rows (rows the student's objective supervises) with teacher output.
    pub teacher_rows: usize,
    /// Rows the student's objective supervises (`units::trained_rows`).
    pub trained_rows: usize,
    /// Candidates used per row.
    pub k: usize,
}

/// Embedding distillation's trainable projection `W z + b`.
struct EmbeddingProjection {
    z: Tensor,
    w: Tensor,
    b: Tensor,
    weight: f64,
}

/// DLLM2Rec distillation as a [`StageObjective`].
pub struct DistillObjective<'a> {
    ds: &'a Dataset,
    student_cfg: &'a StudentConfig,
    cfg: DistillConfig,
    teacher: TeacherRows,
    k: usize,
    weights: CandidateWeights,
    position: Vec<f64>,
    ps: Tensor,
    /// `ps` with a 0 in front (column 0 = padding), for the fused kernel.
    ps_padded: Tensor,
    ed: Option<EmbeddingProjection>,
    params: Params,
    terms: ActiveTerms,
}

impl<'a> DistillObjective<'a> {
    /// Builds the objective; `seed` initialises the projection.
    pub fn new(
        ds: &'a Dataset,
        student_cfg: &'a StudentConfig,
        cfg: &DistillConfig,
        teacher: TeacherRows,
        seed: u64,
    ) -> Result<Self> {
        let dev = Device::Cpu;
        if teacher.of_train.len() != ds.train.len() {
            bail!(
                "teacher rows cover {} training rows, the dataset has {}",
                teacher.of_train.len(),
                ds.train.len()
            );
        }
        cfg.check("the [distill] settings")?;
        if cfg.k > teacher.k {
            bail!(
                "distill.k = {} but the teacher cache holds only the top {} per row; lower distill.k or rebuild the cache",
                cfg.k,
                teacher.k
            );
        }
        let weights = CandidateWeights {
            gamma_position: cfg.gamma_position,
            gamma_confidence: cfg.gamma_confidence,
            gamma_consistency: cfg.gamma_consistency,
            tau: cfg.tau,
        };
        let position = weights.position(cfg.k);
        let ps_host = propensity(&ds.train_target_counts(), cfg.ps_power);
        let ps_padded = Tensor::from_vec(
            std::iter::once(0.0)
                .chain(ps_host.iter().copied())
                .collect(),
            ds.num_items() + 1,
            &dev,
        )?;
        let ps = Tensor::from_vec(ps_host, ds.num_items(), &dev)?;
        let mut params = Params::default();
        let d = student_cfg.hidden;
        let ed = match (&teacher.embeddings, cfg.ed_weight > 0.0) {
            (Some((z, dim)), true) => {
                let n1 = ds.num_items() + 1;
                if z.len() != n1 * dim {
                    bail!(
                        "teacher item embeddings hold {} values, expected {} × {dim}",
                        z.len(),
                        n1
                    );
                }
                let mut init = Init::new(seed ^ 0xED, &dev);
                let w = params.add("ed.weight", init.linear_weight(d, *dim)?)?;
                let b = params.add("ed.bias", init.uniform(&[d], 1.0 / (*dim as f64).sqrt())?)?;
                Some(EmbeddingProjection {
                    z: Tensor::from_vec(z.clone(), (n1, *dim), &dev)?,
                    w,
                    b,
                    weight: cfg.ed_weight,
                })
            }
            (None, true) => {
                tracing::warn!(
                    "the teacher cache has no item embeddings: embedding distillation is off"
                );
                None
            }
            _ => None,
        };
        let trained = trained_rows(ds, student_cfg.objective, student_cfg.max_len);
        let terms = ActiveTerms {
            ranking: cfg.lambda > 0.0,
            dro: cfg.alpha > 0.0,
            embedding: ed.is_some(),
            teacher_rows: trained
                .iter()
                .filter(|&&r| teacher.of_train[r].is_some())
                .count(),
            trained_rows: trained.len(),
            k: cfg.k,
        };
        Ok(DistillObjective {
            ds,
            student_cfg,
            cfg: cfg.clone(),
            k: cfg.k,
            teacher,
            weights,
            position,
            ps,
            ps_padded,
            ed,
            params,
            terms,
        })
    }

    /// The terms this objective trains with.
    pub fn terms(&self) -> &ActiveTerms {
        &self.terms
    }

    /// The item table the student reads: its own, or with the projected
    /// LLM embeddings added.
    fn table(&self, student: &Student) -> Result<Tensor> {
        let e = student.item_table();
        Ok(match &self.ed {
            Some(p) => projected_table(e, &p.z, &p.w, &p.b, p.weight)?,
            None => e.clone(),
        })
    }

    /// A negative for a distilled row: uniform outside its history, target
    /// and candidates.
    fn negative(&self, train_row: usize, cands: &[ItemId], rng: &mut ChaCha8Rng) -> ItemId {
        let row = &self.ds.train[train_row];
        let hist = self.ds.history(row);
        let target = self.ds.target(row);
        let n = self.ds.num_items() as u32;
        for _ in 0..1000 {
            let c = 1 + rng.gen_range(0..n);
            if c != target && !cands.contains(&c) && !hist.contains(&c) {
                return c;
            }
        }
        1 + rng.gen_range(0..n) // a catalogue (almost) covered by the row
    }

    /// What the fused kernel needs of the picked positions: targets, the
    /// teacher's candidates and weights, and a sampled negative each (drawn
    /// in the same order as the composed path draws them).
    fn distill_rows(
        &self,
        hb: &HostBatch,
        pick: &[u32],
        trows: &[(usize, usize)],
        rng: &mut ChaCha8Rng,
    ) -> DistillRows {
        let (m, k, tk) = (pick.len(), self.k, self.teacher.k);
        let mut rows = DistillRows {
            k,
            targets: Vec::with_capacity(m),
            cands: Vec::with_capacity(m * k),
            negs: Vec::with_capacity(m),
            wbase: Vec::with_capacity(m * k),
        };
        for (i, &(train_row, t)) in trows.iter().enumerate() {
            let c = &self.teacher.items[t * tk..t * tk + k];
            let d = &self.teacher.distances[t * tk..t * tk + k];
            rows.wbase.extend(self.weights.base(&self.position, d));
            rows.cands.extend_from_slice(c);
            rows.negs.push(self.negative(train_row, c, rng));
            rows.targets.push(hb.targets[pick[i] as usize]);
        }
        rows
    }

    /// The active terms' coefficients (an inactive term's is 0).
    fn coefs(&self) -> DistillCoefs {
        DistillCoefs {
            alpha: if self.terms.dro { self.cfg.alpha } else { 0.0 },
            lambda: if self.terms.ranking {
                self.cfg.lambda
            } else {
                0.0
            },
            beta: self.cfg.beta,
            gamma_consistency: self.cfg.gamma_consistency,
        }
    }

    /// The same terms from composed candle ops (other devices; the
    /// reference the fused kernel is tested against).
    fn composed_rows(
        &self,
        rep_d: &Tensor,
        table: &Tensor,
        hb: &HostBatch,
        pick: &[u32],
        trows: &[(usize, usize)],
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let dev = rep_d.device().clone();
        let m = pick.len();
        let k = self.k;
        let n = self.ds.num_items();
        let scores = rep_d.matmul(&table.t()?)?.narrow(1, 1, n)?.contiguous()?; // [M, N], column j = item j + 1
        let mut cands = Vec::with_capacity(m * k);
        let mut w = Vec::with_capacity(m * k);
        let mut negs = Vec::with_capacity(m);
        let mut targets = Vec::with_capacity(m);
        let host = if self.terms.ranking && self.cfg.gamma_consistency > 0.0 {
            Some(scores.to_vec2::<f32>()?)
        } else {
            None
        };
        let tk = self.teacher.k;
        for (i, &(train_row, t)) in trows.iter().enumerate() {
            let c = &self.teacher.items[t * tk..t * tk + k];
            let d = &self.teacher.distances[t * tk..t * tk + k];
            let in_top: Vec<bool> = match &host {
                Some(h) => {
                    let top = top_k_items(&h[i], k);
                    c.iter().map(|x| top.contains(x)).collect()
                }
                None => vec![false; k],
            };
            w.extend(self.weights.row(&self.position, d, &in_top));
            cands.extend_from_slice(c);
            negs.push(self.negative(train_row, c, rng));
            targets.push(hb.targets[pick[i] as usize]);
        }
        let cand_cols = item_columns(&cands, m, k, &dev)?;
        let w = Tensor::from_vec(w, (m, k), &dev)?;
        let mut per_row = Tensor::zeros(m, candle_core::DType::F32, &dev)?;
        let dro = if self.terms.dro {
            Some(DroRows::new(&scores, &self.ps, self.cfg.beta)?)
        } else {
            None
        };
        if let Some(dro) = &dro {
            let tcols = item_columns(&targets, m, 1, &dev)?;
            per_row = (per_row + (dro.loss(&tcols)?.squeeze(1)? * self.cfg.alpha)?)?;
        }
        if self.terms.ranking {
            let s_c = scores.gather(&cand_cols, 1)?;
            let s_n = scores
                .gather(&item_columns(&negs, m, 1, &dev)?, 1)?
                .squeeze(1)?;
            let mut rd = ranking_distill_rows(&s_c, &s_n, &w)?;
            if let Some(dro) = &dro {
                let dro_c = (dro.loss(&cand_cols)? * &w)?.sum(D::Minus1)?;
                rd = (rd + (dro_c * self.cfg.alpha)?)?;
            }
            per_row = (per_row + (rd * self.cfg.lambda)?)?;
        }
        Ok(per_row)
    }
}

impl StageObjective for DistillObjective<'_> {
    fn stage_name(&self) -> &str {
        "train.distill"
    }

    fn key(&self) -> serde_json::Value {
        serde_json::json!({
            "distill": self.cfg,
            "terms": self.terms,
            "teacher_rows": self.teacher.items.len() / self.teacher.k.max(1),
            "teacher_sha256": self.teacher.content_sha256,
        })
    }

    fn extra_params(&self) -> Option<&Params> {
        Some(&self.params)
    }

    fn batch_loss(
        &self,
        student: &Student,
        hb: &HostBatch,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let table = self.table(student)?;
        let rep = forward_rep(student, self.student_cfg, hb, &table, rng)?;
        if !(self.terms.ranking || self.terms.dro) {
            return base_loss(self.student_cfg, &rep, &table, hb);
        }
        // positions whose training row has teacher output
        let mut pick = Vec::new();
        let mut trows = Vec::new();
        for (i, &r) in hb.rows.iter().enumerate() {
            if r != NO_ROW {
                if let Some(t) = self.teacher.of_train[r as usize] {
                    pick.push(i as u32);
                    trows.push((r as usize, t));
                }
            }
        }
        if pick.is_empty() {
            return base_loss(self.student_cfg, &rep, &table, hb);
        }
        let supervised = hb.targets.iter().filter(|&&t| t != 0).count().max(1) as f64;
        let dev = rep.device().clone();
        if dev.is_cpu() && self.student_cfg.loss == LossKind::Ce {
            // the base cross-entropy and the distillation share one scoring pass
            let rows = self.distill_rows(hb, &pick, &trows, rng);
            let mut slot = vec![NO_SLOT; hb.targets.len()];
            for (i, &p) in pick.iter().enumerate() {
                slot[p as usize] = i as u32;
            }
            let per_row = fused_ce_distill_rows(
                &rep,
                &table,
                &self.ps_padded,
                hb.targets.clone(),
                slot,
                rows,
                self.coefs(),
            )?;
            return Ok((per_row.sum_all()? / supervised)?);
        }
        let base = base_loss(self.student_cfg, &rep, &table, hb)?;
        let m = pick.len();
        let rep_d = rep.index_select(&Tensor::from_vec(pick.clone(), m, &dev)?, 0)?;
        let per_row = if dev.is_cpu() {
            let rows = self.distill_rows(hb, &pick, &trows, rng);
            fused_distill_rows(&rep_d, &table, &self.ps_padded, rows, self.coefs())?
        } else {
            self.composed_rows(&rep_d, &table, hb, &pick, &trows, rng)?
        };
        Ok((base + (per_row.sum_all()? / supervised)?)?)
    }

    fn export(&self, student: &Student) -> Result<Option<Student>> {
        Ok(match &self.ed {
            Some(_) => Some(student.with_item_table(&self.table(student)?)?),
            None => None,
        })
    }
}
