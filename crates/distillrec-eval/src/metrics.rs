//! Top-K metrics for one target per row (SPEC 5).
//!
//! For a 1-based rank `r` of the target and a cut-off `K`:
//! - `hr@K` = 1 if `r <= K` else 0;
//! - `ndcg@K` = `1 / log2(r + 1)` if `r <= K` else 0 (the ideal DCG is 1);
//! - `recall@K` = `hr@K` (one relevant item per row);
//! - `mrr@K` = `1 / r` if `r <= K` else 0.
//!
//! Each metric is the mean over rows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

distillrec_data::named_enum! {
    /// A top-K metric family (the part of `ndcg@10` before the `@`).
    pub enum MetricKind {
        /// Hit ratio.
        Hr = "hr",
        /// Normalised discounted cumulative gain.
        Ndcg = "ndcg",
        /// Recall (equal to HR with one target).
        Recall = "recall",
        /// Mean reciprocal rank.
        Mrr = "mrr",
    }
}

/// One metric at one cut-off, spelled `kind@k` (`ndcg@10`) in configs,
/// flags and the keys of [`MetricAccumulator::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Metric {
    /// The family.
    pub kind: MetricKind,
    /// The cut-off K (at least 1).
    pub k: usize,
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind, self.k)
    }
}

/// A string that is not `kind@k`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metric '{0}' is not kind@K with kind one of {kinds} and K a positive integer (e.g. ndcg@10)", kinds = MetricKind::NAMES.join(", "))]
pub struct MetricError(String);

impl FromStr for Metric {
    type Err = MetricError;
    fn from_str(s: &str) -> Result<Self, MetricError> {
        let bad = || MetricError(s.to_string());
        let (kind, k) = s.split_once('@').ok_or_else(bad)?;
        let kind = MetricKind::from_name(kind).ok_or_else(bad)?;
        let k: usize = k.parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        Ok(Metric { kind, k })
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Accumulates per-row ranks into mean HR/NDCG/Recall/MRR at several cut-offs,
/// in O(|ks|) per row and without storing the ranks.
#[derive(Clone, Debug)]
pub struct MetricAccumulator {
    ks: Vec<usize>,
    hr: Vec<f64>,
    ndcg: Vec<f64>,
    mrr: Vec<f64>,
    count: usize,
}

impl MetricAccumulator {
    /// A fresh accumulator for the cut-offs `ks` (sorted and de-duplicated).
    pub fn new(ks: &[usize]) -> Self {
        let mut ks = ks.to_vec();
        ks.sort_unstable();
        ks.dedup();
        let n = ks.len();
        Self {
            ks,
            hr: vec![0.0; n],
            ndcg: vec![0.0; n],
            mrr: vec![0.0; n],
            count: 0,
        }
    }

    /// The cut-offs, sorted and de-duplicated.
    pub fn ks(&self) -> &[usize] {
        &self.ks
    }

    /// Adds one row whose target has 1-based rank `rank` among all candidates.
    /// A rank of 0 is a caller bug; it is treated as rank 1 in release builds.
    pub fn add(&mut self, rank: usize) {
        debug_assert!(rank >= 1, "ranks are 1-based");
        let rank = rank.max(1);
        let gain = 1.0 / ((rank as f64) + 1.0).log2();
        let rr = 1.0 / rank as f64;
        for (i, &k) in self.ks.iter().enumerate() {
            if rank <= k {
                self.hr[i] += 1.0;
                self.ndcg[i] += gain;
                self.mrr[i] += rr;
            }
        }
        self.count += 1;
    }

    /// Number of rows added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Mean metrics keyed `hr@K`, `ndcg@K`, `recall@K`, `mrr@K`. With no rows
    /// every value is 0 (callers such as `evaluate` refuse empty splits first).
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let denom = self.count.max(1) as f64;
        let mut out = BTreeMap::new();
        for (i, &k) in self.ks.iter().enumerate() {
            out.insert(format!("hr@{k}"), self.hr[i] / denom);
            out.insert(format!("recall@{k}"), self.hr[i] / denom);
            out.insert(format!("ndcg@{k}"), self.ndcg[i] / denom);
            out.insert(format!("mrr@{k}"), self.mrr[i] / denom);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_metrics_for_ranks_1_3_11() {
        let mut acc = MetricAccumulator::new(&[10, 1, 5, 5]);
        for r in [1, 3, 11] {
            acc.add(r);
        }
        assert_eq!(acc.count(), 3);
        assert_eq!(acc.ks(), &[1, 5, 10]);
        let m = acc.finish();
        assert_eq!(m.len(), 12);
        // rank 1 is a hit everywhere, rank 3 at K >= 5, rank 11 nowhere.
        assert!(close(m["hr@1"], 1.0 / 3.0));
        assert!(close(m["hr@5"], 2.0 / 3.0));
        assert!(close(m["hr@10"], 2.0 / 3.0));
        assert!(close(m["recall@5"], m["hr@5"]));
        assert!(close(m["recall@10"], m["hr@10"]));
        // ndcg: 1/log2(2) = 1, 1/log2(4) = 0.5.
        assert!(close(m["ndcg@1"], 1.0 / 3.0));
        assert!(close(m["ndcg@5"], 0.5));
        assert!(close(m["ndcg@10"], 0.5));
        // mrr: 1 and 1/3.
        assert!(close(m["mrr@1"], 1.0 / 3.0));
        assert!(close(m["mrr@5"], 4.0 / 9.0));
        assert!(close(m["mrr@10"], 4.0 / 9.0));
    }

    #[test]
    fn rank_exactly_k_is_a_hit() {
        let mut acc = MetricAccumulator::new(&[3]);
        acc.add(3);
        let m = acc.finish();
        assert!(close(m["hr@3"], 1.0));
        assert!(close(m["ndcg@3"], 0.5));
        assert!(close(m["mrr@3"], 1.0 / 3.0));
    }

    #[test]
    fn empty_accumulator_reports_zeros() {
        let acc = MetricAccumulator::new(&[1]);
        assert_eq!(acc.count(), 0);
        assert!(acc.finish().values().all(|&v| v == 0.0));
    }
}

#[cfg(test)]
mod metric_name_tests {
    use super::*;

    #[test]
    fn metrics_round_trip_through_their_names() {
        for kind in MetricKind::ALL {
            let m = Metric { kind, k: 20 };
            let s = m.to_string();
            assert_eq!(s, format!("{}@20", kind.name()));
            assert_eq!(s.parse::<Metric>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m);
        }
        // every key that finish() writes parses as a metric
        let mut acc = MetricAccumulator::new(&[1, 10]);
        acc.add(3);
        for key in acc.finish().keys() {
            assert_eq!(key.parse::<Metric>().unwrap().to_string(), *key);
        }
    }

    #[test]
    fn malformed_metrics_list_the_kinds() {
        for bad in ["auc@10", "ndcg", "ndcg@0", "ndcg@x", "NDCG@10"] {
            let e = bad.parse::<Metric>().unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("hr, ndcg, recall, mrr"),
                "{e}"
            );
        }
    }
}
