//! Taking a lease (with waiting) and keeping it (the renewal thread).
//!
//! Safety rests on one local, monotonic deadline: a renewal sent at `t` and
//! confirmed gives the server-side lease until at least `t + lease`, because
//! the server starts the TTL only after it receives the request. The command
//! must be dead before then, so the lost signal goes out at
//! `t + lease - margin - kill_after` and SIGKILL at `t + lease - margin`.
//! The keeper publishes that deadline to the guard process (src/guard.rs),
//! which enforces it when dlock's own threads do not run (stopped or stuck).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::backend::{Acquire, Backend, Request, Waiter};
use crate::cancel::Cancel;
use crate::cli::Wait;
use crate::error::{fail, USAGE};
use crate::output::{self, Level};
use crate::signals;
use serde_json::json;

mod all;
mod keeper;
pub mod own_release;
pub(crate) mod retry;
pub use all::{acquire_all, Part, TakenAll};
pub use keeper::{worst, Keeper};
use retry::Trouble;

/// Shortest lease accepted: below this, scheduling noise eats the margins.
pub const MIN_LEASE: Duration = Duration::from_millis(500);
/// Longest default grace period between the lost signal and SIGKILL.
pub const MAX_DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

/// The renewal schedule derived from a lease.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    /// Renew this often: a third of the lease, so two attempts fit before the deadline.
    pub period: Duration,
    /// Kept back from the lease for scheduling delay and clock-rate differences: a tenth of it.
    pub margin: Duration,
    /// Between the lost signal and SIGKILL.
    pub kill_after: Duration,
}

impl Timing {
    pub fn new(lease: Duration, kill_after: Option<Duration>) -> Result<Timing> {
        if lease < MIN_LEASE {
            return Err(fail(
                USAGE,
                format!(
                    "--lease {} is too short for exec: use at least {}",
                    crate::duration::format(lease),
                    crate::duration::format(MIN_LEASE)
                ),
            ));
        }
        let margin = lease / 10;
        let kill_after = kill_after.unwrap_or_else(|| (lease / 5).min(MAX_DEFAULT_KILL_AFTER));
        // Keep at least half the lease for renewing, or a single slow renewal loses the lock.
        if kill_after + margin > lease / 2 {
            return Err(fail(
                USAGE,
                format!(
                    "--kill-after {} leaves too little of the {} lease for renewals: \
                     use a --kill-after of at most {} or a longer --lease",
                    crate::duration::format(kill_after),
                    crate::duration::format(lease),
                    crate::duration::format(round_ms(lease / 2 - margin)),
                ),
            ));
        }
        Ok(Timing {
            lease,
            period: lease / 3,
            margin,
            kill_after,
        })
    }

    /// The schedule for the lease the backend granted, which may differ from
    /// the one asked for: every part scales with it, and the grace period
    /// shrinks if it must, so that the deadline stays inside what was granted.
    pub fn granted(self, lease: Duration) -> Timing {
        if lease == self.lease {
            return self;
        }
        let margin = lease / 10;
        Timing {
            lease,
            period: lease / 3,
            margin,
            kill_after: self.kill_after.min((lease / 2).saturating_sub(margin)),
        }
    }

