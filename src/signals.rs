//! Signal handling, tini-style: every signal dlock cares about is blocked in
//! all threads and taken by one thread with sigwait, which then acts according
//! to what dlock is doing (waiting for a lock, or supervising a command).
//!
//! Orphans: once dlock supervises a command it is a child subreaper (and as
//! a container's PID 1 it is their reaper anyway), so the command's orphans
//! come to it; it reaps them as they exit, until it exits itself, so that no
//! zombie is left behind for its parent or PID 1. While the command runs its
//! supervisor reaps them; afterwards (the release, --min-hold) the signal thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::cancel::Cancel;
use crate::event::Event;

/// Forwarded to the command's process group while it runs.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signals that end dlock when it has nothing to forward them to.
const STOPPING: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

enum Mode {
    /// Between requests: a stopping signal ends dlock at once with 128+N.
    Exit,
    /// A request that may take the lock (or a wait that holds a place in a
    /// queue) is in flight: remember the signal, ask the wait to return, and
    /// let the caller undo the acquisition before it exits.
    InFlight(Option<Signal>, Arc<Cancel>),
    /// A command runs: hand every signal to its supervisor.
    Forward(Sender<Event>),
}

static MODE: Mutex<Mode> = Mutex::new(Mode::Exit);

/// Whether dlock reaps every child that exits outside [`Mode::Forward`]. No
/// code may wait for a child of its own then, or the signal thread may take
/// its status first.
static REAP: AtomicBool = AtomicBool::new(false);

/// Cleanups that must run however dlock exits on a signal (a waiter's
/// place in a server-side queue, say), by id.
type Hook = Box<dyn FnOnce() + Send>;
static AT_EXIT: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());

/// Runs `f` if dlock exits through [`exit`] (every signal exit does) before
/// [`cancel_at_exit`] is called with the id returned.
pub fn at_exit(f: Hook) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, f));
    id
}

/// Forgets the cleanup registered as `id` (it was done the ordinary way).
pub fn cancel_at_exit(id: u64) {
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _)| *i != id);
}

/// Runs the registered cleanups, then exits with `code`.
pub fn exit(code: i32) -> ! {
    let hooks = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, f) in hooks {
        f();
    }
    std::process::exit(code)
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the handled signals and starts the signal thread, which runs
/// `first` (brief start-up work that cannot block, which the main thread
/// need not wait for) before it takes signals. Must run on the main thread before any other thread starts, so
/// that every thread inherits the mask and no signal is delivered anywhere else.
pub fn install(first: impl FnOnce() + Send + 'static) {
    let set = handled();
    let mut blocked = set;
    // A background process group may need to take the terminal back with
    // tcsetpgrp; with SIGTTOU blocked that succeeds instead of stopping dlock.
    blocked.add(Signal::SIGTTOU);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None)
        .expect("blocking signals cannot fail");
    std::thread::Builder::new()
        // Small: it only waits for signals and dispatches them.
        .stack_size(128 * 1024)
        .name("signals".into())
        .spawn(move || {
            first();
            loop {
                let Ok(sig) = set.wait() else { continue };
                dispatch(sig);
            }
        })
        .expect("cannot start the signal thread");
}

fn dispatch(sig: Signal) {
    let mut mode = MODE.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *mode {
        Mode::Exit => {
            if STOPPING.contains(&sig) {
                exit(128 + sig as i32);
            }
            if sig == Signal::SIGCHLD {
                reap_if_asked();
            }
        }
        Mode::InFlight(pending, cancel) => {
            if STOPPING.contains(&sig) && pending.is_none() {
                *pending = Some(sig);
                cancel.fire();
            }
            if sig == Signal::SIGCHLD {
                reap_if_asked();
            }
        }
        Mode::Forward(tx) => {
            let _ = tx.send(Event::Signal(sig));
        }
    }
}

/// Runs a request that may take the lock. A stopping signal that arrives
/// meanwhile fires the [`Cancel`] handed to `f` (a wait in `f` returns
/// early) and is returned instead of ending dlock, so the caller can release
/// what the request took before exiting with 128+N.
pub fn in_flight<T>(f: impl FnOnce(&Cancel) -> T) -> (T, Option<Signal>) {
    let cancel = Arc::new(Cancel::new());
    *MODE.lock().unwrap_or_else(|e| e.into_inner()) = Mode::InFlight(None, Arc::clone(&cancel));
    let out = f(&cancel);
    let mut mode = MODE.lock().unwrap_or_else(|e| e.into_inner());
    let pending = match &*mode {
        Mode::InFlight(p, _) => *p,
        _ => None,
    };
    *mode = Mode::Exit;
    (out, pending)
}

/// From now on, signals go to the supervisor as events.
pub fn forward_to(tx: Sender<Event>) {
    *MODE.lock().unwrap_or_else(|e| e.into_inner()) = Mode::Forward(tx);
}

/// Back to ending dlock on a stopping signal (after the command has exited).
/// Orphans that exited while the supervisor no longer read its events are
/// reaped here; later ones as their SIGCHLD arrives.
pub fn exit_on_signal() {
    let mut mode = MODE.lock().unwrap_or_else(|e| e.into_inner());
    *mode = Mode::Exit;
    reap_if_asked();
}

/// From now on, orphans reparented to dlock are reaped even when no command
/// runs (dlock has made itself a child subreaper).
pub fn reap_orphans() {
    REAP.store(true, Ordering::SeqCst);
}

/// Reaps every child that has exited, if dlock inherits orphans.
fn reap_if_asked() {
    if !REAP.load(Ordering::SeqCst) {
        return;
    }
    while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Exit status for a signal, as a shell reports it.
pub fn exit_code(sig: Signal) -> i32 {
    128 + sig as i32
}
