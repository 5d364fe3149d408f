//! The built-in synthetic dataset: no files needed, seeded, sized by
//! parameters (SPEC 3).
//!
//! Items are volumes of book/album *series*; each series belongs to a topic
//! and its titles say so ("Midnight Jazz, Vol. 3"). A user has a favourite
//! topic and walks through items:
//! - with probability `p_next` to the next volume of the current series
//!   (after the last volume, to the first volume of another series of the
//!   same topic) — sequential structure a sequence model learns and a
//!   popularity ranking cannot;
//! - with probability `p_topic` to a random item of the favourite topic —
//!   title semantics (shared topic words) that a text-aware teacher can use;
//! - otherwise to an item drawn from a Zipf popularity law.
//!
//! The log then goes through the ordinary [`crate::prepare::prepare`].

use rand::distributions::{Distribution, WeightedIndex};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::prepare::{RawInteraction, RawLog};

const TOPICS: [&str; 16] = [
    "Jazz",
    "Rock",
    "Space Opera",
    "Detective",
    "Cooking",
    "Travel",
    "Chess",
    "Gardening",
    "Poetry",
    "Horror",
    "Fantasy",
    "History",
    "Science",
    "Comedy",
    "Romance",
    "Sailing",
];
const ADJECTIVES: [&str; 12] = [
    "Midnight", "Golden", "Silent", "Crimson", "Northern", "Hidden", "Electric", "Ancient", "Wild",
    "Quiet", "Broken", "Endless",
];

/// Size and behaviour of the synthetic generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticOptions {
    /// Number of users.
    pub users: usize,
    /// Number of topics.
    pub topics: usize,
    /// Series per topic.
    pub series_per_topic: usize,
    /// Volumes per series.
    pub series_len: usize,
    /// Shortest user sequence.
    pub min_len: usize,
    /// Longest user sequence.
    pub max_len: usize,
    /// Probability of moving to the next volume.
    pub p_next: f64,
    /// Probability of a random item of the favourite topic.
    pub p_topic: f64,
    /// Zipf exponent of the popularity draw.
    pub zipf: f64,
    /// Generator seed.
    pub seed: u64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            users: 2000,
            topics: 8,
            series_per_topic: 5,
            series_len: 10,
            min_len: 20,
            max_len: 60,
            p_next: 0.6,
            p_topic: 0.25,
            zipf: 1.0,
            seed: 42,
        }
    }
}

/// Rough memory per generated interaction (or item title): the raw log,
/// the prepared dataset and its rows.
const BYTES_PER_INTERACTION: u64 = 64;

impl SyntheticOptions {
    /// Number of items the generator makes.
    pub fn num_items(&self) -> usize {
        self.topics
            .saturating_mul(self.series_per_topic)
            .saturating_mul(self.series_len)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(DataError::Invalid(format!("synthetic: {m}")));
        if self.users == 0 || self.num_items() == 0 {
            return bad("users, topics, series_per_topic and series_len must be positive");
        }
        if self.min_len < 3 || self.min_len > self.max_len {
            return bad("need 3 <= min_len <= max_len");
        }
        let probs_ok = (0.0..=1.0).contains(&self.p_next)
            && (0.0..=1.0).contains(&self.p_topic)
            && self.p_next + self.p_topic <= 1.0;
        if !(probs_ok && self.zipf.is_finite() && self.zipf >= 0.0) {
            return bad("p_next and p_topic must be probabilities summing to at most 1, zipf >= 0");
        }
        self.check_memory()
    }

    /// Refuses a log that cannot fit in memory: about
    /// [`BYTES_PER_INTERACTION`] for each of up to `users × max_len`
    /// interactions and each item's title, checked before any is made.
    fn check_memory(&self) -> Result<()> {
        use crate::memory::{check_fits, product};
        let b = BYTES_PER_INTERACTION;
        let needed = product(&[self.users as u64, self.max_len as u64, b])
            .saturating_add(product(&[self.num_items() as u64, b]));
        let setting = format!(
            "dataset.synthetic.users = {} (of up to max_len = {} interactions each, over {} items)",
            self.users,
            self.max_len,
            self.num_items()
        );
        check_fits(
            &setting,
            "the interaction log and the dataset made from it",
            needed,
        )
        .map_err(|e| DataError::Invalid(e.to_string()))
    }
}

