//! What the break listeners of `watch_breaks` share: a start that a short
//! command never pays for, and the words they stop a command with.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::output;

/// How long a command runs before its holder starts listening for breaks:
/// most `exec` commands end sooner, and need no connection or thread for it.
/// A listener closes the window by checking, once it listens, that the lease
/// is still this process's.
pub const LAZY: Duration = Duration::from_millis(100);

/// Runs `listen` on a thread of its own after [`LAZY`]. Without a thread,
/// the next renewal notices a break.
pub fn spawn_lazily(listen: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("break-notices".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            std::thread::sleep(LAZY);
            listen();
        });
    if spawned.is_err() {
        output::verbose("cannot start the break listener; renewals will notice a break");
    }
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
