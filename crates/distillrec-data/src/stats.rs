//! `data stats`: users, items, interactions, density, the sequence-length
//! distribution and the split sizes of a prepared dataset.

use serde::Serialize;

use crate::dataset::Dataset;
use crate::store::{counts, Counts};

/// A length distribution summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Distribution {
    /// Smallest value.
    pub min: usize,
    /// 25th percentile (nearest rank).
    pub p25: usize,
    /// Median (nearest rank).
    pub median: usize,
    /// 75th percentile.
    pub p75: usize,
    /// 90th percentile.
    pub p90: usize,
    /// Largest value.
    pub max: usize,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Distribution {
    /// Summarises `values` (None when empty).
    pub fn of(mut values: Vec<usize>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let q =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Distribution {
            min: values[0],
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            p90: q(0.9),
            max: values[values.len() - 1],
            mean: values.iter().sum::<usize>() as f64 / values.len() as f64,
        })
    }
}

/// Everything `data stats` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Dataset name.
    pub name: String,
    /// Content fingerprint, if known.
    pub fingerprint: Option<String>,
    /// Users (None if the layout has no user ids).
    pub users: Option<usize>,
    /// Catalogue size.
    pub items: usize,
    /// Interactions.
    pub interactions: usize,
    /// interactions / (users × items), when users are known.
    pub density: Option<f64>,
    /// Split strategy or layout name.
    pub split: String,
    /// Lengths of the stored sequences (users' logs, or rows' history+target).
    pub sequence_length: Option<Distribution>,
    /// History lengths of the test rows.
    pub test_history_length: Option<Distribution>,
    /// Row counts per split.
    pub splits: SplitCounts,
    /// Items whose title is only their raw id.
    pub items_without_title: usize,
}

/// Row counts per split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitCounts {
    /// Training rows.
    pub train: usize,
    /// Validation rows.
    pub valid: usize,
    /// Test rows.
    pub test: usize,
}

/// Computes the statistics of `ds`.
pub fn stats(ds: &Dataset, fingerprint: Option<String>) -> Stats {
    let Counts {
        users,
        items,
        interactions,
        train,
        valid,
        test,
        ..
    } = counts(ds);
    let split = ds
        .provenance
        .pointer("/options/split")
        .or_else(|| ds.provenance.pointer("/layout"))
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_string();
    Stats {
        name: ds.name.clone(),
        fingerprint,
        users,
        items,
        interactions,
        density: users.map(|u| interactions as f64 / (u as f64 * items as f64)),
        split,
        sequence_length: Distribution::of(ds.sequences.iter().map(|s| s.items.len()).collect()),
        test_history_length: Distribution::of(ds.test.iter().map(|r| r.pos as usize).collect()),
        splits: SplitCounts { train, valid, test },
        items_without_title: ds.items.iter().filter(|i| i.title == i.raw_id).count(),
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<usize>| v.map_or("unknown".to_string(), |x| x.to_string());
        writeln!(f, "dataset       {}", self.name)?;
        if let Some(fp) = &self.fingerprint {
            writeln!(f, "fingerprint   {fp}")?;
        }
        writeln!(f, "users         {}", opt(self.users))?;
        writeln!(f, "items         {}", self.items)?;
        writeln!(f, "interactions  {}", self.interactions)?;
        if let Some(d) = self.density {
            writeln!(f, "density       {:.4}%", 100.0 * d)?;
        }
        writeln!(f, "split         {}", self.split)?;
        writeln!(
            f,
            "rows          train {}  valid {}  test {}",
            self.splits.train, self.splits.valid, self.splits.test
        )?;
        for (label, d) in [
            ("seq length", &self.sequence_length),
            ("test history", &self.test_history_length),
        ] {
            if let Some(d) = d {
                writeln!(
                    f,
                    "{label:<13} min {}  p25 {}  median {}  mean {:.1}  p75 {}  p90 {}  max {}",
                    d.min, d.p25, d.median, d.mean, d.p75, d.p90, d.max
                )?;
            }
        }
        write!(f, "untitled      {}", self.items_without_title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let d = Distribution::of((1..=10).collect()).unwrap();
        assert_eq!(
            (d.min, d.p25, d.median, d.p75, d.p90, d.max),
            (1, 3, 5, 8, 9, 10)
        );
        assert!((d.mean - 5.5).abs() < 1e-12);
        assert!(Distribution::of(vec![]).is_none());
    }
}
