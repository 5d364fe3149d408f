//! Left padding of histories (SPEC 2.2).
//!
//! A history is truncated to its last `max_len` items and written at the
//! right end of the slot, padding (`0`) on the left, so the newest item is
//! always at position `max_len - 1` and a model reads its sequence
//! representation at the last position, never at a `len - 1` gather.

use crate::dataset::{ItemId, PAD};

/// Writes `history` left-padded into `slot` (length = `max_len`).
pub fn left_pad_into(slot: &mut [ItemId], history: &[ItemId]) {
    let l = slot.len();
    let take = history.len().min(l);
    let pad = l - take;
    slot[..pad].fill(PAD);
    slot[pad..].copy_from_slice(&history[history.len() - take..]);
}

/// Returns `history` left-padded to `max_len`.
pub fn left_pad(history: &[ItemId], max_len: usize) -> Vec<ItemId> {
    let mut v = vec![PAD; max_len];
    left_pad_into(&mut v, history);
    v
}

/// Left-pads a batch of histories into one row-major `[B, max_len]` buffer.
pub fn left_pad_batch<'a>(
    histories: impl IntoIterator<Item = &'a [ItemId]>,
    max_len: usize,
) -> Vec<ItemId> {
    let mut out = Vec::new();
    for h in histories {
        let start = out.len();
        out.resize(start + max_len, PAD);
        left_pad_into(&mut out[start..], h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_item_is_always_last() {
        assert_eq!(left_pad(&[5, 6], 4), vec![0, 0, 5, 6]);
        assert_eq!(left_pad(&[1, 2, 3, 4, 5, 6], 4), vec![3, 4, 5, 6]);
        assert_eq!(left_pad(&[], 3), vec![0, 0, 0]);
        let b = left_pad_batch([&[1u32][..], &[2, 3, 4][..]], 2);
        assert_eq!(b, vec![0, 1, 3, 4]);
    }
}
