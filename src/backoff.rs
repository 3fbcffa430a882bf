//! Pauses between attempts, written once: a growing back-off and the random
//! durations that spread many processes apart (its jitter, `--jitter`,
//! Redlock's pause after a split vote).

use std::time::{Duration, Instant};

/// A pause that grows by `factor` from `first` up to `cap` after each
/// attempt, optionally drawn at random from 50–100 % of the step (so that
/// many clients cut off by the same failure do not all come back at the
/// same instant), and never reaching past an optional deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    step: Duration,
    factor: u32,
    cap: Duration,
    jitter: bool,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Growing by `factor` (at least 1) from `first` to `cap`, without
    /// jitter or deadline.
    pub fn new(first: Duration, factor: u32, cap: Duration) -> Backoff {
        Backoff {
            first,
            step: first,
            factor: factor.max(1),
            cap: cap.max(first),
            jitter: false,
            deadline: None,
        }
    }

    /// Each pause a random 50–100 % of its step.
    pub fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// No pause reaches past `deadline`; after it, [`Backoff::next`] says None.
    pub fn until(mut self, deadline: Instant) -> Backoff {
        self.deadline = Some(deadline);
        self
    }

    /// The next pause, and the step after it grows; None once the deadline
    /// has passed. A pause is cut short at the deadline.
    pub fn next(&mut self) -> Option<Duration> {
        let left = match self.deadline {
            Some(d) => Some(
                d.checked_duration_since(Instant::now())
                    .filter(|l| !l.is_zero())?,
            ),
            None => None,
        };
        let pause = if self.jitter {
            jitter(self.step)
        } else {
            self.step
        };
        self.step = self.step.saturating_mul(self.factor).min(self.cap);
        Some(left.map_or(pause, |l| pause.min(l)))
    }

    /// The next pause, never longer than `limit` (zero past the deadline).
    pub fn next_within(&mut self, limit: Duration) -> Duration {
        self.next().unwrap_or(Duration::ZERO).min(limit)
    }

    /// Sleeps the next pause; false (at once) when the deadline has passed.
    pub fn sleep(&mut self) -> bool {
        match self.next() {
            Some(p) => {
                std::thread::sleep(p);
                true
            }
            None => false,
        }
    }

    /// Something worked: the next pause starts from `first` again.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A random duration between half of `step` and `step`.
pub fn jitter(step: Duration) -> Duration {
    let half = step / 2;
    half + random_below(step - half + Duration::from_nanos(1)).min(step - half)
}

/// A random duration in `[low, high)` (`low` when the range is empty).
pub fn random_between(low: Duration, high: Duration) -> Duration {
    low + random_below(high.saturating_sub(low))
}

/// A uniformly random duration in `[0, limit)` (zero for a zero limit).
pub fn random_below(limit: Duration) -> Duration {
    let span = limit.as_nanos().min(u128::from(u64::MAX)) as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random_u64() % span)
}

/// Random bits from the OS; should that fail, bits that still differ
/// between processes and instants (spreading pauses needs no secrecy).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 32 ^ u64::from(t)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steps_grow_by_the_factor_up_to_the_cap() {
        let mut b = Backoff::new(10 * MS, 2, 75 * MS);
        let steps: Vec<_> = (0..6).map(|_| b.next().unwrap()).collect();
        assert_eq!(
            steps,
            [10 * MS, 20 * MS, 40 * MS, 75 * MS, 75 * MS, 75 * MS]
        );
        let mut b = Backoff::new(MS, 10, Duration::from_secs(1));
        let steps: Vec<_> = (0..5).map(|_| b.next().unwrap()).collect();
        assert_eq!(steps, [MS, 10 * MS, 100 * MS, 1000 * MS, 1000 * MS]);
    }

    #[test]
    fn reset_starts_from_the_first_step() {
        let mut b = Backoff::new(10 * MS, 2, Duration::from_secs(1));
        b.next();
        b.next();
        b.reset();
        assert_eq!(b.next(), Some(10 * MS));
    }

    #[test]
    fn jittered_pauses_stay_between_half_and_the_whole_step() {
        let mut b = Backoff::new(100 * MS, 2, 400 * MS).jittered();
        let mut seen = Vec::new();
        for step in [100, 200, 400, 400, 400, 400, 400, 400] {
            let p = b.next().unwrap();
            assert!(
                p >= step * MS / 2 && p <= step * MS,
                "{p:?} for a step of {step} ms"
            );
            seen.push(p);
        }
        // Random, not a fixed fraction: the capped steps do not all agree.
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 3, "{seen:?}");
    }

    #[test]
    fn no_pause_reaches_past_the_deadline() {
        let deadline = Instant::now() + 50 * MS;
        let mut b = Backoff::new(Duration::from_secs(1), 2, Duration::from_secs(8)).until(deadline);
        let p = b.next().unwrap();
        assert!(p <= 50 * MS && !p.is_zero(), "{p:?}");
        let mut past = Backoff::new(MS, 2, MS).until(Instant::now() - MS);
        assert_eq!(past.next(), None);
        assert!(!past.sleep());
        assert_eq!(past.next_within(Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn next_within_keeps_under_the_limit() {
        let mut b = Backoff::new(10 * MS, 2, Duration::from_secs(1));
        assert_eq!(b.next_within(4 * MS), 4 * MS);
        assert_eq!(b.next_within(Duration::from_secs(1)), 20 * MS);
    }

    #[test]
    fn random_durations_stay_in_their_ranges() {
        for _ in 0..200 {
            let j = jitter(100 * MS);
            assert!(j >= 50 * MS && j <= 100 * MS, "{j:?}");
            let r = random_between(50 * MS, 250 * MS);
            assert!(r >= 50 * MS && r < 250 * MS, "{r:?}");
            assert!(random_below(3 * MS) < 3 * MS);
        }
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
        assert_eq!(random_between(5 * MS, 5 * MS), 5 * MS);
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
