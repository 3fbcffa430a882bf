//! Taking a lease (with waiting) and keeping it (the renewal thread).
//!
//! Safety rests on one local, monotonic deadline: a renewal sent at `t` and
//! confirmed gives the server-side lease until at least `t + lease`, because
//! the server starts the TTL only after it receives the request. The command
//! must be dead before then, so the lost signal goes out at
//! `t + lease - margin - kill_after` and SIGKILL at `t + lease - margin`.
//! The keeper publishes that deadline to the guard process (src/guard.rs),
//! which enforces it when dlock's own threads do not run (stopped or stuck).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use crate::backend::{Acquire, Backend, Check, Request, Waiter};
use crate::cli::Wait;
use crate::error::{code_of, fail, INTERNAL, NOT_HELD, UNAVAILABLE, USAGE};
use crate::guard::Deadline;
use crate::output::{self, Level};
use crate::signals;
use crate::supervise::Event;
use serde_json::json;

mod retry;
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
///
/// A failed request (the server restarts, refuses a connection, or answers
/// too late) does not end a wait: dlock backs off and tries again with the
/// same token until `wait` runs out, so an acquire that the server applied
/// but whose reply was lost is found again as ours. With no wait left it
/// fails, after releasing what such an acquire may have taken.
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
    let mut waiter: Option<Box<dyn Waiter>> = None;
    let mut trouble = Trouble::new(timeout);
    loop {
        let sent = Instant::now();
        let (result, pending) = signals::in_flight(|| backend.acquire(req));
        if let Some(sig) = pending {
            let taken = match &result {
                Ok(Acquire::Acquired(g)) => !g.extended,
                Ok(Acquire::Busy(_)) => false,
                Err(e) => !crate::error::unsent(e),
            };
            trouble.unsure |= taken;
            trouble.give_up(backend, req);
            std::process::exit(signals::exit_code(sig));
        }
        let busy = match result {
            Ok(Acquire::Acquired(g)) => return Ok(Taken::Held(trouble.grant(g), sent)),
            Ok(Acquire::Busy(info)) => {
                trouble.recovered(req.name);
                info
            }
            Err(e) => {
                trouble.unsure |= !crate::error::unsent(&e);
                trouble.failed(backend, req, e, deadline)?;
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
        let w = match &mut waiter {
            Some(w) => w,
            None => {
                output::event(
                    Level::Debug,
                    "waiting",
                    Some(req.name),
                    &format!("lock '{}' is busy; waiting", req.name),
                    json!({ "holder": busy.as_ref().map(|b| &b.holder) }),
                );
                match backend.waiter(req.name) {
                    Ok(w) if w.keeps_wakeups() => waiter.insert(w),
                    Ok(w) => {
                        waiter = Some(w);
                        continue;
                    }
                    Err(e) => {
                        trouble.failed(backend, req, e, deadline)?;
                        continue;
                    }
                }
            }
        };
        // Wake when the holder's lease would run out, even if no release is announced.
        let ttl = busy
            .as_ref()
            .map(|b| b.ttl + Duration::from_millis(1))
            .unwrap_or(left);
        if let Err(e) = w.wait(left.min(ttl)) {
            trouble.failed(backend, req, e, deadline)?;
        }
    }
}

/// The release (or the lapse's last renewal) at exit, with one more try
/// on a connection that broke since the last request, all within `budget`.
fn last_request(
    backend: &mut dyn Backend,
    name: &str,
    token: &str,
    cmd: Cmd,
    budget: Duration,
) -> Result<Check> {
    let end = Instant::now() + budget;
    let _ = backend.set_timeout(budget);
    if let Cmd::Lapse(left) = cmd {
        if left >= Duration::from_millis(1) {
            return backend.renew(name, token, left);
        }
    }
    backend.release(name, token).or_else(|e| {
        let left = end.saturating_duration_since(Instant::now());
        // NOT_HELD: the backend knows the lease is gone; a retry cannot help.
        if left < Duration::from_millis(1) || code_of(&e) == NOT_HELD {
            return Err(e);
        }
        let _ = backend.set_timeout(left);
        backend.reconnect()?;
        let left = end.saturating_duration_since(Instant::now());
        let _ = backend.set_timeout(left.max(Duration::from_millis(1)));
        backend.release(name, token)
    })
}

struct State {
    stop_by: Instant,
    last_ok: SystemTime,
    lost: bool,
    /// The last renewal failed.
    failing: bool,
    /// `stop_by` as published to the guard process, which enforces it when
    /// dlock's threads do not run.
    shared: Option<&'static Deadline>,
    /// The guard sent the lost signal: dlock was not running at the deadline.
    by_guard: bool,
}

impl State {
    /// Moves the deadline to `to` after a renewal succeeded, unless the lease
    /// counts as lost already (here or in the guard).
    fn extend(&mut self, to: Instant) {
        let to = self.stop_by.max(to);
        if self.lost || self.shared.is_some_and(|d| !d.extend(to)) {
            return;
        }
        self.stop_by = to;
        self.last_ok = SystemTime::now();
    }

    fn mark_lost(&mut self) {
        self.lost = true;
        self.by_guard = self.shared.is_some_and(|d| !d.claim());
    }

    fn guard_sent(&self) -> bool {
        !self.lost && self.shared.is_some_and(|d| d.sent())
    }
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
    /// Releases, or lets the lease run out (`Lapse`), after the last renewal:
    /// within one --connect-timeout in all (less when renewals were failing:
    /// no later than the deadline), because an unreachable server would
    /// otherwise hold up the exit while the lease frees itself anyway.
    fn finish(self, cmd: Cmd) -> Result<Check> {
        let (lost, failing, stop_by) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (s.lost, s.failing, s.stop_by)
        };
        let lapse = matches!(cmd, Cmd::Lapse(left) if left >= Duration::from_millis(1));
        if lost && !lapse {
            // The lease is gone or about to expire; a release
            // could only block on the server that failed us.
            return Ok(Check::NotHeld);
        }
        let mut budget = self.base_timeout;
        if failing {
            budget = budget.min(stop_by.saturating_duration_since(Instant::now()));
        }
        if budget < Duration::from_millis(1) {
            return Err(fail(
                UNAVAILABLE,
                "the backend stopped answering renewals before the deadline",
            ));
        }
        let Renewer {
            backend,
            name,
            token,
            ..
        } = self;
        let (tx, rx) = mpsc::channel();
        // On a thread of its own, so that the wait ends at the budget even
        // inside a driver call; the process exits soon after, abandoning it.
        let spawned = std::thread::Builder::new()
            .name("release".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut backend = backend;
                let _ = tx.send(last_request(backend.as_mut(), &name, &token, cmd, budget));
            });
        if spawned.is_err() {
            return Err(fail(INTERNAL, "cannot start a thread to release the lock"));
        }
        // A little slack, so that the driver's own timeout error, which says more, wins.
        match rx.recv_timeout(budget + Duration::from_millis(50)) {
            Ok(r) => r,
            Err(_) => Err(fail(
                UNAVAILABLE,
                format!(
                    "the backend did not answer within {}",
                    output::format_duration(budget)
                ),
            )),
        }
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
                    s.extend(timing.stop_by(sent));
                    s.failing = false;
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
                // The backend knows the lease is gone (an SQLite file deleted under it).
                Err(e) if code_of(&e) == NOT_HELD => {
                    let _ = events.send(Event::Lost(format!("{e:#}")));
                    next = Instant::now() + Duration::from_secs(3600);
                }
                Err(e) => {
                    // The job may have ended while this attempt was under way:
                    // then only the release matters, and talk of retrying
                    // would follow "the command exited" in the log. A lost
                    // lease still gets its cause said once.
                    if let Ok(cmd) = rx.try_recv() {
                        if state.lock().unwrap_or_else(|e| e.into_inner()).lost {
                            output::event(
                                Level::Info,
                                "renewal_failed",
                                Some(name.as_str()),
                                &format!("the last renewal of '{name}' failed: {e:#}"),
                                json!({ "attempt": failures + 1 }),
                            );
                        }
                        return cmd;
                    }
                    failures += 1;
                    state.lock().unwrap_or_else(|e| e.into_inner()).failing = true;
                    let msg = match stop_by.saturating_duration_since(Instant::now()) {
                        left if left.is_zero() => {
                            format!("renewal of '{name}' failed: {e:#}; no time is left to retry")
                        }
                        left => format!(
                            "renewal of '{name}' failed: {e:#}; retrying until the deadline in {}",
                            output::format_duration(left)
                        ),
                    };
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
            failing: false,
            shared: None,
            by_guard: false,
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

    /// Publishes the deadline, now and on every move, to the guard process.
    pub fn share_deadline(&self, word: &'static Deadline) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        word.extend(s.stop_by);
        s.shared = Some(word);
    }

    /// Marks the lease lost if its deadline has passed (or the guard acted on
    /// it); later renewals are ignored. Returns true the first time.
    pub fn lose_if_due(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.lost || (now < s.stop_by && !s.guard_sent()) {
            return false;
        }
        s.mark_lost();
        true
    }

    /// Marks the lease lost if the guard has sent the lost signal; returns true the first time.
    pub fn lose_if_guard_acted(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.guard_sent() {
            return false;
        }
        s.mark_lost();
        true
    }

    /// Marks the lease lost (the server said so); returns true the first time.
    pub fn lose(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.lost {
            return false;
        }
        s.mark_lost();
        true
    }

    /// Once lost: true if the guard process sent the lost signal, so dlock must not again.
    pub fn stopped_by_guard(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_guard
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
            Run::Deferred(r) => r.finish(cmd),
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
