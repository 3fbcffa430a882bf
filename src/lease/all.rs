//! Taking several locks as one (`--also`): all or nothing, without deadlock.
//!
//! Every request takes its names in one global order (by bytes), so two
//! requests for {a, b} and {b, a} try them alike. It never waits while it
//! holds a part: it waits (up to `--wait`, through [`super::acquire`]) for
//! one part while holding nothing, then tries each other part once; a busy
//! part undoes what is held (in reverse order), and the next round waits for
//! that part. No request ever waits while holding, so no two can wait on
//! each other, and nothing is kept from others while a request waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{acquire, Taken};
use crate::backend::{self, Backend, Config, Grant, LockInfo, Request};
use crate::cli::Wait;
use crate::output;
use crate::signals;

/// One part, held.
pub struct Part {
    pub name: String,
    pub grant: Grant,
    /// When its granting request was sent.
    pub sent: Instant,
}

/// The outcome for the whole set.
pub enum TakenAll {
    /// Every part, in the order the names were given.
    Held(Vec<Part>),
    /// This part was still busy when the wait ran out; nothing is held.
    Busy(String, Option<LockInfo>),
}

/// Takes every name in `names` for `template`'s token, lease, holder and
/// kind (its name is ignored), within `wait` in all. `cfg` opens a
/// connection of its own to undo a partial hold if a signal ends dlock.
pub fn acquire_all(
    backend: &mut dyn Backend,
    names: &[String],
    template: &Request,
    wait: Wait,
    cfg: &Config,
) -> Result<TakenAll> {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => None,
    };
    if let [one] = names {
        // One name: the plain wait loop, with nothing to undo.
        let none = Mutex::new(Vec::new());
        return Ok(
            match take(backend, one, template, wait, cfg.timeout, &none)? {
                Ok(part) => TakenAll::Held(vec![part]),
                Err(info) => TakenAll::Busy(one.clone(), info),
            },
        );
    }
    let mut order: Vec<&String> = names.iter().collect();
    order.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let held = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook = signals::at_exit(undo_at_exit(cfg, template.token, Arc::clone(&held)));
    let taken = rounds(backend, &order, template, deadline, cfg.timeout, &held);
    signals::cancel_at_exit(hook);
    let mut parts = match taken? {
        TakenAll::Held(parts) => parts,
        busy => return Ok(busy),
    };
    let given = |p: &Part| names.iter().position(|n| *n == p.name);
    parts.sort_by_key(given);
    Ok(TakenAll::Held(parts))
}

/// The rounds of waiting for one part and trying the rest.
fn rounds(
    backend: &mut dyn Backend,
    order: &[&String],
    template: &Request,
    deadline: Option<Instant>,
    timeout: Duration,
    held: &Mutex<Vec<String>>,
) -> Result<TakenAll> {
    let mut first = order[0];
    loop {
        let mut parts: Vec<Part> = Vec::with_capacity(order.len());
        let left = match deadline {
            Some(d) => Wait::For(d.saturating_duration_since(Instant::now())),
            None => Wait::Forever,
        };
        match take(backend, first, template, left, timeout, held)? {
            Ok(part) => parts.push(part),
            Err(info) => return Ok(TakenAll::Busy(first.clone(), info)),
        }
        let mut busy = None;
        for &name in order.iter().filter(|n| **n != first) {
            let once = Wait::For(Duration::ZERO);
            match take(backend, name, template, once, timeout, held) {
                Ok(Ok(part)) => parts.push(part),
                Ok(Err(info)) => {
                    busy = Some((name, info));
                    break;
                }
                Err(e) => {
                    undo(backend, &parts, template.token, held);
                    return Err(e);
                }
            }
        }
        let Some((name, info)) = busy else {
            return Ok(TakenAll::Held(parts));
        };
        undo(backend, &parts, template.token, held);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(TakenAll::Busy(name.clone(), info));
        }
        output::verbose(&format!(
            "lock '{name}' is busy; released the others, waiting for it first"
        ));
        first = name;
    }
}

/// One part through the shared wait loop; Err(info) when it stayed busy.
fn take(
    backend: &mut dyn Backend,
    name: &str,
    template: &Request,
    wait: Wait,
    timeout: Duration,
    held: &Mutex<Vec<String>>,
) -> Result<std::result::Result<Part, Option<LockInfo>>> {
    let req = Request { name, ..*template };
    Ok(match acquire(backend, &req, wait, timeout)? {
        Taken::Held(grant, sent) => {
            if !grant.extended {
                lock(held).push(name.to_string());
            }
            Ok(Part {
                name: name.to_string(),
                grant,
                sent,
            })
        }
        Taken::Busy(info) => Err(info),
    })
}

/// Releases the parts taken in this round, in reverse order; a part that
/// the token held before (an extended lease) stays held.
fn undo(backend: &mut dyn Backend, parts: &[Part], token: &str, held: &Mutex<Vec<String>>) {
    for p in parts.iter().rev().filter(|p| !p.grant.extended) {
        if let Err(e) = backend.release(&p.name, token) {
            output::verbose(&format!(
                "could not release '{}' while backing off ({e:#}); its lease runs out",
                p.name
            ));
        }
        lock(held).retain(|n| *n != p.name);
    }
}

/// If a signal ends dlock between parts, the parts held are released on a
/// connection of its own (the loop's is busy in the request it interrupts).
fn undo_at_exit(
    cfg: &Config,
    token: &str,
    held: Arc<Mutex<Vec<String>>>,
) -> Box<dyn FnOnce() + Send> {
    let (cfg, token) = (cfg.clone(), token.to_string());
    Box::new(move || {
        let names = std::mem::take(&mut *lock(&held));
        if names.is_empty() {
            return;
        }
        if let Ok((mut b, _)) = backend::open(&cfg) {
            for n in names.iter().rev() {
                let _ = b.release(n, &token);
            }
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
