//! The teacher's metric keys, in one place: the generative report writes
//! them, the training loop scores epochs by them, and the binary's summary
//! prints them (through `distillrec_pipeline::teacher_metric_keys`).

use distillrec_eval::{sampled::SAMPLED_PREFIX, Metric, MetricKind};

/// Share of generative answers that name exactly one candidate.
pub const VALID_RATIO: &str = "valid_ratio";
/// Generative HR@1: answers that name exactly the target.
pub const GEN_HR1: &str = "gen_hr@1";
/// Generative HR@1 among the valid answers.
pub const GEN_HR1_OF_VALID: &str = "gen_hr@1_of_valid";

/// Sampled HR@1 over the LLaRA candidates (the sampled protocol's key).
pub fn sampled_hr1() -> String {
    let hr1 = Metric {
        kind: MetricKind::Hr,
        k: 1,
    };
    format!("{SAMPLED_PREFIX}{hr1}")
}

/// The figures the ranking summary leaves out, in print order: sampled
/// HR@1, then the generative protocol.
pub fn summary() -> [String; 4] {
    [
        sampled_hr1(),
        VALID_RATIO.into(),
        GEN_HR1.into(),
        GEN_HR1_OF_VALID.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_metric_keys_keep_their_spellings() {
        // run records and reports already hold these names
        assert_eq!(
            summary(),
            [
                "sampled_hr@1",
                "valid_ratio",
                "gen_hr@1",
                "gen_hr@1_of_valid"
            ]
        );
    }
}
