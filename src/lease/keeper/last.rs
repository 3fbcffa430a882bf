//! The end of a keeper: the release of every name (or the lapse's last
//! renewal) on the renewals' connection, and once more on a new connection
//! for those that failed.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Cmd, Ended, Renewer};
use crate::backend::{Backend, Check};
use crate::error::{code_of, fail, INTERNAL, NOT_HELD, UNAVAILABLE};

impl Renewer {
    /// Releases, or lets the lease run out (`Lapse`), after the last renewal:
    /// within one --connect-timeout in all (less when renewals were failing:
    /// no later than the deadline), because an unreachable server would
    /// otherwise hold up the exit while the lease frees itself anyway.
    pub(super) fn finish(self, cmd: Cmd) -> Vec<Ended> {
        let (lost, failing, stop_by, by_server) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (s.lost, s.failing, s.stop_by, s.by_server)
        };
        let lapse = matches!(cmd, Cmd::Lapse(left) if left >= Duration::from_millis(1));
        let names = self.names.clone();
        let all = |f: &dyn Fn() -> Result<Check>| -> Vec<Ended> {
            names.iter().rev().map(|n| (n.clone(), f())).collect()
        };
        // Lost by a deadline, the lease is gone or about to expire, and a
        // release could only block on the server that failed us. Lost by the
        // server's word, the other names of a set are still held: released.
        if lost && !lapse && (names.len() == 1 || !by_server || failing) {
            return all(&|| Ok(Check::NotHeld));
        }
        let mut budget = self.base_timeout;
        if failing {
            budget = budget.min(stop_by.saturating_duration_since(Instant::now()));
        }
        if budget < Duration::from_millis(1) {
            return all(&|| {
                Err(fail(
                    UNAVAILABLE,
                    "the backend stopped answering renewals before the deadline",
                ))
            });
        }
        let Renewer {
            mut backend,
            names,
            token,
            ..
        } = self;
        let end = Instant::now() + budget;
        let mut ended = Vec::new();
        // After a failure the connection is suspect: the names left go
        // straight to a new one rather than spend the budget on it.
        let mut failed: Option<(String, anyhow::Error)> = None;
        let mut again = Vec::new();
        // Reverse order: a waiter woken by the first name's release then finds the rest free.
        for name in names.into_iter().rev() {
            if failed.is_some() {
                again.push(name);
                continue;
            }
            let left = end.saturating_duration_since(Instant::now());
            // No thread for the common case: the open connection's timeout bounds
            // the request, as it bounds every renewal.
            match last_request(backend.as_mut(), &name, &token, cmd, left) {
                // NOT_HELD: the backend knows the lease is gone; a retry cannot help.
                Err(e) if !lapse && code_of(&e) != NOT_HELD && !left.is_zero() => {
                    again.push(name.clone());
                    failed = Some((name, e));
                }
                r => ended.push((name, r)),
            }
        }
        let Some((first, e)) = failed else {
            return ended;
        };
        let left = end.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            let (code, why) = (code_of(&e), format!("{e:#}"));
            let others = again.into_iter().filter(|n| *n != first);
            ended.extend(others.map(|n| (n, Err(fail(code, why.clone())))));
            ended.push((first, Err(e)));
            return ended;
        }
        ended.extend(release_on_new_connection(
            backend, again, &token, left, budget,
        ));
        ended
    }
}

/// The release (or the lapse's last renewal) at exit, on the connection
/// the renewals used, bounded by `budget` as their requests are.
fn last_request(
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

/// The releases left after a failure on the renewals' connection, on a
/// new one, within `left` (of the whole `budget`, for the message).
fn release_on_new_connection(
    backend: Box<dyn Backend>,
    names: Vec<String>,
    token: &str,
    left: Duration,
    budget: Duration,
) -> Vec<(String, Result<Check>)> {
    let (tx, rx) = mpsc::channel();
    let (todo, token) = (names.clone(), token.to_string());
    // A new connection may wait on a name lookup that no timeout bounds:
    // on a thread of its own, so that the wait ends within the budget;
    // the process exits soon after, abandoning it.
    let spawned = std::thread::Builder::new()
        .name("release".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut backend = backend;
            let _ = tx.send(release_again(backend.as_mut(), &todo, &token, left));
        });
    let late = |why: String| -> Vec<(String, Result<Check>)> {
        let why = why.as_str();
        names
            .iter()
            .map(|n| (n.clone(), Err(fail(UNAVAILABLE, why.to_string()))))
            .collect()
    };
    if spawned.is_err() {
        let why = "cannot start a thread to release the lock".to_string();
        return names
            .iter()
            .map(|n| (n.clone(), Err(fail(INTERNAL, why.clone()))))
            .collect();
    }
    // A little slack, so that the driver's own timeout error, which says more, wins.
    match rx.recv_timeout(left + Duration::from_millis(50)) {
        Ok(r) => r,
        Err(_) => late(format!(
            "the backend did not answer within {}",
            crate::duration::format(budget)
        )),
    }
}

/// The release once more, on a new connection, within `budget`.
fn release_again(
    backend: &mut dyn Backend,
    names: &[String],
    token: &str,
    budget: Duration,
) -> Vec<(String, Result<Check>)> {
    let end = Instant::now() + budget;
    let _ = backend.set_timeout(budget);
    if let Err(e) = backend.reconnect() {
        let (code, why) = (code_of(&e), format!("{e:#}"));
        return names
            .iter()
            .map(|n| (n.clone(), Err(fail(code, why.clone()))))
            .collect();
    }
    names
        .iter()
        .map(|n| {
            let left = end.saturating_duration_since(Instant::now());
            let _ = backend.set_timeout(left.max(Duration::from_millis(1)));
            (n.clone(), backend.release(n, token))
        })
        .collect()
}
