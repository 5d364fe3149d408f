//! The closed sets of the `[selection]` group: the policy names and the
//! budget. They live here, not in `distillrec-select`, because the config
//! names them and `distillrec-select` depends on this crate, not the other
//! way round; `distillrec-select` re-exports both.

use std::fmt;
use std::str::FromStr;

use serde::{Deserializer, Serialize, Serializer};

distillrec_data::named_enum! {
    /// A selection policy (SPEC 8): which training rows the teacher sees.
    pub enum Policy {
        /// Every row.
        All = "all",
        /// Seeded uniform sample.
        Random = "random",
        /// Student loss on the target, highest first.
        Loss = "loss",
        /// Entropy of the student's distribution, highest first.
        Entropy = "entropy",
        /// `1 − max p`, highest first.
        LeastConfidence = "least_confidence",
        /// `p₁ − p₂`, smallest first.
        Margin = "margin",
        /// Output-layer gradient norm, highest first.
        GradientNorm = "gradient_norm",
        /// k-center greedy on representations.
        Coreset = "coreset",
        /// k-means on representations, nearest rows to the centroids.
        Kmeans = "kmeans",
        /// k-means++ seeding on gradient embeddings.
        Badge = "badge",
        /// Teacher–student KL over the candidates above a threshold.
        Kl = "kl",
        /// Student probability of the target below a threshold.
        GtError = "gt_error",
    }
}

impl Policy {
    /// Whether the policy reads the student's per-row signals (every
    /// informed policy but the `kl` filter, which compares with the teacher).
    pub fn needs_signals(self) -> bool {
        !matches!(self, Policy::All | Policy::Random | Policy::Kl)
    }
}

/// How many rows the teacher may see.
///
/// Spelled in a config as a TOML number or string (`budget = 0.25`,
/// `1.0`, `"25%"`, or an integer count `1000` of at least 2) and on the
/// command line the same way (`--budget 25%`); a bare `1` is refused in both,
/// because it could mean one row or every row. Records (selection sidecars,
/// run records) serialise it with [`Serialize`] as `{"fraction": 0.25}` or
/// `{"count": 1000}`; the config uses [`as_config_value`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A fraction of the pool in (0, 1].
    Fraction(f64),
    /// A number of rows.
    Count(usize),
}

/// A budget that is not one of the spellings of [`Budget`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BudgetError(String);

/// What a bare `1` gets told.
const AMBIGUOUS_ONE: &str =
    "is ambiguous: write 100% or 1.0 for every row, or a count of at least 2";

impl FromStr for Budget {
    type Err = BudgetError;
    /// `0.25`, `25%`, `1.0` (fractions) or `1000` (a count; any integer of at
    /// least 2). A bare `1` is refused: it could mean one row or every row.
    fn from_str(s: &str) -> Result<Self, BudgetError> {
        let t = s.trim();
        let bad = || {
            BudgetError(format!("budget '{s}': expected a fraction in (0, 1] such as 0.25 or 25%, or a row count such as 1000"))
        };
        if t.parse::<u64>() == Ok(1) {
            return Err(BudgetError(format!("budget '{s}' {AMBIGUOUS_ONE}")));
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            return Budget::from_value(v / 100.0).map_err(|_| bad());
        }
        let v: f64 = t.parse().map_err(|_| bad())?;
        Budget::from_value(v).map_err(|_| bad())
    }
}

impl fmt::Display for Budget {
    /// `0.25`, `100%` (never the ambiguous `1`) or `1000`: a spelling
    /// [`FromStr`] reads back exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Fraction(x) if *x == 1.0 => f.write_str("100%"),
            Budget::Fraction(x) => write!(f, "{x}"),
            Budget::Count(c) => write!(f, "{c}"),
        }
    }
}

impl Budget {
    /// From a number: a fraction when ≤ 1, a count when an integer above 1.
    pub fn from_value(v: f64) -> Result<Self, BudgetError> {
        if !(v > 0.0 && v.is_finite()) {
            return Err(BudgetError(format!("budget {v}: must be > 0")));
        }
        if v <= 1.0 {
            Ok(Budget::Fraction(v))
        } else if v.fract() == 0.0 {
            Ok(Budget::Count(v as usize))
        } else {
            Err(BudgetError(format!(
                "budget {v}: a count must be a whole number"
            )))
        }
    }

    /// The number of rows out of a pool of `pool` (at least 1, at most the pool).
    pub fn rows(self, pool: usize) -> usize {
        match self {
            Budget::Fraction(f) => ((f * pool as f64).round() as usize).clamp(1.min(pool), pool),
            Budget::Count(c) => c.min(pool),
        }
    }
}

/// The config spelling of a [`Budget`] (`#[serde(with = ...)]`): a fraction
/// is written as a TOML float, a count as an integer; read back from a float,
/// an integer of at least 2, or a string (`"25%"`).
pub mod as_config_value {
    use super::*;

    /// Writes a fraction as a float and a count as an integer.
    pub fn serialize<S: Serializer>(b: &Budget, s: S) -> Result<S::Ok, S::Error> {
        match *b {
            Budget::Fraction(x) => s.serialize_f64(x),
            Budget::Count(c) => s.serialize_u64(c as u64),
        }
    }

    /// Reads a float, an integer (not 1) or a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Budget, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Budget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a fraction in (0, 1] such as 0.25 or \"25%\", or a row count of at least 2",
                )
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Budget, E> {
                Budget::from_value(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Budget, E> {
                match v {
                    1 => Err(E::custom(format!("budget 1 {AMBIGUOUS_ONE}"))),
                    2.. => Ok(Budget::Count(v as usize)),
                    _ => Err(E::custom(format!("budget {v}: must be > 0"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Budget, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Budget, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_display_reads_back() {
        for b in [
            Budget::Fraction(0.1),
            Budget::Fraction(1.0),
            Budget::Count(1000),
        ] {
            assert_eq!(b.to_string().parse::<Budget>().unwrap(), b);
        }
        assert_eq!(Budget::Fraction(0.25).to_string(), "0.25");
        assert_eq!(Budget::Fraction(1.0).to_string(), "100%");
    }

    #[test]
    fn the_sidecar_spelling_is_a_value_not_a_debug_string() {
        let j = serde_json::to_string(&Budget::Fraction(0.25)).unwrap();
        assert_eq!(j, r#"{"fraction":0.25}"#);
        let j = serde_json::to_string(&Budget::Count(7)).unwrap();
        assert_eq!(j, r#"{"count":7}"#);
    }
}
