//! Exit codes and the error type that carries one.
//!
//! Every failure that reaches `main` becomes one line on stderr and one of the
//! documented exit codes below. Scripts depend on these numbers: never renumber.

use std::fmt;

/// Success.
pub const OK: i32 = 0;
/// `status`: at least one named lock is free.
pub const FREE: i32 = 1;
/// Bad command line: unknown flag, bad duration, bad name or URL.
pub const USAGE: i32 = 2;
/// `release`/`renew`: the token does not hold the lock, which is free or expired.
pub const NOT_HELD: i32 = 3;
/// `release`/`renew`: the lock is held by another token.
pub const HELD_BY_OTHER: i32 = 4;
/// The backend is unreachable, refused the connection, rejected the credentials,
/// or refused a write (out of memory, a read-only replica), or other clients'
/// writes to a lock kept beating every attempt to update it (`backend::engine`):
/// all conditions of the service that trying again later may cure.
pub const UNAVAILABLE: i32 = 69;
/// Internal error or an unexpected answer from the backend.
pub const INTERNAL: i32 = 70;
/// The result could not be written: stdout is closed, or `acquire`'s reader
/// is gone (sysexits' EX_IOERR); `acquire` releases the lock it took. Help
/// and `status` output whose reader left end by SIGPIPE instead, as ls does.
pub const OUTPUT: i32 = 74;
/// The lock is busy and `--wait` ran out (exec: `--conflict-exit-code`;
/// watch: `--until` did not hold in time).
pub const BUSY: i32 = 75;
/// `exec`: the lease could not be renewed in time; the command was stopped.
pub const LOST: i32 = 79;
/// `exec`: the command ran longer than `--max-runtime` and was stopped (as GNU timeout).
pub const TIMED_OUT: i32 = 124;
/// `exec`: the command could not be run because it is not executable.
pub const NOT_EXECUTABLE: i32 = 126;
/// `exec`: the command was not found.
pub const NOT_FOUND: i32 = 127;

/// The exit-code table, shown by `--help` and kept in step with README.md.
pub const TABLE: &str = "\
Exit codes:
    0    success
    1    status: a named lock is free
    2    usage error (bad flag, duration, name, token or URL)
    3    release/renew: the lock is not held (free or expired)
    4    release/renew: the lock is held by another token
   69    backend unreachable, refused, timed out, or authentication failed
   70    internal error or unexpected backend reply
   74    could not write the output (stdout closed; acquire: broken pipe)
   75    lock busy after --wait (exec: --conflict-exit-code overrides;
         watch: --until did not hold in time)
   79    exec: lease lost; the command was stopped
  124    exec: the command exceeded --max-runtime and was stopped
  126    exec: command not executable
  127    exec: command not found
128+N    killed by signal N (while waiting, or the command died of it;
         SIGPIPE when the reader of help or status output left)
Any other code from exec is the command's own exit status.";

/// The words every backend uses for a server that keeps silent (exit 69):
/// while connecting (with `why`, what else the silence may mean there), or
/// to a request.
pub fn silent(at: &str, within: std::time::Duration, connecting: bool, why: &str) -> String {
    let t = crate::duration::format(within);
    match connecting {
        true => format!(
            "cannot connect to {at}: it did not answer within {t}{why}; \
             check host, port and firewall, or raise --connect-timeout"
        ),
        false => format!("{at} did not answer within {t}"),
    }
}

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    /// The request certainly did not change anything on the server (no
    /// connection, or a server that is not the backend at all), so nothing
    /// it might have taken needs cleaning up.
    pub unsent: bool,
    /// A setting to fix (the URL names a server of the wrong kind), not an
    /// outage: waiting longer cannot help, so a wait ends at once.
    pub setting: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Builds an error that ends dlock with `code`.
pub fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
        unsent: false,
        setting: false,
    })
}

/// Like [`fail`], for a request that certainly changed nothing on the server.
pub fn fail_unsent(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
        unsent: true,
        setting: false,
    })
}

/// Like [`fail_unsent`], for a refusal that only a changed setting can
/// cure (see [`Failure::setting`]).
pub fn fail_setting(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
        unsent: true,
        setting: true,
    })
}

/// Whether the error is a setting to fix rather than a fault to wait out.
pub fn is_setting(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .is_some_and(|f| f.setting)
}

/// The same error, marked as one whose request changed nothing (a failure
/// to connect sends no request).
pub fn mark_unsent(err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<Failure>() {
        Ok(f) => fail_unsent(f.code, f.message),
        Err(e) => e,
    }
}

/// Whether the error proves the request changed nothing on the server.
pub fn unsent(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .is_some_and(|f| f.unsent)
}

/// The exit code an error maps to: its own, or INTERNAL when it carries none.
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(INTERNAL, |f| f.code)
}
