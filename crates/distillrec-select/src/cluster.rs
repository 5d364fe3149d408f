//! Diversity-based selection on row vectors: k-center greedy (coreset),
//! k-means with proportional allocation, and k-means++ seeding (BADGE).
//! Distances are squared Euclidean; the per-point distance updates run in
//! parallel (rayon) and are exact, so the result depends only on the seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Lowers `min_d[i]` to the distance of point `i` to `center`.
fn update_min(points: &[f32], dim: usize, center: &[f32], min_d: &mut [f32]) {
    min_d
        .par_iter_mut()
        .zip(points.par_chunks(dim))
        .for_each(|(m, p)| {
            let d = dist2(p, center);
            if d < *m {
                *m = d;
            }
        });
}

/// The index of the largest value (the earlier one on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Greedy seeding shared by k-center and k-means++: starting from
/// `first` (with its score), repeatedly asks `pick(min_d, chosen)` for the
/// next centre given every point's squared distance to its nearest chosen
/// centre, until `n` are chosen. Returns `(index, score)` in index order,
/// the score of a later centre being its distance when chosen.
fn greedy_centres(
    points: &[f32],
    dim: usize,
    n: usize,
    first: (usize, f64),
    mut pick: impl FnMut(&[f32], &[bool]) -> usize,
) -> Vec<(usize, f64)> {
    let count = points.len() / dim.max(1);
    let mut chosen = vec![false; count];
    let mut min_d = vec![f32::INFINITY; count];
    let mut out = Vec::with_capacity(n.min(count));
    let mut next = first;
    loop {
        let i = next.0;
        out.push(next);
        chosen[i] = true;
        update_min(points, dim, &points[i * dim..(i + 1) * dim], &mut min_d);
        if out.len() >= n.min(count) {
            break;
        }
        let j = pick(&min_d, &chosen);
        next = (j, min_d[j] as f64);
    }
    out.sort_by_key(|&(i, _)| i);
    out
}

