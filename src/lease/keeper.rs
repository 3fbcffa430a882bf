//! Keeping a lease: the renewal thread, the one owner of the deadline that
//! the supervisor and the guard process enforce, and the release at the end.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use super::own_release::OwnRelease;
use super::Timing;
use crate::backend::{Backend, Check};
use crate::backoff::Backoff;
use crate::error::{code_of, NOT_HELD};
use crate::event::Event;
use crate::guard::Deadline;
use crate::names::label;
use crate::output::Level;

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
    /// The server said the lease is gone (not a deadline that passed): it
    /// answers, so the other names of a set are worth releasing.
    by_server: bool,
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

#[derive(Clone, Copy)]
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
    Running(Sender<Cmd>, JoinHandle<Vec<Ended>>),
    Finished,
}

/// What the renewal loop owns.
struct Renewer {
    backend: Box<dyn Backend>,
    /// Every name held with `token` (one for a plain exec; several with
    /// `--also`), renewed together and released in reverse order.
    names: Vec<String>,
    token: String,
    timing: Timing,
    acquired_sent: Instant,
    base_timeout: Duration,
    events: Sender<Event>,
    state: Arc<Mutex<State>>,
    /// Tells when the command released the lock itself (exec only).
    own: Option<Arc<OwnRelease>>,
}

impl Renewer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) -> Vec<Ended> {
        let cmd = self.renew_until_told(&rx);
        self.finish(cmd)
    }

    /// Renews every period until the keeper says how to finish.
    fn renew_until_told(&mut self, rx: &mpsc::Receiver<Cmd>) -> Cmd {
        let mut p = Progress {
            next: self.acquired_sent + self.timing.period,
            backoff: Backoff::new(Progress::FIRST_BACKOFF, 2, self.timing.period),
            failures: 0,
        };
        loop {
            match rx.recv_timeout(p.next.saturating_duration_since(Instant::now())) {
                Ok(cmd) => return cmd,
                Err(RecvTimeoutError::Disconnected) => return Cmd::Release,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(cmd) = self.renew_once(rx, &mut p) {
                return cmd;
            }
        }
    }

    /// One renewal of every name when it is due; a command from the keeper
    /// that arrived meanwhile ends the loop.
    fn renew_once(&mut self, rx: &mpsc::Receiver<Cmd>, p: &mut Progress) -> Option<Cmd> {
        let timing = self.timing;
        let later = || Instant::now() + Duration::from_secs(3600);
        let stop_by = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.stop_by
        };
        let now = Instant::now();
        if self.lost() || stop_by <= now || self.released_by_command() {
            // The supervisor acts on the deadline; nothing sent now could save
            // the lease (or the command gave it up).
            p.next = later();
            return None;
        }
        let _ = self
            .backend
            .set_timeout(self.base_timeout.min(stop_by - now));
        // The first request's send time bounds every part: each later one was sent later.
        let sent = Instant::now();
        let mut outcome = Ok(Check::Done);
        let mut name = self.names[0].clone();
        for n in &self.names {
            name.clone_from(n);
            outcome = self.backend.renew(n, &self.token, timing.lease);
            if !matches!(outcome, Ok(Check::Done)) {
                break;
            }
        }
        let label = self.label();
        match outcome {
            Ok(Check::Done) => {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                s.extend(timing.stop_by(sent));
                s.failing = false;
                drop(s);
                log_renewed(&label, timing.lease, p.failures);
                p.failures = 0;
                p.backoff.reset();
                p.next = sent + timing.period;
            }
            Ok(refused) => {
                if !self.released_by_command() {
                    let _ = self.events.send(Event::Lost(lost_reason(&name, &refused)));
                }
                p.next = later();
            }
            // The backend knows the lease is gone (an SQLite file deleted under it).
            Err(e) if code_of(&e) == NOT_HELD => {
                let _ = self.events.send(Event::Lost(format!("{e:#}")));
                p.next = later();
            }
            Err(e) => return self.renewal_failed(rx, p, &name, stop_by, e),
        }
        None
    }

    /// A renewal failed without an answer: retried after a back-off until
    /// the deadline, on a new connection.
    fn renewal_failed(
        &mut self,
        rx: &mpsc::Receiver<Cmd>,
        p: &mut Progress,
        name: &str,
        stop_by: Instant,
        e: anyhow::Error,
    ) -> Option<Cmd> {
        // The job may have ended while this attempt was under way:
        // then only the release matters, and talk of retrying would
        // follow "the command exited" in the log. A lost lease still
        // gets its cause said once.
        if let Ok(cmd) = rx.try_recv() {
            if self.lost() {
                let msg = format!("the last renewal of '{name}' failed: {e:#}");
                log_failure(name, &msg, p.failures + 1, Level::Info);
            }
            return Some(cmd);
        }
        p.failures += 1;
        self.state.lock().unwrap_or_else(|e| e.into_inner()).failing = true;
        let left = stop_by.saturating_duration_since(Instant::now());
        let msg = if left.is_zero() {
            format!("renewal of '{name}' failed: {e:#}; no time is left to retry")
        } else {
            format!(
                "renewal of '{name}' failed: {e:#}; retrying until the deadline in {}",
                crate::duration::format(left)
            )
        };
        // The first failure is news; the retries after it are detail.
        let level = if p.failures == 1 {
            Level::Info
        } else {
            Level::Debug
        };
        log_failure(name, &msg, p.failures, level);
        let _ = self.backend.set_timeout(self.base_timeout.min(left));
        let _ = self.backend.reconnect();
        p.next = Instant::now() + p.backoff.next_within(self.timing.period);
        None
    }

    /// The names as messages show them.
    fn label(&self) -> String {
        label(&self.names)
    }

    fn lost(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).lost
    }

    /// True once the command has said it released the lock: then nothing is
    /// renewed any more, and the deadline (here and in the guard) moves out
    /// of reach, since there is no lease left to lose.
    fn released_by_command(&self) -> bool {
        let Some(own) = self.own.as_ref().filter(|o| o.seen()) else {
            return false;
        };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.lost {
            let never = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
            s.stop_by = never;
            if let Some(d) = s.shared {
                d.extend(never);
            }
            own.tell(&self.label());
        }
        true
    }
}

