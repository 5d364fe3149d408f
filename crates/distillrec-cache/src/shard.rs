//! Shards of teacher inference: `--shard i/n` runs the `i`-th of `n`
//! contiguous blocks of the selected rows, so that any batch scheduler can
//! spread inference over machines; the shard caches merge by key.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use distillrec_data::DataError;
use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (0-based: the shards of a 2-way split are `0/2`
/// and `1/2`). Recorded in a shard cache's manifest so that a merge can
/// check that every shard is present exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardSpec {
    /// 0-based shard number, below `count`.
    pub index: usize,
    /// Number of shards, at least 1.
    pub count: usize,
}

impl ShardSpec {
    /// The rows of `0..rows` this shard handles: contiguous blocks whose
    /// sizes differ by at most one, in order, covering `0..rows` exactly once
    /// over `index = 0..count`.
    pub fn range(&self, rows: usize) -> Range<usize> {
        let at = |i: usize| ((i as u128 * rows as u128) / self.count.max(1) as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardSpec {
    type Err = DataError;

    /// Parses `"i/n"` with `0 <= i < n` and `n >= 1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            DataError::Invalid(format!(
                "shard '{s}': {why} (expected i/n with 0-based i < n, e.g. 0/4 .. 3/4)"
            ))
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| bad("the index is not a whole number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        if index >= count {
            return Err(bad("the index must be below the count"));
        }
        Ok(ShardSpec { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let s: ShardSpec = "1/3".parse().unwrap();
        assert_eq!(s, ShardSpec { index: 1, count: 3 });
        assert_eq!(s.to_string(), "1/3");
        assert_eq!(" 0/1 ".parse::<ShardSpec>().unwrap().count, 1);
        for (bad, why) in [
            ("3/3", "below the count"),
            ("0/0", "at least 1"),
            ("a/2", "index is not"),
            ("1/x", "count is not"),
            ("12", "no '/'"),
            ("-1/2", "index is not"),
        ] {
            let e = bad.parse::<ShardSpec>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_cover_rows_once_in_near_equal_blocks() {
        for rows in [0usize, 1, 5, 10, 11, 97] {
            for count in 1..=7 {
                let mut next = 0;
                for index in 0..count {
                    let r = ShardSpec { index, count }.range(rows);
                    assert_eq!(r.start, next, "rows {rows} shard {index}/{count}");
                    let len = r.len();
                    assert!(len == rows / count || len == rows / count + 1);
                    next = r.end;
                }
                assert_eq!(next, rows);
            }
        }
        assert_eq!(ShardSpec { index: 1, count: 2 }.range(5), 2..5);
    }
}
