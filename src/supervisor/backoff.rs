//! Restart delays: a pure function of the number of consecutive quick
//! failures, plus the small counter that tracks that number.

use std::time::Duration;

/// Delay before the second restart of a child that keeps failing quickly.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Upper bound of the restart delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Growth factor of the delay per further quick failure.
pub const DEFAULT_BACKOFF_FACTOR: u32 = 2;
/// A run at least this long counts as stable and resets the backoff. Ten
/// seconds covers the start-up phase of etcd and the apiserver, where most
/// configuration errors make them exit.
pub const DEFAULT_BACKOFF_STABLE_AFTER: Duration = Duration::from_secs(10);

/// How quickly a crashed child is restarted.
///
/// Let `k` be the number of consecutive quick failures before the current
/// exit (a failure is quick if the instance ran less than `stable_after`; a
/// failed spawn attempt is also a quick failure). The delay before the next
/// spawn is:
///
/// * `k = 0` (first exit after a stable run, or the first exit at all): **0**,
///   the child is restarted at once;
/// * `k = 1`: `initial`;
/// * `k = n`: `initial * factor^(n-1)`, capped at `max`.
///
/// With the defaults a child that exits immediately is restarted after 0,
/// 100 ms, 200 ms, 400 ms, ... 25.6 s, 30 s, 30 s, ... and an instance that
/// runs for `stable_after` (10 s) resets `k` to 0.
/// A manual [`Supervised::restart`](super::Supervised::restart) also resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the second consecutive quick failure; must be > 0.
    pub initial: Duration,
    /// Cap of the delay; must be >= `initial`.
    pub max: Duration,
    /// Multiplier per further quick failure; must be >= 1.
    pub factor: u32,
    /// Minimum run time that resets the sequence. Zero means every exit is
    /// restarted immediately (no backoff at all).
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
            factor: DEFAULT_BACKOFF_FACTOR,
            stable_after: DEFAULT_BACKOFF_STABLE_AFTER,
        }
    }
}

impl BackoffPolicy {
    /// The delay before the spawn that follows `quick_failures` consecutive
    /// quick failures (see the type docs). Pure and saturating: never panics
    /// or overflows, whatever the inputs.
    pub fn delay(&self, quick_failures: u32) -> Duration {
        if quick_failures == 0 {
            return Duration::ZERO;
        }
        let grown = self
            .factor
            .checked_pow(quick_failures - 1)
            .and_then(|mult| self.initial.checked_mul(mult))
            .unwrap_or(self.max);
        grown.min(self.max)
    }

    /// Why the policy is unusable, if it is.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.initial.is_zero() {
            Some("backoff.initial must be greater than zero")
        } else if self.max < self.initial {
            Some("backoff.max must not be smaller than backoff.initial")
        } else if self.factor == 0 {
            Some("backoff.factor must be at least 1")
        } else {
            None
        }
    }
}

/// Counts consecutive quick failures and turns each exit into a delay.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    quick_failures: u32,
}

impl Streak {
    /// An instance exited after running `ran_for`: returns the delay before
    /// the next spawn and counts this exit.
    pub(crate) fn on_exit(&mut self, policy: &BackoffPolicy, ran_for: Duration) -> Duration {
        if ran_for >= policy.stable_after {
            self.quick_failures = 0;
        }
        self.next(policy)
    }

    /// A spawn attempt failed: it counts as one more quick failure.
    pub(crate) fn on_spawn_failure(&mut self, policy: &BackoffPolicy) -> Duration {
        self.next(policy)
    }

    /// Deliberate restart: start over.
    pub(crate) fn reset(&mut self) {
        self.quick_failures = 0;
    }

    fn next(&mut self, policy: &BackoffPolicy) -> Duration {
        let delay = policy.delay(self.quick_failures);
        self.quick_failures = self.quick_failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_sequence_is_zero_then_doubling_to_the_cap() {
        let p = BackoffPolicy::default();
        let seq: Vec<Duration> = (0..12).map(|k| p.delay(k)).collect();
        assert_eq!(
            seq,
            vec![
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12800),
                ms(25600),
                ms(30000),
                ms(30000)
            ]
        );
    }

    #[test]
    fn huge_counts_saturate_at_max() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay(40), p.max);
        assert_eq!(p.delay(u32::MAX), p.max);
        let big = BackoffPolicy {
            factor: u32::MAX,
            ..p
        };
        assert_eq!(big.delay(3), p.max);
        let flat = BackoffPolicy { factor: 1, ..p };
        assert_eq!(flat.delay(u32::MAX), p.initial);
    }

    #[test]
    fn streak_resets_after_a_stable_run() {
        let p = BackoffPolicy {
            stable_after: ms(300),
            ..BackoffPolicy::default()
        };
        let mut s = Streak::default();
        assert_eq!(s.on_exit(&p, ms(5)), ms(0));
        assert_eq!(s.on_exit(&p, ms(5)), ms(100));
        assert_eq!(s.on_spawn_failure(&p), ms(200));
        assert_eq!(s.on_exit(&p, ms(299)), ms(400));
        // Ran long enough: the next restart is immediate again...
        assert_eq!(s.on_exit(&p, ms(300)), ms(0));
        // ...and the sequence starts over.
        assert_eq!(s.on_exit(&p, ms(1)), ms(100));
        s.reset();
        assert_eq!(s.on_exit(&p, ms(1)), ms(0));
    }

    #[test]
    fn invalid_policies_are_named() {
        let p = BackoffPolicy::default();
        assert_eq!(p.problem(), None);
        assert!(BackoffPolicy {
            initial: Duration::ZERO,
            ..p
        }
        .problem()
        .is_some());
        assert!(BackoffPolicy { factor: 0, ..p }.problem().is_some());
        assert!(BackoffPolicy { max: ms(10), ..p }.problem().is_some());
    }
}