/// The title of item index `i` (0-based) under `o`.
fn title(o: &SyntheticOptions, i: usize) -> String {
    let series = i / o.series_len;
    let vol = i % o.series_len + 1;
    let topic = series / o.series_per_topic;
    let s_in_topic = series % o.series_per_topic;
    let topic_name = match TOPICS.get(topic) {
        Some(t) => t.to_string(),
        None => format!(
            "{} {}",
            TOPICS[topic % TOPICS.len()],
            topic / TOPICS.len() + 1
        ),
    };
    let adj = ADJECTIVES[s_in_topic % ADJECTIVES.len()];
    let edition = s_in_topic / ADJECTIVES.len();
    if edition == 0 {
        format!("{adj} {topic_name}, Vol. {vol}")
    } else {
        format!("{adj} {topic_name} ({}), Vol. {vol}", edition + 1)
    }
}

/// Generates the synthetic interaction log.
pub fn generate(o: &SyntheticOptions) -> Result<RawLog> {
    o.check()?;
    let n = o.num_items();
    let items_per_topic = o.series_per_topic * o.series_len;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut log = RawLog::default();
    for i in 0..n {
        let idx = log.items.intern(&(i + 1).to_string());
        log.titles.insert(idx, title(o, i));
    }
    // Zipf popularity over a seeded random order of the items.
    let mut by_pop: Vec<usize> = (0..n).collect();
    by_pop.shuffle(&mut rng);
    let weights: Vec<f64> = (0..n)
        .map(|r| 1.0 / ((r + 1) as f64).powf(o.zipf))
        .collect();
    let popular =
        WeightedIndex::new(&weights).map_err(|e| DataError::Invalid(format!("synthetic: {e}")))?;
    for u in 0..o.users {
        let user = log.users.intern(&(u + 1).to_string());
        let topic = rng.gen_range(0..o.topics);
        let len = rng.gen_range(o.min_len..=o.max_len);
        let mut t: i64 = rng.gen_range(0..1_000_000);
        let mut cur = topic * items_per_topic + rng.gen_range(0..items_per_topic);
        for _ in 0..len {
            log.interactions.push(RawInteraction {
                user,
                item: cur as u32,
                timestamp: t,
                rating: None,
            });
            t += rng.gen_range(60..86_400);
            let x: f64 = rng.gen();
            cur = if x < o.p_next {
                if cur % o.series_len + 1 < o.series_len {
                    cur + 1
                } else {
                    let series = topic * o.series_per_topic + rng.gen_range(0..o.series_per_topic);
                    series * o.series_len
                }
            } else if x < o.p_next + o.p_topic {
                topic * items_per_topic + rng.gen_range(0..items_per_topic)
            } else {
                by_pop[popular.sample(&mut rng)]
            };
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::{prepare, PrepareOptions};

    #[test]
    fn seeded_and_sized() {
        let o = SyntheticOptions {
            users: 50,
            ..Default::default()
        };
        let a = prepare(
            "synthetic",
            &generate(&o).unwrap(),
            &PrepareOptions::default(),
            42,
        )
        .unwrap();
        let b = prepare(
            "synthetic",
            &generate(&o).unwrap(),
            &PrepareOptions::default(),
            42,
        )
        .unwrap();
        assert_eq!(a, b);
        let c = generate(&SyntheticOptions {
            seed: 1,
            ..o.clone()
        })
        .unwrap();
        let c = prepare("synthetic", &c, &PrepareOptions::default(), 42).unwrap();
        assert_ne!(a.sequences, c.sequences);
        assert_eq!(a.num_users(), Some(50));
        assert_eq!(a.valid.len(), 50);
        assert!(a.num_items() <= o.num_items());
    }

    #[test]
    fn titles_carry_series_and_volume() {
        let o = SyntheticOptions::default();
        assert_eq!(title(&o, 0), "Midnight Jazz, Vol. 1");
        assert_eq!(title(&o, 11), "Golden Jazz, Vol. 2");
        assert_eq!(title(&o, 50), "Midnight Rock, Vol. 1");
        let many = SyntheticOptions {
            topics: 20,
            series_per_topic: 13,
            ..o
        };
        let titles: std::collections::HashSet<String> =
            (0..many.num_items()).map(|i| title(&many, i)).collect();
        assert_eq!(titles.len(), many.num_items(), "titles must be unique");
    }

    #[test]
    fn next_volume_transitions_dominate() {
        // The structure a sequence model must find: most steps go to the next volume.
        let o = SyntheticOptions {
            users: 200,
            ..Default::default()
        };
        let log = generate(&o).unwrap();
        let mut next = 0;
        let mut total = 0;
        for w in log.interactions.windows(2) {
            if w[0].user == w[1].user {
                total += 1;
                if w[1].item == w[0].item + 1
                    && !(w[0].item as usize + 1).is_multiple_of(o.series_len)
                {
                    next += 1;
                }
            }
        }
        let frac = next as f64 / total as f64;
        assert!(frac > 0.5 && frac < 0.7, "next-volume fraction {frac}");
    }
}
