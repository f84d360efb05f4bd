use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Exponential backoff with jitter between reconnects.
///
/// The n-th delay after a success is drawn uniformly from
/// `[d/2, d]` where `d = min(max, min · 2ⁿ)`: the "equal jitter" scheme, so
/// a fleet that lost its server at once does not come back at once, and no
/// delay is shorter than half the nominal one. Seeded, so a run is
/// repeatable.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The nominal (unjittered) delay of the next attempt.
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; each call doubles the next one, up
    /// to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let spread = d.saturating_sub(half);
        let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        let extra = if nanos == 0 {
            0
        } else {
            self.rng.random_range(0..=nanos)
        };
        half + Duration::from_nanos(extra)
    }

    /// Back to the shortest delay (after a session made progress).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_in_bounds() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max, 1);
        let mut nominal = min;
        for _ in 0..20 {
            assert_eq!(b.nominal(), nominal);
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(max);
        }
        assert_eq!(b.nominal(), max);
        b.reset();
        assert_eq!(b.nominal(), min);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn same_seed_same_delays_and_no_overflow() {
        let mut a = Backoff::new(Duration::from_millis(10), Duration::from_secs(60), 7);
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(60), 7);
        for _ in 0..200 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
        assert!(a.next_delay() <= Duration::from_secs(60));
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO, 1);
        assert_eq!(z.next_delay(), Duration::ZERO);
    }
}
