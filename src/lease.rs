//! Taking a lease (with waiting) and keeping it (the renewal thread).
//!
//! Safety rests on one local, monotonic deadline: a renewal sent at `t` and
//! confirmed gives the server-side lease until at least `t + lease`, because
//! the server starts the TTL only after it receives the request. The command
//! must be dead before then, so the lost signal goes out at
//! `t + lease - margin - kill_after` and SIGKILL at `t + lease - margin`.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use crate::backend::{Acquire, Backend, Check, Request};
use crate::cli::Wait;
use crate::error::{fail, USAGE};
use crate::output::{self, Level};
use crate::signals;
use crate::supervise::Event;
use serde_json::json;

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
                    humantime::format_duration(lease),
                    humantime::format_duration(MIN_LEASE)
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
                    humantime::format_duration(kill_after),
                    humantime::format_duration(lease),
                    humantime::format_duration(round_ms(lease / 2 - margin)),
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
/// `wait` is over. Never polls at a fixed interval.
pub fn acquire(backend: &mut dyn Backend, req: &Request, wait: Wait) -> Result<Taken> {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => None,
    };
    let mut waiter = None;
    loop {
        let sent = Instant::now();
        let (result, pending) = signals::in_flight(|| backend.acquire(req));
        if let Some(sig) = pending {
            if let Ok(Acquire::Acquired(g)) = &result {
                if !g.extended {
                    let _ = backend.release(req.name, req.token);
                }
            }
            std::process::exit(signals::exit_code(sig));
        }
        let busy = match result? {
            Acquire::Acquired(g) => return Ok(Taken::Held(g, sent)),
            Acquire::Busy(info) => info,
        };
        let now = Instant::now();
        let left = match deadline {
            Some(d) if d <= now => return Ok(Taken::Busy(busy)),
            Some(d) => d - now,
            None => Duration::from_secs(3600),
        };
        if waiter.is_none() {
            output::event(
                Level::Debug,
                "waiting",
                Some(req.name),
                &format!("lock '{}' is busy; waiting", req.name),
                json!({ "holder": busy.as_ref().map(|b| &b.holder) }),
            );
            let w = backend.waiter(req.name)?;
            let keeps = w.keeps_wakeups();
            waiter = Some(w);
            if !keeps {
                continue;
            }
        }
        // Wake when the holder's lease would run out, even if no release is announced.
        let ttl = busy
            .as_ref()
            .map(|b| b.ttl + Duration::from_millis(1))
            .unwrap_or(left);
        waiter
            .as_mut()
            .expect("subscribed above")
            .wait(left.min(ttl))?;
    }
}

struct State {
    stop_by: Instant,
    last_ok: SystemTime,
    lost: bool,
}

enum Cmd {
    Release,
    /// Stop renewing and let the lease run out after this long instead of releasing.
    Lapse(Duration),
}

/// Renews a held lease until told to release it: on a thread of its own,
/// started when the first renewal is due (a third of the lease), so that a
/// short job never starts one and is released straight from the caller.
pub struct Keeper {
    state: Arc<Mutex<State>>,
    run: Mutex<Run>,
    timing: Timing,
}

enum Run {
    Deferred(Box<Renewer>),
    Running(Sender<Cmd>, JoinHandle<Result<Check>>),
    Finished,
}

/// What the renewal loop owns.
struct Renewer {
    backend: Box<dyn Backend>,
    name: String,
    token: String,
    timing: Timing,
    acquired_sent: Instant,
    base_timeout: Duration,
    events: Sender<Event>,
    state: Arc<Mutex<State>>,
}

impl Renewer {
    /// Releases, or lets the lease run out (`Lapse`), after the last renewal.
    fn finish(&mut self, cmd: Cmd) -> Result<Check> {
        let backend = &mut self.backend;
        let _ = backend.set_timeout(self.base_timeout);
        if let Cmd::Lapse(left) = cmd {
            if left >= Duration::from_millis(1) {
                return backend.renew(&self.name, &self.token, left);
            }
        }
        let lost = self.state.lock().unwrap_or_else(|e| e.into_inner()).lost;
        if lost {
            // The lease is gone or about to expire; a release
            // could only block on the server that failed us.
            return Ok(Check::NotHeld);
        }
        let r = backend.release(&self.name, &self.token);
        if r.is_err() {
            let _ = backend.reconnect();
            return backend.release(&self.name, &self.token);
        }
        r
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) -> Result<Check> {
        let cmd = self.renew_until_told(&rx);
        self.finish(cmd)
    }

