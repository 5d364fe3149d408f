//! Hand-built datasets for the unit tests.

use distillrec_data::{Dataset, Item, ItemId, Row, Sequence};

/// A dataset of `num_items` items over `seqs`, with rows given as
/// `(sequence, position)` per split; row keys are `s<seq>#<pos>`.
pub(crate) fn build(
    num_items: usize,
    seqs: &[&[ItemId]],
    train: &[(u32, u32)],
    valid: &[(u32, u32)],
    test: &[(u32, u32)],
) -> Dataset {
    let rows = |rs: &[(u32, u32)]| {
        rs.iter()
            .map(|&(seq, pos)| Row {
                key: format!("s{seq}#{pos}"),
                seq,
                pos,
            })
            .collect::<Vec<_>>()
    };
    Dataset {
        name: "tiny".into(),
        items: (1..=num_items)
            .map(|i| Item {
                raw_id: format!("raw{i}"),
                title: format!("Item {i}"),
            })
            .collect(),
        sequences: seqs
            .iter()
            .enumerate()
            .map(|(i, s)| Sequence {
                user: format!("u{i}"),
                items: s.to_vec(),
                timestamps: None,
            })
            .collect(),
        train: rows(train),
        valid: rows(valid),
        test: rows(test),
        users_known: true,
        row_layout: false,
        provenance: serde_json::Value::Null,
    }
}

/// Four items, three sequences. Train targets 2, 3, 2, 1 (counts
/// `[0, 1, 2, 1, 0]`); valid `s1#2` (target 1); test `s0#3` (history
/// `[1, 2, 3]`, target 2, a repeat), `s1#3` (target 4), `s2#2` (target 3).
pub(crate) fn tiny() -> Dataset {
    let ds = build(
        4,
        &[&[1, 2, 3, 2], &[3, 2, 1, 4], &[4, 1, 3]],
        &[(0, 1), (0, 2), (1, 1), (2, 1)],
        &[(1, 2)],
        &[(0, 3), (1, 3), (2, 2)],
    );
    ds.validate().expect("tiny dataset is valid");
    ds
}
