//! Recorded numbers checked against what they mean, so a report never
//! averages a hit ratio of −5, a NDCG of 1e308 or an infinite loss: a value
//! outside its range is left out with a warning that names the run and the
//! key.

use distillrec_eval::Metric;

/// The values a recorded number may take, decided from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Range {
    /// A ranking metric (hr, ndcg, recall, mrr, precision at a cut-off, or
    /// a `valid_` column of one, or a fraction): in `[0, 1]`.
    Unit,
    /// A loss, seconds, milliseconds, megabytes, a rate or an epoch:
    /// finite and at least 0.
    NonNegative,
    /// Anything else: finite.
    Finite,
}

impl Range {
    /// The range of the number named `key` (`hr@10`, `valid_ndcg@10`,
    /// `train_loss`, `epoch_secs`, ...).
    pub(crate) fn of(key: &str) -> Range {
        let name = key.strip_prefix("valid_").unwrap_or(key);
        let kind = name.split_once('@').map_or(name, |(k, _)| k);
        if name.parse::<Metric>().is_ok() || kind == "precision" || name == "fraction" {
            Range::Unit
        } else if name.contains("loss")
            || name == "epoch"
            || ["secs", "_ms", "_mb", "per_sec"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            Range::NonNegative
        } else {
            Range::Finite
        }
    }

    /// Whether `v` is in the range.
    pub(crate) fn admits(self, v: f64) -> bool {
        match self {
            Range::Unit => (0.0..=1.0).contains(&v),
            Range::NonNegative => v.is_finite() && v >= 0.0,
            Range::Finite => v.is_finite(),
        }
    }

    /// The range in words, for warnings.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Range::Unit => "in [0, 1]",
            Range::NonNegative => "finite and at least 0",
            Range::Finite => "finite",
        }
    }
}

/// A value for a warning: plain when short, in exponent notation when huge
/// or tiny (`1e308`, not 309 digits).
pub(crate) fn show(v: f64) -> String {
    let a = v.abs();
    if a.is_finite() && a != 0.0 && !(1e-4..1e9).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Keeps `value` of `key` when its range admits it; otherwise pushes a
/// warning (`<place>: <key> = <value> is not <range>; left out of the
/// report`) and returns `None`.
pub(crate) fn checked(
    value: Option<f64>,
    key: &str,
    place: &dyn Fn() -> String,
    warnings: &mut Vec<String>,
) -> Option<f64> {
    let v = value?;
    let range = Range::of(key);
    if range.admits(v) {
        return Some(v);
    }
    warnings.push(format!(
        "{}: `{key}` = {} is not {}; left out of the report",
        place(),
        show(v),
        range.describe()
    ));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_meaning_of_the_name() {
        for key in [
            "hr@10",
            "ndcg@20",
            "recall@5",
            "mrr@10",
            "precision@3",
            "valid_hr@1",
        ] {
            assert_eq!(Range::of(key), Range::Unit, "{key}");
        }
        for key in [
            "train_loss",
            "wall_secs",
            "p50_ms",
            "peak_mb",
            "epoch",
            "tokens_per_sec",
        ] {
            assert_eq!(Range::of(key), Range::NonNegative, "{key}");
        }
        assert_eq!(Range::of("temperature"), Range::Finite);
        let unit = Range::Unit;
        assert!(unit.admits(0.0) && unit.admits(1.0) && unit.admits(0.25));
        for v in [-5.0, 1e308, f64::INFINITY, f64::NAN, 1.0 + 1e-9] {
            assert!(!unit.admits(v), "{v}");
        }
        assert!(!Range::NonNegative.admits(-0.5));
        assert!(!Range::NonNegative.admits(f64::INFINITY));
        assert!(Range::Finite.admits(-0.5));
        assert!(!Range::Finite.admits(f64::NAN));
    }

    #[test]
    fn a_rejected_value_is_a_warning_naming_place_and_key() {
        let mut w = Vec::new();
        let place = || "runs/a/metrics.json: test".to_string();
        assert_eq!(checked(Some(0.5), "hr@10", &place, &mut w), Some(0.5));
        assert_eq!(checked(None, "hr@10", &place, &mut w), None);
        assert!(w.is_empty());
        assert_eq!(checked(Some(-5.0), "hr@10", &place, &mut w), None);
        assert_eq!(
            w,
            ["runs/a/metrics.json: test: `hr@10` = -5 is not in [0, 1]; left out of the report"]
        );
        assert_eq!(show(1e308), "1e308");
        assert_eq!(show(f64::INFINITY), "inf");
        assert_eq!(show(0.25), "0.25");
    }
}
