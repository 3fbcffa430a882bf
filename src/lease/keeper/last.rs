//! The requests at exit: the release (or the lapse's last renewal), and
//! the release once more on a new connection.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Cmd;
use crate::backend::{Backend, Check};

/// The release (or the lapse's last renewal) at exit, on the connection
/// the renewals used, bounded by `budget` as their requests are.
pub(super) fn last_request(
    backend: &mut dyn Backend,
    name: &str,
    token: &str,
    cmd: Cmd,
    budget: Duration,
) -> Result<Check> {
    let _ = backend.set_timeout(budget);
    if let Cmd::Lapse(left) = cmd {
        if left >= Duration::from_millis(1) {
            return backend.renew(name, token, left);
        }
    }
    backend.release(name, token)
}

/// The release once more, on a new connection, within `budget`.
pub(super) fn release_again(
    backend: &mut dyn Backend,
    name: &str,
    token: &str,
    budget: Duration,
) -> Result<Check> {
    let end = Instant::now() + budget;
    let _ = backend.set_timeout(budget);
    backend.reconnect()?;
    let left = end.saturating_duration_since(Instant::now());
    let _ = backend.set_timeout(left.max(Duration::from_millis(1)));
    backend.release(name, token)
}
