//! What the wait loop does when a request fails: back off, try again, and
//! clean up after a request whose reply never came.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend::{Backend, Check, Grant, Request};
use crate::backoff::Backoff;
use crate::output::{self, Level};
use crate::signals;

/// Back-off between attempts while the backend fails: doubling from
/// `FIRST` to `CAP`, jittered, never past the wait's deadline.
pub struct Trouble {
    backoff: Backoff,
    /// An acquire failed after it may have reached the server: it may hold
    /// the lock under our token although we never saw the grant.
    pub unsure: bool,
    /// The request holds a place in the lock's queue, which must not outlive the wait.
    pub queued: bool,
    failures: u32,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Trouble {
    const FIRST: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(2);

    /// For a wait until `deadline` (None: forever) whose requests are
    /// bounded by `timeout`.
    pub fn new(timeout: Duration, deadline: Option<Instant>) -> Trouble {
        let backoff = Backoff::new(Self::FIRST, 2, Self::CAP).jittered();
        Trouble {
            backoff: match deadline {
                Some(d) => backoff.until(d),
                None => backoff,
            },
            unsure: false,
            queued: false,
            failures: 0,
            timeout,
            deadline,
        }
    }

    /// A grant after a request that went unanswered is the one that request
    /// took (the token is ours alone): a new acquisition, not an extension.
    /// Only a `--token` that already held the lock before this call is
    /// reported as new here too; its fence is the same either way.
    pub fn grant(&self, mut g: Grant) -> Grant {
        if self.unsure {
            g.extended = false;
        }
        g
    }

    /// The backend answered again.
    pub fn recovered(&mut self, name: &str) {
        if self.failures > 0 {
            output::event(
                Level::Info,
                "reconnected",
                Some(name),
                &format!("the backend answers again; still waiting for '{name}'"),
                json!({ "failures": self.failures }),
            );
        }
        self.failures = 0;
        self.backoff.reset();
    }

    /// Handles a failed request while waiting: with time left before the
    /// deadline, sleeps a back-off step and returns Ok so that the caller
    /// tries again; otherwise releases what an unanswered acquire may have
    /// taken (or the place it queued in) and returns the error.
    pub fn failed(
        &mut self,
        backend: &mut dyn Backend,
        req: &Request,
        err: anyhow::Error,
    ) -> anyhow::Result<()> {
        let Some(step) = self.backoff.next() else {
            self.give_up(backend, req);
            return Err(err);
        };
        self.failures += 1;
        let until = match self.deadline {
            Some(d) => format!(
                "for up to {} more",
                crate::duration::format_left(d.saturating_duration_since(Instant::now()))
            ),
            None => "for as long as it takes (--wait forever)".into(),
        };
        output::event(
            if self.failures == 1 {
                Level::Info
            } else {
                Level::Debug
            },
            "retrying",
            Some(req.name),
            &format!("{err:#} (still waiting for '{}' {until})", req.name),
            json!({ "attempt": self.failures }),
        );
        if self.unsure || self.queued {
            // A stopping signal now must not leave behind the lock that the
            // unanswered request may have taken, nor the place in the queue.
            let (_, pending) = signals::in_flight(|cancel| cancel.sleep(step));
            if let Some(sig) = pending {
                self.give_up(backend, req);
                signals::exit(signals::exit_code(sig));
            }
        } else {
            std::thread::sleep(step);
        }
        Ok(())
    }

    /// Before giving up: an acquire whose reply never came may have taken
    /// the lock, which nobody would know the token of; release it, within
    /// one --connect-timeout.
    pub fn give_up(&self, backend: &mut dyn Backend, req: &Request) {
        if !self.unsure {
            if self.queued {
                // The ticket would lapse by itself; leaving at once lets the next one go now.
                let _ = backend.release(req.name, req.token);
            }
            return;
        }
        match release_within(backend, req.name, req.token, self.timeout) {
            Ok(Check::Done) => output::event(
                Level::Debug,
                "released",
                Some(req.name),
                &format!(
                    "released '{}', which a request that went unanswered had taken",
                    req.name
                ),
                json!({}),
            ),
            Ok(_) => {}
            Err(e) => output::event(
                Level::Info,
                "release_failed",
                Some(req.name),
                &format!(
                    "could not make sure that '{}' was not taken by the request that went unanswered: {e:#}; \
                     if it was, it frees itself within {}",
                    req.name,
                    crate::duration::format_left(req.lease)
                ),
                json!({}),
            ),
        }
    }
}

/// Releases `token`'s hold on `name`, connecting again first (the failed
/// request dropped the connection), all within `budget`.
fn release_within(
    backend: &mut dyn Backend,
    name: &str,
    token: &str,
    budget: Duration,
) -> anyhow::Result<Check> {
    let end = Instant::now() + budget;
    let _ = backend.set_timeout(budget);
    let r = backend.reconnect().and_then(|()| {
        let left = end.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(anyhow::anyhow!(
                "no time left within {}",
                crate::duration::format(budget)
            ));
        }
        let _ = backend.set_timeout(left);
        backend.release(name, token)
    });
    let _ = backend.set_timeout(budget);
    r
}
