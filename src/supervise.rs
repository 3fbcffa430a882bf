//! Running the command under the lock: its own process group, signals
//! forwarded to that group, orphans reaped (dlock is a child subreaper), and
//! the whole group stopped when the lease is lost, when dlock is stopped, or
//! when dlock itself dies (a guard process watches for that).

use std::ffi::OsString;
use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{fail, NOT_EXECUTABLE, NOT_FOUND};
use crate::lease::Keeper;
use crate::output::{self, Level};
use crate::signals::{self, FORWARDED};
use serde_json::json;

/// What the supervisor reacts to, from the signal thread and the renewal thread.
pub enum Event {
    Signal(Signal),
    /// The server says the lease is gone; the message says why.
    Lost(String),
    /// A watched process (`acquire --keepalive-pid`) exited.
    Watched,
}

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
    /// The command's exit status as a shell reports it (128+N for signal N).
    pub status: i32,
    /// True when the lease was lost and the command was stopped for it.
    pub lost: bool,
    /// True when the command was stopped for exceeding --max-runtime.
    pub timed_out: bool,
}

/// Starts the command; a spawn failure maps to 127 or 126 as in a shell.
fn spawn(job: &Job, tty: Option<i32>, guard: Option<&Guard>) -> Result<Pid> {
    let shown = job.argv[0].to_string_lossy().into_owned();
    match crate::spawn::spawn(&job.argv, &job.env, tty, guard.map(|g| g.write_fd)) {
        Ok(pid) => {
            let pid = Pid::from_raw(pid);
            // Also from the parent, so that there is no window in which a signal to the group misses.
            let _ = nix::unistd::setpgid(pid, pid);
            if let Some(fd) = tty {
                unsafe { libc::tcsetpgrp(fd, pid.as_raw()) };
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

/// A process that stops the command's group if dlock dies, even by SIGKILL:
/// it blocks reading a pipe whose only writer is dlock, and the kernel closes
/// that pipe when dlock goes away.
///
/// It is started with `clone(CLONE_VM)` on a small stack of its own rather
/// than forked: sharing dlock's memory means no page tables to copy and no
/// copy-on-write faults afterwards, which made a fork cost about 0.75 ms of
/// CPU per job. It only makes raw system calls and never returns, so sharing
/// is safe; while dlock lives, none of its calls fail (nothing interrupts a
/// blocking read when every handled signal is blocked), so it never writes
/// the shared `errno` under dlock's feet.
struct Guard {
    pid: Pid,
    write_fd: i32,
}

/// What the guard needs, in memory it shares with dlock (leaked on purpose:
/// the guard may outlive dlock).
struct GuardArgs {
    read_fd: i32,
    kill_after: libc::timespec,
}

const GUARD_STACK: usize = 64 * 1024;

extern "C" fn guard_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked GuardArgs; everything below is a plain system call.
    unsafe {
        let a = &*(arg as *const GuardArgs);
        let r = a.read_fd;
        // Keep only the pipe: no copy of dlock's backend connection or terminal.
        libc::syscall(libc::SYS_close_range, 0, r - 1, 0);
        libc::syscall(libc::SYS_close_range, r + 1, u32::MAX, 0);
        let mut pgid: i32 = 0;
        let mut got = 0usize;
        while got < 4 {
            let n = libc::read(
                r,
                (&mut pgid as *mut i32).cast::<u8>().add(got).cast(),
                4 - got,
            );
            if n <= 0 {
                libc::_exit(0); // dlock went away before starting the command
            }
            got += n as usize;
        }
        let mut b = 0u8;
        libc::read(r, (&mut b as *mut u8).cast(), 1);
        // dlock is gone: stop the job it supervised.
        libc::kill(-pgid, libc::SIGTERM);
        libc::kill(-pgid, libc::SIGCONT);
        libc::nanosleep(&a.kill_after, std::ptr::null_mut());
        libc::kill(-pgid, libc::SIGKILL);
        libc::_exit(0)
    }
}

impl Guard {
    fn start(kill_after: Duration) -> Option<Guard> {
        let mut fds = [0i32; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        let (r, w) = (fds[0], fds[1]);
        let close_both = || unsafe {
            libc::close(r);
            libc::close(w);
        };
        // Used only as the guard's stack, and kept: the guard may outlive dlock.
        let Ok(stack) = crate::spawn::map_stack(GUARD_STACK) else {
            close_both();
            return None;
        };
        let args = Box::into_raw(Box::new(GuardArgs {
            read_fd: r,
            kill_after: libc::timespec {
                tv_sec: kill_after.as_secs() as libc::time_t,
                tv_nsec: kill_after.subsec_nanos() as libc::c_long,
            },
        }));
        // SAFETY: the stack grows down from the end of its mapping; guard_main
        // never returns and touches only `args` and its own stack.
        let pid = unsafe {
            libc::clone(
                guard_main,
                stack.cast::<u8>().add(GUARD_STACK).cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                args.cast(),
            )
        };
        if pid == -1 {
            close_both();
            return None;
        }
        unsafe { libc::close(r) };
        Some(Guard {
            pid: Pid::from_raw(pid),
            write_fd: w,
        })
    }

    /// The job is over: dismiss the guard without letting it act. It is not
    /// waited for: SIGKILL cannot be refused, and dlock exits soon after.
    fn dismiss(self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        unsafe { libc::close(self.write_fd) };
    }
}

/// The terminal to hand to the command, when dlock runs in its foreground:
/// then Ctrl-C and job control reach the command's group directly (once),
/// and an interactive command can read the terminal.
fn foreground_tty() -> Option<i32> {
    let fd = libc::STDIN_FILENO;
    unsafe {
        if libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() {
            Some(fd)
        } else {
            None
        }
    }
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
    // know when the whole job is gone.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tty = foreground_tty();
    // The guard starts before the command, and the command's process tells it
    // its group before exec'ing, so that no moment is left unwatched.
    let guard = Guard::start(timing.kill_after);
    let child = match spawn(job, tty, guard.as_ref()) {
        Ok(pid) => pid,
        Err(e) => {
            if let Some(g) = guard {
                g.dismiss();
            }
            return Err(e);
        }
    };
    let pgid = child;
    let started = Instant::now();
    let mut runtime_over = job.max_runtime.map(|d| started + d);
    let mut timed_out = false;

    let mut status: Option<i32> = None;
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        if status.is_some() && !group_alive(pgid) {
            break;
        }
        let now = Instant::now();
        keeper.start_if_due(now);
        if !lost && keeper.lose_if_due(now) {
            lost = true;
            let since = keeper.last_renewed();
            output::event(
                Level::Error,
                "lost",
                Some(&job.name),
                &format!(
                    "lease on '{}' lost: no renewal succeeded since {} (lease {}); stopping the command with {}, SIGKILL in {}",
                    job.name,
                    humantime::format_rfc3339_millis(since),
                    crate::duration::format(timing.lease),
                    job.on_lost.as_str(),
                    crate::duration::format(timing.kill_after),
                ),
                json!({ "last_renewed": humantime::format_rfc3339_millis(since).to_string() }),
            );
            signal_group(pgid, job.on_lost);
            let hard = keeper.stop_by() + timing.kill_after;
            kill_at = Some(kill_at.map_or(hard, |k| k.min(hard)));
        }
        if let Some(over) = runtime_over {
            if over <= now && status.is_none() {
                runtime_over = None;
                timed_out = true;
                output::event(
                    Level::Error,
                    "max_runtime",
                    Some(&job.name),
                    &format!(
                        "the command ran longer than --max-runtime {}; stopping it with {}, SIGKILL in {}",
                        crate::duration::format(job.max_runtime.unwrap_or_default()),
                        job.on_lost.as_str(),
                        crate::duration::format(timing.kill_after),
                    ),
                    serde_json::Value::Null,
                );
                signal_group(pgid, job.on_lost);
                let hard = now + timing.kill_after;
                kill_at = Some(kill_at.map_or(hard, |k| k.min(hard)));
            }
        }
        if let Some(k) = kill_at {
            if k <= now {
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = None;
            }
        }
        let mut wake = now + Duration::from_secs(3600);
        if !lost {
            wake = wake.min(keeper.stop_by());
        }
        if let Some(k) = kill_at {
            wake = wake.min(k);
        }
        if let Some(r) = keeper.first_renewal() {
            wake = wake.min(r);
        }
        if let Some(over) = runtime_over {
            wake = wake.min(over);
        }
        match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Signal(Signal::SIGCHLD)) => {
                let was_running = status.is_none();
                let valid = || Instant::now() < keeper.stop_by();
                if reap(
                    child,
                    &mut status,
                    guard.as_ref().map(|g| g.pid),
                    tty,
                    &valid,
                ) {
                    if was_running {
                        let code = status.unwrap_or_default();
                        output::event(
                            Level::Debug,
                            "child_exited",
                            Some(&job.name),
                            &format!("the command exited with status {code}"),
                            json!({ "status": code, "runtime_ms": started.elapsed().as_millis() as u64 }),
                        );
                    }
                    if let Some(fd) = tty {
                        unsafe { libc::tcsetpgrp(fd, libc::getpgrp()) };
                    }
                    if group_alive(pgid) && kill_at.is_none() {
                        // The command is gone but left processes behind in its group:
                        // they are part of the job and must not outlive the lock.
                        output::verbose("the command exited; stopping what it left running");
                        signal_group(pgid, Signal::SIGTERM);
                        kill_at = Some(Instant::now() + timing.kill_after);
                    }
                }
            }
            Ok(Event::Signal(sig)) => {
                if FORWARDED.contains(&sig) {
                    output::verbose(&format!("forwarding {} to the command", sig.as_str()));
                    signal_group(pgid, sig);
                }
            }
            Ok(Event::Lost(msg)) => {
                if keeper.lose() {
                    lost = true;
                    let since = humantime::format_rfc3339_millis(keeper.last_renewed());
                    output::event(
                        Level::Error,
                        "lost",
                        Some(&job.name),
                        &format!(
                            "lease lost: {msg}; last renewal succeeded at {since}; stopping the command with {}, SIGKILL in {}",
                            job.on_lost.as_str(),
                            crate::duration::format(timing.kill_after)
                        ),
                        json!({ "last_renewed": since.to_string() }),
                    );
                    signal_group(pgid, job.on_lost);
                    let hard = Instant::now() + timing.kill_after;
                    kill_at = Some(kill_at.map_or(hard, |k| k.min(hard)));
                }
            }
            Ok(Event::Watched) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    signals::exit_on_signal();
    if let Some(g) = guard {
        g.dismiss();
    }
    Ok(End {
        status: status.unwrap_or(crate::error::INTERNAL),
        lost,
        timed_out,
    })
}

/// Reaps every exited child; returns true once the command itself has exited.
fn reap(
    child: Pid,
    status: &mut Option<i32>,
    guard: Option<Pid>,
    tty: Option<i32>,
    lease_valid: &dyn Fn() -> bool,
) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(pid, _)) if pid == child => {
                if let Some(fd) = tty {
                    suspend_with(fd, child, lease_valid);
                }
            }
            Ok(WaitStatus::Exited(pid, code)) if pid == child => *status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                *status = Some(signals::exit_code(sig))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _))
                if Some(pid) == guard =>
            {
                output::error(
                    "the guard process died; dlock's own death would no longer stop the command",
                );
            }
            Ok(_) => {}
        }
    }
    status.is_some()
}

/// Ctrl-Z at the terminal stopped the command: take the terminal back and stop
/// dlock too, so the shell regains control as it would for any job. On `fg`
/// the command gets the terminal and SIGCONT. While dlock is stopped it cannot
/// renew: if the lease runs out meanwhile, the deadline check on resumption
/// stops the job as lost, as it must.
fn suspend_with(fd: i32, child: Pid, lease_valid: &dyn Fn() -> bool) {
    unsafe {
        libc::tcsetpgrp(fd, libc::getpgrp());
        // In an orphaned process group the kernel discards SIGTSTP and this returns at once.
        libc::raise(libc::SIGTSTP);
        if libc::tcgetpgrp(fd) == libc::getpgrp() {
            libc::tcsetpgrp(fd, child.as_raw());
        }
    }
    // A job whose lease ran out while suspended stays stopped: the deadline
    // check that follows stops it for good instead.
    if lease_valid() {
        let _ = killpg(child, Signal::SIGCONT);
    }
}