/// k-center greedy (Sener & Savarese): a seeded first centre, then always
/// the point farthest from every chosen one. Scores are the squared
/// distance at the time of choice; the first centre, chosen before any
/// distance exists, scores the radius it alone covers (its squared distance
/// to the farthest point), which is at least every later score. Every score
/// is finite, so a selection file can record it.
pub fn k_center_greedy(
    points: &[f32],
    dim: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, f64)> {
    let count = points.len() / dim.max(1);
    if count == 0 || n == 0 {
        return Vec::new();
    }
    let first = rng.gen_range(0..count);
    let centre = &points[first * dim..(first + 1) * dim];
    let radius = points
        .par_chunks(dim)
        .map(|p| dist2(p, centre))
        .reduce(|| 0.0, f32::max);
    greedy_centres(points, dim, n, (first, radius as f64), |min_d, chosen| {
        let mut best: Option<usize> = None;
        for (i, (&d, &c)) in min_d.iter().zip(chosen).enumerate() {
            if !c && best.is_none_or(|b| d > min_d[b]) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    })
}

/// k-means++ seeding (Arthur & Vassilvitskii) as BADGE uses it: the first
/// centre is the point with the largest norm, each next one is drawn with
/// probability ∝ squared distance to the nearest chosen centre.
pub fn kmeans_pp_seeds(
    points: &[f32],
    dim: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, f64)> {
    let count = points.len() / dim.max(1);
    if count == 0 || n == 0 {
        return Vec::new();
    }
    let norms: Vec<f32> = points
        .chunks(dim)
        .map(|p| p.iter().map(|x| x * x).sum())
        .collect();
    let first = argmax(&norms);
    greedy_centres(
        points,
        dim,
        n,
        (first, norms[first] as f64),
        |min_d, chosen| {
            let total: f64 = min_d
                .iter()
                .zip(chosen)
                .filter(|(_, &c)| !c)
                .map(|(&d, _)| d as f64)
                .sum();
            if total > 0.0 {
                let mut r = rng.gen::<f64>() * total;
                for (i, (&d, &c)) in min_d.iter().zip(chosen).enumerate() {
                    if c {
                        continue;
                    }
                    r -= d as f64;
                    if r <= 0.0 {
                        return i;
                    }
                }
                (0..count).rev().find(|&i| !chosen[i]).unwrap_or(0)
            } else {
                // every remaining point coincides with a centre: take them in order
                (0..count).find(|&i| !chosen[i]).unwrap_or(0)
            }
        },
    )
}

/// Most clusters `kmeans` forms; larger budgets are shared among them.
pub const MAX_CLUSTERS: usize = 128;

/// k-means selection: `min(n, MAX_CLUSTERS)` clusters (k-means++ init,
/// 20 Lloyd iterations), the budget shared among clusters in proportion to
/// their sizes (largest remainders), and within a cluster the points
/// nearest its centroid. Scores are the negative distance to the centroid.
pub fn kmeans_select(
    points: &[f32],
    dim: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, f64)> {
    let count = points.len() / dim.max(1);
    let n = n.min(count);
    if n == 0 {
        return Vec::new();
    }
    let k = n.min(MAX_CLUSTERS);
    let seeds = kmeans_pp_seeds(points, dim, k, rng);
    let mut centroids: Vec<f32> = seeds
        .iter()
        .flat_map(|&(i, _)| points[i * dim..(i + 1) * dim].to_vec())
        .collect();
    let mut assign = vec![0usize; count];
    for _ in 0..20 {
        assign
            .par_iter_mut()
            .zip(points.par_chunks(dim))
            .for_each(|(a, p)| {
                let mut best = (0, f32::INFINITY);
                for (c, cent) in centroids.chunks(dim).enumerate() {
                    let d = dist2(p, cent);
                    if d < best.1 {
                        best = (c, d);
                    }
                }
                *a = best.0;
            });
        let mut sums = vec![0f64; k * dim];
        let mut sizes = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            sizes[a] += 1;
            for j in 0..dim {
                sums[a * dim + j] += points[i * dim + j] as f64;
            }
        }
        for c in 0..k {
            if sizes[c] > 0 {
                for j in 0..dim {
                    centroids[c * dim + j] = (sums[c * dim + j] / sizes[c] as f64) as f32;
                }
            }
        }
    }
    let mut members: Vec<Vec<(f32, usize)>> = vec![Vec::new(); k];
    for (i, &a) in assign.iter().enumerate() {
        let d = dist2(
            &points[i * dim..(i + 1) * dim],
            &centroids[a * dim..(a + 1) * dim],
        );
        members[a].push((d, i));
    }
    // proportional quotas, largest remainders
    let mut quota: Vec<usize> = members.iter().map(|m| (m.len() * n) / count).collect();
    let mut rem: Vec<(usize, usize)> = members
        .iter()
        .enumerate()
        .map(|(c, m)| ((m.len() * n) % count, c))
        .collect();
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = n - quota.iter().sum::<usize>();
    for &(_, c) in &rem {
        if left == 0 {
            break;
        }
        if quota[c] < members[c].len() {
            quota[c] += 1;
            left -= 1;
        }
    }
    let mut out = Vec::with_capacity(n);
    for (c, m) in members.iter_mut().enumerate() {
        m.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        out.extend(m.iter().take(quota[c]).map(|&(d, i)| (i, -(d as f64))));
    }
    out.sort_by_key(|&(i, _)| i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Three tight groups of points on a line: 10 near 0, 10 near 100, 1 at 50.
    fn groups() -> Vec<f32> {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(i as f32 * 0.01);
        }
        for i in 0..10 {
            v.push(100.0 + i as f32 * 0.01);
        }
        v.push(50.0);
        v
    }

    #[test]
    fn coreset_covers_every_group() {
        let p = groups();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let got = k_center_greedy(&p, 1, 3, &mut rng);
        let vals: Vec<f32> = got.iter().map(|&(i, _)| p[i]).collect();
        assert!(vals.iter().any(|&v| v < 1.0), "{vals:?}");
        assert!(vals.iter().any(|&v| v > 99.0), "{vals:?}");
        assert!(vals.contains(&50.0), "{vals:?}");
        // every score is finite (a selection file refuses infinite ones), and
        // the first centre's radius bounds the later choices' distances
        assert!(got.iter().all(|&(_, s)| s.is_finite()), "{got:?}");
        let max = got.iter().map(|&(_, s)| s).fold(f64::MIN, f64::max);
        assert!(max >= 99.0 * 99.0 / 4.0, "{got:?}");
    }

    #[test]
    fn kmeans_shares_the_budget_by_cluster_size() {
        let p = groups();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let got = kmeans_select(&p, 1, 2, &mut rng);
        // two clusters: each big group gets one row
        let vals: Vec<f32> = got.iter().map(|&(i, _)| p[i]).collect();
        assert_eq!(got.len(), 2);
        assert!(
            vals.iter().any(|&v| v < 60.0) && vals.iter().any(|&v| v > 60.0),
            "{vals:?}"
        );
        let again = kmeans_select(&p, 1, 2, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(got, again);
    }

    #[test]
    fn kmeans_pp_starts_at_the_largest_norm_and_spreads() {
        let p = groups();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let got = kmeans_pp_seeds(&p, 1, 2, &mut rng);
        let vals: Vec<f32> = got.iter().map(|&(i, _)| p[i]).collect();
        assert!(
            vals.iter().any(|&v| v > 100.0),
            "largest norm first: {vals:?}"
        );
        assert!(vals.iter().any(|&v| v < 60.0), "then far away: {vals:?}");
    }
}