    /// Renews every period until the keeper says how to finish.
    fn renew_until_told(&mut self, rx: &mpsc::Receiver<Cmd>) -> Cmd {
        let Renewer {
            backend,
            name,
            token,
            timing,
            acquired_sent,
            base_timeout,
            events,
            state,
        } = self;
        let (timing, base_timeout) = (*timing, *base_timeout);
        let mut next = *acquired_sent + timing.period;
        let mut backoff = Duration::from_millis(25);
        let mut failures = 0u32;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(cmd) => return cmd,
                Err(RecvTimeoutError::Disconnected) => return Cmd::Release,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let stop_by = {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.lost {
                    next = Instant::now() + Duration::from_secs(3600);
                    continue;
                }
                s.stop_by
            };
            let now = Instant::now();
            if stop_by <= now {
                // The supervisor acts on the deadline; nothing sent now could save the lease.
                next = now + Duration::from_secs(3600);
                continue;
            }
            let _ = backend.set_timeout(base_timeout.min(stop_by - now));
            let sent = Instant::now();
            match backend.renew(name, token, timing.lease) {
                Ok(Check::Done) => {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    if !s.lost {
                        s.stop_by = s.stop_by.max(timing.stop_by(sent));
                        s.last_ok = SystemTime::now();
                    }
                    drop(s);
                    let level = if failures > 0 {
                        Level::Info
                    } else {
                        Level::Debug
                    };
                    output::event(
                        level,
                        "renewed",
                        Some(name.as_str()),
                        &format!("renewed '{name}'"),
                        json!({ "lease_ms": timing.lease.as_millis() as u64, "failures": failures }),
                    );
                    failures = 0;
                    backoff = Duration::from_millis(25);
                    next = sent + timing.period;
                }
                Ok(refused @ (Check::NotHeld | Check::HeldByOther(_) | Check::Broken(_))) => {
                    let _ = events.send(Event::Lost(lost_reason(name, &refused)));
                    next = Instant::now() + Duration::from_secs(3600);
                }
                Err(e) => {
                    failures += 1;
                    let msg = format!(
                        "renewal of '{name}' failed: {e:#}; retrying until the deadline in {}",
                        output::format_left(stop_by.saturating_duration_since(Instant::now()))
                    );
                    let level = if failures == 1 {
                        Level::Info
                    } else {
                        Level::Debug
                    };
                    output::event(
                        level,
                        "renewal_failed",
                        Some(name.as_str()),
                        &msg,
                        json!({ "attempt": failures }),
                    );
                    let left = stop_by.saturating_duration_since(Instant::now());
                    let _ = backend.set_timeout(base_timeout.min(left));
                    let _ = backend.reconnect();
                    next = Instant::now() + backoff;
                    backoff = (backoff * 2).min(timing.period);
                }
            }
        }
    }
}

/// Why a renewal found the lease gone, in words for the operator.
fn lost_reason(name: &str, check: &Check) -> String {
    let held = |o: &crate::backend::LockInfo| {
        format!(
            "{}:{} ({}) with fence {}",
            o.holder.host, o.holder.pid, o.holder.user, o.fence
        )
    };
    match check {
        Check::Broken(b) => match &b.now {
            Some(o) => format!(
                "lock '{name}' was broken with --force by {} and is now held by {}",
                b.by,
                held(o)
            ),
            None => format!("lock '{name}' was broken with --force by {}", b.by),
        },
        Check::HeldByOther(o) => format!(
            "lock '{name}' is now held by {} (the lease expired or was broken with --force)",
            held(o)
        ),
        _ => format!(
            "the server no longer has the lease on '{name}' (it expired, was broken with --force, or the server lost its data)"
        ),
    }
}

