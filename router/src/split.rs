//! Target selection: pure functions.
//!
//! A request maps to a point in `[0, 1)`: for a user, a stable hash of (served name, user); with
//! no user, a random draw. The targets' weights lay out consecutive intervals of `[0, 1)` in
//! config order, and the point picks the interval it falls in. A user therefore keeps their
//! target while the weights stay the same, and a weight change moves only the users whose point
//! lies in the part of an interval that changed owner: going from 90/10 to 80/20 moves exactly
//! the users in `[0.8, 0.9)` from the first target to the second, and nobody else.

use sha2::{Digest, Sha256};

/// The stable point of `user` on route `route`, in `[0, 1)`. SHA-256 based, so it is the same
/// in every router replica and across restarts.
pub fn user_point(route: &str, user: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0u8]);
    h.update(user.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    unit_interval(u64::from_be_bytes(first))
}

/// A random point in `[0, 1)` for a request without a user.
pub fn random_point() -> f64 {
    unit_interval(rand::random::<u64>())
}

fn unit_interval(bits: u64) -> f64 {
    // The top 53 bits, exactly representable as f64.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The index of the target whose weight interval holds `point` (`0 <= point < 1`), or `None`
/// when all weights are zero. Targets with weight 0 are never chosen.
pub fn pick(weights: &[u32], point: f64) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let x = point.clamp(0.0, 1.0) * total as f64;
    let mut cumulative = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        cumulative += u64::from(w);
        if w > 0 && x < cumulative as f64 {
            return Some(i);
        }
    }
    // point == 1.0 or rounding at the very top: the last target with weight.
    weights.iter().rposition(|&w| w > 0)
}

/// Backend URLs in the order to try them: the target's own, starting at `start` (round-robin),
/// then those of the other targets with the same revision.
pub fn attempt_order<'a>(
    own: &'a [String],
    start: usize,
    same_revision: impl Iterator<Item = &'a [String]>,
) -> Vec<&'a str> {
    let n = own.len();
    let mut out: Vec<&str> = (0..n).map(|i| own[(start + i) % n].as_str()).collect();
    for urls in same_revision {
        for u in urls {
            if !out.contains(&u.as_str()) {
                out.push(u);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_follows_cumulative_weights() {
        let w = [90, 10];
        assert_eq!(pick(&w, 0.0), Some(0));
        assert_eq!(pick(&w, 0.8999), Some(0));
        assert_eq!(pick(&w, 0.9), Some(1));
        assert_eq!(pick(&w, 0.99999), Some(1));
        assert_eq!(pick(&w, 1.0), Some(1));
        assert_eq!(pick(&[0, 5, 0], 0.0), Some(1));
        assert_eq!(pick(&[0, 5, 0], 0.999), Some(1));
        assert_eq!(pick(&[3, 0, 1], 0.76), Some(2));
        assert_eq!(pick(&[0, 0], 0.5), None);
        assert_eq!(pick(&[], 0.5), None);
    }

    #[test]
    fn user_points_are_stable_and_uniform() {
        assert_eq!(user_point("bot", "alice"), user_point("bot", "alice"));
        assert_ne!(user_point("bot", "alice"), user_point("other", "alice"));
        let n = 20_000;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let p = user_point("bot", &format!("user-{i}"));
            assert!((0.0..1.0).contains(&p));
            buckets[(p * 10.0) as usize] += 1;
        }
        for b in buckets {
            // Each decile holds 10% ± 1% of 20,000 users.
            assert!((1800..=2200).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn weight_change_moves_only_the_needed_users() {
        let n = 10_000;
        let mut moved = 0;
        for i in 0..n {
            let p = user_point("bot", &format!("u{i}"));
            let before = pick(&[90, 10], p);
            let after = pick(&[80, 20], p);
            if before != after {
                assert_eq!(
                    (before, after),
                    (Some(0), Some(1)),
                    "only stable → canary moves"
                );
                moved += 1;
            }
            // Users already on the canary stay there when it grows.
            if before == Some(1) {
                assert_eq!(after, Some(1));
            }
        }
        // About 10% of users move (the 10% of the interval that changed owner).
        assert!((800..=1200).contains(&moved), "{moved}");
    }

    #[test]
    fn attempt_order_round_robins_then_same_revision() {
        let own = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let other = vec!["d".to_string(), "a".to_string()];
        assert_eq!(
            attempt_order(&own, 4, std::iter::once(other.as_slice())),
            vec!["b", "c", "a", "d"]
        );
        assert_eq!(
            attempt_order(&own, 0, std::iter::empty()),
            vec!["a", "b", "c"]
        );
    }
}
