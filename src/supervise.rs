//! Running the command under the lock: its own process group, signals
//! forwarded to that group, orphans reaped (dlock is a child subreaper), and
//! the whole group stopped when the lease is lost, when dlock is stopped, or
//! when dlock itself dies (a guard process, src/guard.rs, covers the cases
//! in which dlock cannot act: dead, stopped or stuck).

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, tcgetpgrp, tcsetpgrp, Pid};

use crate::backend::notice;
use crate::error::{fail, NOT_EXECUTABLE, NOT_FOUND};
use crate::event::Event;
use crate::guard::Guard;
use crate::lease::{Keeper, Timing};
use crate::output::{self, Level};
use crate::signals::{self, FORWARDED};
use serde_json::json;

pub struct Job {
    /// The lock's name, for messages.
    pub name: String,
    pub argv: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub on_lost: Signal,
    /// Stop the job when it runs longer than this.
    pub max_runtime: Option<Duration>,
}

/// How the job ended.
pub struct End {
    /// The dismissed guard, reaped when this is dropped (after the release).
    _guard: Option<Guard>,
    /// The command's exit status as a shell reports it (128+N for signal N).
    pub status: i32,
    /// True when the lease was lost and the command was stopped for it.
    pub lost: bool,
    /// True when the command was stopped for exceeding --max-runtime.
    pub timed_out: bool,
}

/// Starts the command; a spawn failure maps to 127 or 126 as in a shell.
/// With `tty`, the command's group takes the terminal (dlock's stdin).
fn spawn(job: &Job, tty: bool, guard: Option<&Guard>) -> Result<Pid> {
    let shown = job.argv[0].to_string_lossy().into_owned();
    let tty_fd = tty.then_some(libc::STDIN_FILENO);
    let guard_fd = guard.map(|g| g.write_fd.as_raw_fd());
    match crate::spawn::spawn(&job.argv, &job.env, tty_fd, guard_fd) {
        Ok(pid) => {
            let pid = Pid::from_raw(pid);
            // Also from the parent, so that there is no window in which a signal to the group misses.
            let _ = nix::unistd::setpgid(pid, pid);
            if tty {
                let _ = tcsetpgrp(io::stdin(), pid);
            }
            Ok(pid)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(fail(
            NOT_FOUND,
            format!("cannot run '{shown}': command not found"),
        )),
        Err(e) => Err(fail(NOT_EXECUTABLE, format!("cannot run '{shown}': {e}"))),
    }
}

/// Whether to hand the terminal (stdin) to the command: when dlock runs in
/// its foreground, so that Ctrl-C and job control reach the command's group
/// directly (once), and an interactive command can read the terminal.
fn foreground_tty() -> bool {
    let stdin = io::stdin();
    stdin.is_terminal() && tcgetpgrp(&stdin) == Ok(getpgrp())
}

fn signal_group(pgid: Pid, sig: Signal) {
    let _ = killpg(pgid, sig);
    if matches!(sig, Signal::SIGTERM | Signal::SIGHUP | Signal::SIGINT) {
        // A stopped process would not act on it until continued.
        let _ = killpg(pgid, Signal::SIGCONT);
    }
}

fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Runs the job to the end while `keeper` holds the lease.
pub fn run(job: &Job, events: Receiver<Event>, keeper: &Keeper) -> Result<End> {
    let timing = keeper.timing();
    // Orphaned grandchildren are re-parented to dlock, so it can reap them and
    // know when the whole job is gone; and reap them until it exits.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    signals::reap_orphans();
    let tty = foreground_tty();
    // The guard starts before the command, and the command's process tells it
    // its group before exec'ing, so that no moment is left unwatched.
    let mut guard = Guard::start(timing.kill_after, guard_slack(timing), job.on_lost);
    if let Some(g) = &guard {
        keeper.share_deadline(g.deadline);
    }
    let child = match spawn(job, tty, guard.as_ref()) {
        Ok(pid) => pid,
        Err(e) => {
            drop(guard); // dismissed and reaped
            return Err(e);
        }
    };
    let mut w = Watch {
        job,
        keeper,
        pgid: child,
        started: Instant::now(),
        runtime_over: job.max_runtime.map(|d| Instant::now() + d),
        timed_out: false,
        status: None,
        lost: false,
        kill_at: None,
    };
    loop {
        if w.status.is_some() && !group_alive(w.pgid) {
            if !w.lost && keeper.lose_if_guard_acted() {
                w.lost = true;
                stop_lost(job, keeper, w.pgid, &lease_ran_out(job, keeper));
            }
            break;
        }
        let now = Instant::now();
        keeper.start_if_due(now);
        let listen_at = notice::start_due(now);
        w.check_clocks(now);
        let wake = w.next_wake(now, listen_at);
        match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Signal(Signal::SIGCHLD)) => {
                let was_running = w.status.is_none();
                let valid = || Instant::now() < keeper.stop_by();
                if reap(child, &mut w.status, guard.as_mut(), tty, &valid) {
                    w.command_exited(was_running, tty);
                }
            }
            Ok(Event::Signal(sig)) => {
                if FORWARDED.contains(&sig) {
                    output::verbose(&format!("forwarding {} to the command", sig.as_str()));
                    signal_group(w.pgid, sig);
                }
            }
            Ok(Event::Lost(msg)) => w.server_says_lost(&msg),
            Ok(Event::Watched) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // While signals still come here: from then on the signal thread reaps
    // orphans, and might reap a guard that had ended by itself.
    if let Some(g) = &mut guard {
        g.dismiss();
    }
    signals::exit_on_signal();
    Ok(End {
        _guard: guard,
        status: w.status.unwrap_or(crate::error::INTERNAL),
        lost: w.lost,
        timed_out: w.timed_out,
    })
}

/// The supervisor's view of a running job, between events.
struct Watch<'a> {
    job: &'a Job,
    keeper: &'a Keeper,
    pgid: Pid,
    started: Instant,
    /// When --max-runtime runs out, until it has.
    runtime_over: Option<Instant>,
    timed_out: bool,
    /// The command's exit status, once it has exited.
    status: Option<i32>,
    lost: bool,
    /// When the group gets SIGKILL.
    kill_at: Option<Instant>,
}

