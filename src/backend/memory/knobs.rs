//! The knobs of one memory handle: injected failures and hangs, lost
//! races, and counts of the calls made.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// Counts of the requests a handle made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub acquire: u32,
    pub renew: u32,
    pub release: u32,
    pub force: u32,
    pub status: u32,
    pub waiter: u32,
    pub reconnect: u32,
    /// Requests answered with an injected failure (hang timeouts included).
    pub failed: u32,
    /// Waits this backend took over from the core (see `Knobs::own_wait`).
    pub own_waits: u32,
    /// Writes that lost a race (see `Knobs::lose_races`).
    pub lost: u32,
}

/// Fault injection and observation for one handle; keep a clone (from
/// [`MemoryBackend::knobs`]) before handing the backend to the core.
#[derive(Default)]
pub struct Knobs {
    pub(super) state: Mutex<KnobState>,
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct KnobState {
    /// Requests to let through before the failures start.
    pub(super) skip: u32,
    pub(super) fail: u32,
    /// Injected failures happen after the request took effect (a lost reply).
    pub(super) after_applying: bool,
    pub(super) hang: Duration,
    /// The backend runs its own wait loop (`Backend::acquire_waiting`).
    pub(super) own_wait: bool,
    /// Writes still to lose, as if another client wrote after each read.
    pub(super) lose: usize,
    pub(super) calls: Calls,
    pub(super) last_set_timeout: Option<Instant>,
    /// For the last renewal answered Done: when `set_timeout` was last called
    /// before it, and when the renewal arrived.
    pub(super) last_renewed: Option<(Instant, Instant)>,
}

impl Knobs {
    /// The next `n` requests fail as a broken connection would.
    pub fn fail_next(&self, n: u32) {
        self.fail_after(0, n);
    }

    /// `skip` requests succeed, then `n` fail.
    pub fn fail_after(&self, skip: u32, n: u32) {
        let mut k = lock(&self.state);
        k.skip = skip;
        k.fail = n;
    }

    /// Injected failures come after the request took effect: the reply was lost.
    pub fn lose_replies(&self, yes: bool) {
        lock(&self.state).after_applying = yes;
    }

    /// Every request takes `d` (bounded by the timeout, which fails it).
    pub fn hang(&self, d: Duration) {
        lock(&self.state).hang = d;
    }

    /// Waits go through the backend's own loop instead of the core's.
    pub fn own_wait(&self, yes: bool) {
        lock(&self.state).own_wait = yes;
    }

    /// The next `n` writes find the value changed since their read, as if
    /// another client wrote in between; each is counted in `Calls::lost`.
    pub fn lose_races(&self, n: usize) {
        lock(&self.state).lose = n;
    }

    pub fn calls(&self) -> Calls {
        lock(&self.state).calls
    }

    /// Blocks until `ready(calls)` or `timeout`; returns the last counts seen.
    pub fn await_calls(&self, timeout: Duration, ready: impl Fn(&Calls) -> bool) -> Calls {
        let k = lock(&self.state);
        let (k, _) = self
            .changed
            .wait_timeout_while(k, timeout, |k| !ready(&k.calls))
            .unwrap_or_else(|e| e.into_inner());
        k.calls
    }

    /// Bounds of the instant the last successful renewal was sent: after
    /// the `set_timeout` before it, and before it arrived.
    pub fn last_renewal_sent(&self) -> Option<(Instant, Instant)> {
        lock(&self.state).last_renewed
    }
}