impl Keeper {
    /// Renews from a thread that [`Keeper::start_if_due`] starts when the
    /// first renewal is due (the caller must call it by
    /// [`Keeper::first_renewal`]), or [`Keeper::start_now`].
    pub fn new(
        backend: Box<dyn Backend>,
        name: String,
        token: String,
        timing: Timing,
        acquired_sent: Instant,
        base_timeout: Duration,
        events: Sender<Event>,
    ) -> Keeper {
        let state = Arc::new(Mutex::new(State {
            stop_by: timing.stop_by(acquired_sent),
            last_ok: SystemTime::now(),
            lost: false,
        }));
        let renewer = Renewer {
            backend,
            name,
            token,
            timing,
            acquired_sent,
            base_timeout,
            events,
            state: Arc::clone(&state),
        };
        Keeper {
            state,
            run: Mutex::new(Run::Deferred(Box::new(renewer))),
            timing,
        }
    }

    /// Starts the renewal thread now.
    pub fn start_now(&self) {
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        *run = match std::mem::replace(&mut *run, Run::Finished) {
            Run::Deferred(renewer) => {
                let (tx, rx) = mpsc::channel();
                let handle = std::thread::Builder::new()
                    .name("renew".into())
                    // Small: the loop's frames and the driver's buffers are on the heap.
                    .stack_size(256 * 1024)
                    .spawn(move || renewer.run(rx))
                    .expect("cannot start the renewal thread");
                Run::Running(tx, handle)
            }
            other => other,
        };
    }

    /// When the renewal thread must be running, while it is not yet.
    pub fn first_renewal(&self) -> Option<Instant> {
        match &*self.run.lock().unwrap_or_else(|e| e.into_inner()) {
            Run::Deferred(r) => Some(r.acquired_sent + r.timing.period),
            _ => None,
        }
    }

    /// Starts the renewal thread if the first renewal is due by `now`.
    pub fn start_if_due(&self, now: Instant) {
        if self.first_renewal().is_some_and(|t| t <= now) {
            self.start_now();
        }
    }

    /// When the lost signal must go out unless a renewal succeeds first.
    pub fn stop_by(&self) -> Instant {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop_by
    }

    /// Marks the lease lost if its deadline has passed; later renewals are ignored.
    /// Returns true the first time.
    pub fn lose_if_due(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.lost || now < s.stop_by {
            return false;
        }
        s.lost = true;
        true
    }

    /// Marks the lease lost (the server said so); returns true the first time.
    pub fn lose(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        !std::mem::replace(&mut s.lost, true)
    }

    pub fn last_renewed(&self) -> SystemTime {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).last_ok
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Stops renewing and releases the lock; returns what the backend said.
    pub fn release(self) -> Result<Check> {
        self.finish(Cmd::Release)
    }

    /// Stops renewing and sets the lease to run out `left` from now (--min-hold).
    pub fn lapse_after(self, left: Duration) -> Result<Check> {
        self.finish(Cmd::Lapse(left))
    }

    fn finish(self, cmd: Cmd) -> Result<Check> {
        let run = self.run.into_inner().unwrap_or_else(|e| e.into_inner());
        match run {
            Run::Deferred(mut r) => r.finish(cmd),
            Run::Running(tx, handle) => {
                let _ = tx.send(cmd);
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the renewal thread panicked")))
            }
            Run::Finished => Ok(Check::NotHeld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_leaves_room_to_renew_and_kill() {
        let t = Timing::new(Duration::from_secs(30), None).unwrap();
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.kill_after, Duration::from_secs(5));
        assert_eq!(t.margin, Duration::from_secs(3));
        let now = Instant::now();
        // SIGKILL goes out a margin before the server-side expiry.
        assert_eq!(t.stop_by(now) + t.kill_after + t.margin, now + t.lease);

        let short = Timing::new(Duration::from_secs(1), None).unwrap();
        assert_eq!(short.kill_after, Duration::from_millis(200));
        assert!(short.stop_by(now) > now + short.period);

        assert!(Timing::new(Duration::from_millis(100), None).is_err());
        assert!(Timing::new(Duration::from_secs(10), Some(Duration::from_secs(5))).is_err());
        Timing::new(Duration::from_secs(10), Some(Duration::from_secs(4))).unwrap();
    }
}