impl Watch<'_> {
    /// Acts on the lease deadline, --max-runtime and a due SIGKILL.
    fn check_clocks(&mut self, now: Instant) {
        let (job, keeper) = (self.job, self.keeper);
        let kill_after = keeper.timing().kill_after;
        if !self.lost && keeper.lose_if_due(now) {
            self.lost = true;
            stop_lost(job, keeper, self.pgid, &lease_ran_out(job, keeper));
            self.kill_by(keeper.stop_by() + kill_after);
        }
        if self.runtime_over.is_some_and(|o| o <= now) && self.status.is_none() {
            self.runtime_over = None;
            self.timed_out = true;
            output::event(
                Level::Error,
                "max_runtime",
                Some(&job.name),
                &format!(
                    "the command ran longer than --max-runtime {}; stopping it with {}, SIGKILL in {}",
                    crate::duration::format(job.max_runtime.unwrap_or_default()),
                    job.on_lost.as_str(),
                    crate::duration::format(kill_after),
                ),
                serde_json::Value::Null,
            );
            signal_group(self.pgid, job.on_lost);
            self.kill_by(now + kill_after);
        }
        if self.kill_at.is_some_and(|k| k <= now) {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            self.kill_at = None;
        }
    }

    /// SIGKILL no later than `at`.
    fn kill_by(&mut self, at: Instant) {
        self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
    }

    /// The next moment one of the clocks needs looking at (`listen_at`:
    /// when a break listener is due to start).
    fn next_wake(&self, now: Instant, listen_at: Option<Instant>) -> Instant {
        let keeper = self.keeper;
        [
            (!self.lost).then(|| keeper.stop_by()),
            self.kill_at,
            keeper.first_renewal(),
            self.runtime_over,
            listen_at,
        ]
        .into_iter()
        .flatten()
        .fold(now + Duration::from_secs(3600), Instant::min)
    }

    /// The command exited (it may have left processes in its group).
    fn command_exited(&mut self, was_running: bool, tty: bool) {
        if was_running {
            let code = self.status.unwrap_or_default();
            output::event(
                Level::Debug,
                "child_exited",
                Some(&self.job.name),
                &format!("the command exited with status {code}"),
                json!({ "status": code, "runtime_ms": self.started.elapsed().as_millis() as u64 }),
            );
        }
        if tty {
            // Take back the terminal for dlock's own process group.
            let _ = tcsetpgrp(io::stdin(), getpgrp());
        }
        if group_alive(self.pgid) && self.kill_at.is_none() {
            // The command is gone but left processes behind in its group:
            // they are part of the job and must not outlive the lock.
            output::verbose("the command exited; stopping what it left running");
            signal_group(self.pgid, Signal::SIGTERM);
            self.kill_at = Some(Instant::now() + self.keeper.timing().kill_after);
        }
    }

    /// The server (or a break notice) says the lease is gone.
    fn server_says_lost(&mut self, msg: &str) {
        let keeper = self.keeper;
        if keeper.lose() {
            self.lost = true;
            let since = humantime::format_rfc3339_millis(keeper.last_renewed());
            let cause = format!("lease lost: {msg}; last renewal succeeded at {since}");
            stop_lost(self.job, keeper, self.pgid, &cause);
            self.kill_by(Instant::now() + keeper.timing().kill_after);
        }
    }
}