    /// When the lost signal must go out if nothing renewed after a request sent at `sent`.
    pub fn stop_by(&self, sent: Instant) -> Instant {
        sent + self.lease - self.margin - self.kill_after
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The result of trying to take a lock within `--wait`.
pub enum Taken {
    /// Held, with the instant the successful request was sent.
    Held(crate::backend::Grant, Instant),
    Busy(Option<crate::backend::LockInfo>),
}

/// Tries, subscribes to releases, tries again (closing the lost-wake-up
/// window, unless the backend keeps wake-ups for late waiters), then retries
/// on each release notification or when the holder's lease runs out, until
/// `wait` is over. Never polls at a fixed interval. A backend that waits its
/// own way (`Backend::acquire_waiting`) takes the wait in one call instead,
/// but its failures, signals and give-up go through this same loop.
///
/// A failed request (the server restarts, refuses a connection, or answers
/// too late) does not end a wait: dlock backs off and tries again with the
/// same token until `wait` runs out, so an acquire that the server applied
/// but whose reply was lost is found again as ours. With no wait left it
/// fails, after releasing what such an acquire may have taken. A stopping
/// signal ends the wait the same way (exit 128+N), also in the middle of a
/// backend's own wait, which returns when the signal arrives.
pub fn acquire(
    backend: &mut dyn Backend,
    req: &Request,
    wait: Wait,
    timeout: Duration,
) -> Result<Taken> {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => None,
    };
    let mut waiter: Option<Subscription> = None;
    let mut trouble = Trouble::new(timeout, deadline);
    loop {
        let (attempt, pending) =
            signals::in_flight(|cancel| Attempt::make(backend, req, deadline, cancel));
        if let Some(sig) = pending {
            trouble.unsure |= attempt.may_hold();
            trouble.queued |= attempt.may_queue();
            trouble.give_up(backend, req);
            signals::exit(signals::exit_code(sig));
        }
        let busy = match attempt.result {
            Ok((Acquire::Acquired(g), sent)) => return Ok(Taken::Held(trouble.grant(g), sent)),
            Ok((Acquire::Busy(info) | Acquire::Queued(info), _)) if attempt.waited => {
                // The backend's own wait ran until the deadline.
                trouble.give_up(backend, req);
                return Ok(Taken::Busy(info));
            }
            Ok((Acquire::Busy(info), _)) => {
                trouble.recovered(req.name);
                info
            }
            Ok((Acquire::Queued(info), _)) => {
                trouble.recovered(req.name);
                trouble.queued = true;
                info
            }
            // A request that contradicts the lock (its kind), or a URL that
            // names the wrong kind of server, stays wrong however long we wait.
            Err(e) if crate::error::code_of(&e) == USAGE || crate::error::is_setting(&e) => {
                trouble.give_up(backend, req);
                return Err(e);
            }
            Err(e) => {
                trouble.unsure |= !crate::error::unsent(&e);
                // A backend's own wait may keep its place for the next call,
                // unless it says that it left nothing on the server.
                trouble.queued |= attempt.waited && !crate::error::unsent(&e);
                trouble.failed(backend, req, e)?;
                continue;
            }
        };
        let now = Instant::now();
        let left = match deadline {
            Some(d) if d <= now => {
                trouble.give_up(backend, req);
                return Ok(Taken::Busy(busy));
            }
            Some(d) => d - now,
            None => Duration::from_secs(3600),
        };
        if let Err(e) = wait_for_release(backend, req, &mut waiter, &busy, left, trouble.queued) {
            trouble.failed(backend, req, e)?;
        }
    }
}

/// One attempt: the backend's own wait, or one request of the shared loop.
struct Attempt {
    result: Result<(Acquire, Instant)>,
    /// The backend waited its own way.
    waited: bool,
}

impl Attempt {
    fn make(
        backend: &mut dyn Backend,
        req: &Request,
        deadline: Option<Instant>,
        cancel: &Cancel,
    ) -> Attempt {
        if let Some(result) = backend.acquire_waiting(req, deadline, cancel) {
            return Attempt {
                result,
                waited: true,
            };
        }
        let sent = Instant::now();
        Attempt {
            result: backend.acquire(req).map(|a| (a, sent)),
            waited: false,
        }
    }

    /// The attempt may have taken the lock anew: a new grant, or a failure
    /// after the request was sent.
    fn may_hold(&self) -> bool {
        match &self.result {
            Ok((Acquire::Acquired(g), _)) => !g.extended,
            Ok(_) => false,
            Err(e) => !crate::error::unsent(e),
        }
    }

    /// The attempt may have left a place in the lock's queue.
    fn may_queue(&self) -> bool {
        match &self.result {
            Ok((Acquire::Queued(_), _)) => true,
            Ok(_) => false,
            Err(_) => self.waited,
        }
    }
}

/// A waiter, with what it must undo registered to run if a signal ends
/// dlock while it lives (the backend's waiter says what; this loop owns
/// signals and exits).
struct Subscription {
    waiter: Box<dyn Waiter>,
    at_exit: Option<u64>,
}

impl Subscription {
    fn new(waiter: Box<dyn Waiter>) -> Subscription {
        let at_exit = waiter.on_exit().map(signals::at_exit);
        Subscription { waiter, at_exit }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = self.at_exit.take() {
            signals::cancel_at_exit(id);
        }
    }
}

/// Blocks until the busy lock may have been released, at most `left`:
/// subscribes first (then returns at once, so that the caller tries again
/// and no release between its try and the subscription is missed, unless
/// the backend keeps wake-ups), wakes when the holder's lease would run out
/// even if no release is announced, and, for a place in the queue
/// (`queued`), before that place lapses.
fn wait_for_release(
    backend: &mut dyn Backend,
    req: &Request,
    waiter: &mut Option<Subscription>,
    busy: &Option<crate::backend::LockInfo>,
    left: Duration,
    queued: bool,
) -> Result<()> {
    let w = match waiter {
        Some(w) => w,
        None => {
            output::event(
                Level::Debug,
                "waiting",
                Some(req.name),
                &format!("lock '{}' is busy; waiting", req.name),
                json!({ "holder": busy.as_ref().map(|b| &b.holder) }),
            );
            let w = Subscription::new(backend.waiter(req.name)?);
            if !w.waiter.keeps_wakeups() {
                *waiter = Some(w);
                return Ok(());
            }
            waiter.insert(w)
        }
    };
    let mut ttl = busy
        .as_ref()
        .map(|b| b.ttl + Duration::from_millis(1))
        .unwrap_or(left);
    if queued {
        ttl = ttl.min(crate::backend::kinds::TICKET_REFRESH);
    }
    w.waiter.wait(left.min(ttl))
}

#[cfg(test)]
mod tests;
