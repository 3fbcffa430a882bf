//! What the break listeners of `watch_breaks` share: a start that a short
//! command never pays for, and the words they stop a command with.

use std::time::Duration;

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