/// How long after the deadline the guard acts in dlock's place: dlock, when it
/// runs, has sent the lost signal by then.
fn guard_slack(timing: Timing) -> Duration {
    timing.margin / 2
}

fn lease_ran_out(job: &Job, keeper: &Keeper) -> String {
    format!(
        "lease on '{}' lost: no renewal succeeded since {} (lease {})",
        job.name,
        humantime::format_rfc3339_millis(keeper.last_renewed()),
        crate::duration::format(keeper.timing().lease),
    )
}

/// The lease is lost (`cause` says how): sends the lost signal, unless the
/// guard process already has because dlock was not running at the deadline.
fn stop_lost(job: &Job, keeper: &Keeper, pgid: Pid, cause: &str) {
    let timing = keeper.timing();
    let kill_after = crate::duration::format(timing.kill_after);
    let by_guard = keeper.stopped_by_guard();
    let action = if by_guard {
        format!(
            "dlock was not running at the deadline (stopped or stuck), so its guard process stopped the command with {}, and SIGKILL {} later",
            job.on_lost.as_str(),
            crate::duration::format(timing.kill_after.saturating_sub(guard_slack(timing))),
        )
    } else {
        signal_group(pgid, job.on_lost);
        format!(
            "stopping the command with {}, SIGKILL in {kill_after}",
            job.on_lost.as_str()
        )
    };
    let since = humantime::format_rfc3339_millis(keeper.last_renewed()).to_string();
    output::event(
        Level::Error,
        "lost",
        Some(&job.name),
        &format!("{cause}; {action}"),
        json!({ "last_renewed": since, "by_guard": by_guard }),
    );
}

/// Reaps every exited child; returns true once the command itself has exited.
fn reap(
    child: Pid,
    status: &mut Option<i32>,
    mut guard: Option<&mut Guard>,
    tty: bool,
    lease_valid: &dyn Fn() -> bool,
) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(pid, _)) if pid == child => {
                if tty {
                    suspend_with(child, lease_valid);
                }
            }
            Ok(WaitStatus::Exited(pid, code)) if pid == child => *status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                *status = Some(signals::exit_code(sig))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            // The guard, or an orphan (reaped, so that none is left behind).
            Ok(st @ (WaitStatus::Signaled(pid, ..) | WaitStatus::Exited(pid, _))) => {
                if let Some(g) = guard.as_deref_mut().filter(|g| g.pid == pid) {
                    g.reaped = true;
                    // It exits by itself only after killing the job at the deadline.
                    if matches!(st, WaitStatus::Signaled(..)) {
                        output::error(
                            "the guard process died; dlock's own death would no longer stop the command",
                        );
                    }
                }
            }
            Ok(_) => {}
        }
    }
    status.is_some()
}

/// Ctrl-Z at the terminal stopped the command: take the terminal back and stop
/// dlock too, so the shell regains control as it would for any job. On `fg`
/// the command gets the terminal and SIGCONT. While dlock is stopped it cannot
/// renew: if the lease runs out meanwhile, the guard process stops the job as
/// lost at the deadline, and dlock reports it on resumption.
fn suspend_with(child: Pid, lease_valid: &dyn Fn() -> bool) {
    let stdin = io::stdin();
    let _ = tcsetpgrp(&stdin, getpgrp());
    // In an orphaned process group the kernel discards SIGTSTP and this returns at once.
    let _ = nix::sys::signal::raise(Signal::SIGTSTP);
    if tcgetpgrp(&stdin) == Ok(getpgrp()) {
        let _ = tcsetpgrp(&stdin, child);
    }
    // A job whose lease ran out while suspended is not continued for work:
    // the guard has stopped it (or the deadline check that follows does).
    if lease_valid() {
        let _ = killpg(child, Signal::SIGCONT);
    }
}
