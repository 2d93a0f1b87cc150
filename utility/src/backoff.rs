//! Exponential back-off with full jitter, for every loop that retries something outside the
//! process (the bus, the database).

use rand::RngExt;
use std::time::Duration;

/// Each delay is uniform in `[0, min(cap, base * 2^n)]`, which spreads the retries of many
/// instances instead of synchronising them; [`Backoff::reset`] starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(20)))
            .min(self.cap)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean of `n` delays drawn at the back-off's current attempt (the attempt is restored after
    /// each draw, so every sample comes from the same distribution).
    fn mean_at(backoff: &Backoff, n: u32) -> Duration {
        let total: Duration = (0..n).map(|_| backoff.clone().next_delay()).sum();
        total / n
    }

    #[test]
    fn delays_double_up_to_the_cap_and_restart_after_a_reset() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(base, cap);
        // The bound doubles per attempt until it meets the cap, then stays there.
        let ceilings: Vec<Duration> = (0..8)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling, "{delay:?} above its bound {ceiling:?}");
                ceiling
            })
            .collect();
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);

        // Full jitter: delays spread over the whole range, so their mean is about half the
        // bound (a back-off stuck at 0, or one that ignores jitter, fails here).
        let at_cap = mean_at(&backoff, 2000);
        assert!(
            (Duration::from_millis(850)..=Duration::from_millis(1150)).contains(&at_cap),
            "mean delay at the cap {at_cap:?}, expected about 1 s"
        );
        let mut fresh = Backoff::new(base, cap);
        let first = mean_at(&fresh, 2000);
        assert!(
            (Duration::from_millis(40)..=Duration::from_millis(60)).contains(&first),
            "mean first delay {first:?}, expected about 50 ms"
        );
        fresh.next_delay();
        fresh.next_delay();
        let third = mean_at(&fresh, 2000);
        assert!(
            third > first * 3,
            "the third delay ({third:?} on average) did not grow from the first ({first:?})"
        );

        backoff.reset();
        assert_eq!(backoff.ceiling(), base);
        let after_reset = mean_at(&backoff, 2000);
        assert!(
            after_reset < Duration::from_millis(60),
            "after a reset the mean delay is {after_reset:?}, expected about 50 ms again"
        );
    }
}
