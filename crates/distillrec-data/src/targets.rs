//! The adapter targets: which projections of a decoder layer can carry an
//! adapter. One table for the config (`[teacher] targets`), the LLM (which
//! linear layer, `distillrec_llm::model::Target` is this type) and the
//! teacher's checkpoint tensor names (`adapter.<layer>.<name>.lora_A`), so
//! the three cannot disagree on names or order.
//!
//! `ALL`'s order is a file format: a layer's adapter slots are indexed by
//! position in `ALL`, and checkpoints name tensors by `name()`. Append new
//! targets at the end, never reorder or rename
//! (`tests::adapter_targets_keep_their_order_and_names`).

crate::named_enum! {
    /// A projection of a decoder layer that can carry an adapter.
    pub enum AdapterTarget {
        /// Query projection.
        Q = "q",
        /// Key projection.
        K = "k",
        /// Value projection.
        V = "v",
        /// Attention output projection.
        O = "o",
        /// SwiGLU gate projection (not in OPT).
        Gate = "gate",
        /// MLP up projection (OPT `fc1`).
        Up = "up",
        /// MLP down projection (OPT `fc2`).
        Down = "down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_targets_keep_their_order_and_names() {
        // checkpoint slots and tensor names depend on exactly this table
        assert_eq!(
            AdapterTarget::NAMES,
            ["q", "k", "v", "o", "gate", "up", "down"]
        );
        for (i, t) in AdapterTarget::ALL.into_iter().enumerate() {
            assert_eq!(t.name(), AdapterTarget::NAMES[i]);
        }
        assert_eq!(AdapterTarget::ALL[4], AdapterTarget::Gate);
    }
}