/// Where the renewal loop stands between attempts.
struct Progress {
    next: Instant,
    backoff: Backoff,
    failures: u32,
}

impl Progress {
    const FIRST_BACKOFF: Duration = Duration::from_millis(25);
}

impl Keeper {
    /// Renews from a thread that [`Keeper::start_if_due`] starts when the
    /// first renewal is due (the caller must call it by
    /// [`Keeper::first_renewal`]), or [`Keeper::start_now`].
    pub fn new(
        backend: Box<dyn Backend>,
        names: Vec<String>,
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
            by_server: false,
        }));
        assert!(!names.is_empty(), "a keeper keeps at least one name");
        let renewer = Renewer {
            backend,
            names,
            token,
            timing,
            acquired_sent,
            base_timeout,
            events,
            state: Arc::clone(&state),
            own: None,
        };
        Keeper {
            state,
            run: Mutex::new(Run::Deferred(Box::new(renewer))),
            timing,
        }
    }

    /// Lets the command release the lock on purpose (see `own_release`)
    /// rather than lose it; call before the renewal thread starts.
    pub fn allow_own_release(&self, own: Arc<OwnRelease>) {
        if let Run::Deferred(r) = &mut *self.run.lock().unwrap_or_else(|e| e.into_inner()) {
            r.own = Some(own);
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
        s.by_server = true;
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

    /// Stops renewing and releases every name (in reverse order); returns
    /// what the backend said of each.
    pub fn release(self) -> Vec<Ended> {
        self.finish(Cmd::Release)
    }

    /// Stops renewing and sets the leases to run out `left` from now (--min-hold).
    pub fn lapse_after(self, left: Duration) -> Vec<Ended> {
        self.finish(Cmd::Lapse(left))
    }

    fn finish(self, cmd: Cmd) -> Vec<Ended> {
        let run = self.run.into_inner().unwrap_or_else(|e| e.into_inner());
        match run {
            Run::Deferred(r) => r.finish(cmd),
            Run::Running(tx, handle) => {
                let _ = tx.send(cmd);
                handle.join().unwrap_or_else(|_| {
                    vec![(
                        String::new(),
                        Err(anyhow::anyhow!("the renewal thread panicked")),
                    )]
                })
            }
            Run::Finished => Vec::new(),
        }
    }
}

/// What the release (or lapse) at the end did to one name.
pub type Ended = (String, Result<Check>);

/// The one outcome that matters when every name is released together: the
/// first that was not a plain success, else Done.
/// Nothing released counts as not held.
pub fn worst(ended: Vec<Ended>) -> Result<Check> {
    let none = ended.is_empty();
    for (_, r) in ended {
        match r {
            Ok(Check::Done) => {}
            other => return other,
        }
    }
    Ok(if none { Check::NotHeld } else { Check::Done })
}

mod last;
mod report;
use report::{log_failure, log_renewed, lost_reason};

#[cfg(test)]
mod tests;
