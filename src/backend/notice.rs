//! What the break listeners of `watch_breaks` share: a start that a short
//! command never pays for, and the words they stop a command with.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::output;

/// How long a command runs before its holder starts listening for breaks:
/// most `exec` commands end sooner, and need no connection or thread for it.
/// A listener closes the window by checking, once it listens, that the lease
/// is still this process's.
pub const LAZY: Duration = Duration::from_millis(100);

type Listener = Box<dyn FnOnce() + Send>;

/// Listeners not started yet, with when each is due. The supervisor starts
/// them ([`start_due`]) from the loop that already wakes for the renewals,
/// so that a command that ends sooner costs not even a sleeping thread.
static PENDING: Mutex<Vec<(Instant, Listener)>> = Mutex::new(Vec::new());

/// Runs `listen` on a thread of its own [`LAZY`] from now, once the
/// supervisor calls [`start_due`]. Without a thread, the next renewal
/// notices a break.
pub fn spawn_lazily(listen: impl FnOnce() + Send + 'static) {
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    pending.push((Instant::now() + LAZY, Box::new(listen)));
}

/// Starts the listeners due by `now`; returns when the next one is due.
pub fn start_due(now: Instant) -> Option<Instant> {
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= now);
    *pending = later;
    for (_, listen) in due {
        let spawned = std::thread::Builder::new()
            .name("break-notices".into())
            .stack_size(256 * 1024)
            .spawn(listen);
        if spawned.is_err() {
            output::verbose("cannot start the break listener; renewals will notice a break");
        }
    }
    pending.iter().map(|(at, _)| *at).min()
}

/// Runs `listen` on a thread of its own after [`LAZY`] until it answers:
/// Some(reason) stops the command through `on_break`, None ends the
/// listener quietly (no notices to be had: the renewals tell), and an error
/// (a lost connection) is tried again after a back-off, while the renewals
/// still tell.
pub fn listen_lazily(
    mut listen: impl FnMut() -> anyhow::Result<Option<String>> + Send + 'static,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    spawn_lazily(move || {
        let mut backoff = Backoff::new(Duration::from_millis(100), 2, Duration::from_secs(10));
        loop {
            match listen() {
                Ok(Some(why)) => return on_break(why),
                Ok(None) => return,
                Err(_) => {
                    backoff.sleep();
                }
            }
        }
    });
}

/// Says (with --verbose) that breaks of `name` now reach this process.
pub fn listening(name: &str) {
    output::verbose(&format!("listening for breaks of lock '{name}'"));
}

/// A notice named this process's lease.
pub fn broken(name: &str, by: &str) -> String {
    format!("lock '{name}' was broken with --force by {by}")
}

/// The check made once listening found the lease gone already.
pub fn gone(name: &str) -> String {
    format!("lock '{name}' is no longer held by this process (broken with --force, or expired)")
}

/// The change notices of `dlock watch` (`Backend::changes`), sent by a
/// thread of the backend's own: a wait returns on the next one, or with
/// an error once that thread has stopped (the watcher then polls and
/// subscribes again).
pub struct Notices {
    rx: std::sync::mpsc::Receiver<()>,
}

/// A channel of change notices: the sender for the backend's thread (which
/// stops once a send fails: the watcher has gone), the waiter for the watcher.
pub fn notices() -> (std::sync::mpsc::Sender<()>, Notices) {
    let (tx, rx) = std::sync::mpsc::channel();
    (tx, Notices { rx })
}

#[cfg(test)]
impl Notices {
    /// Whether a notice comes within `timeout`.
    pub fn heard(&self, timeout: Duration) -> bool {
        self.rx.recv_timeout(timeout).is_ok()
    }
}

impl super::Waiter for Notices {
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.rx.recv_timeout(timeout) {
            // Several notices are one reason to read.
            Ok(()) => while self.rx.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the backend's change notices stopped")
            }
        }
        Ok(())
    }
}

/// Runs `listen` on a thread named `what` for a watcher's notices; returns
/// once it says it listens (Ok) or could not (the error).
pub fn spawn_notices(
    what: &str,
    listen: impl FnOnce(std::sync::mpsc::Sender<anyhow::Result<()>>) + Send + 'static,
) -> anyhow::Result<()> {
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(what.into())
        .stack_size(256 * 1024)
        .spawn(move || listen(ready))?;
    started
        .recv()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the {what} thread ended at once")))
}
