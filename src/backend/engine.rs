//! The lock logic over one versioned value per name, written once.
//!
//! Most backends keep all of a name's state (`kinds::State`) in one value
//! that they can read together with the server's clock and rewrite only if
//! nobody changed it since: a SQL row with a version column, the Redis keys
//! under the name's hash tag (compared by a script), a ZooKeeper node's
//! version, the in-memory backend of the tests. They implement [`Store`],
//! which is only that read, that write and their side effects (waking one
//! waiter, telling a broken holder). Acquire, renew, release and
//! force-release are the loops below, the same for all of them: read, let
//! `kinds::plan_*` decide, write if unchanged, and start again from the read
//! when another client wrote first; after [`MAX_RACES`] lost writes in a row
//! every backend gives up with the same exit code and words.
//!
//! The plans decide; the store only keeps (as Curator's lock loop asks its
//! driver only whether a node has the lock). Backends whose algorithm is not
//! one compare-and-set (etcd's key queue, Redlock's quorum) implement
//! `Backend` directly.
//!
//! A store may answer the commonest requests of a plain mutex in one round
//! trip (the `fast_*` methods: a lone exclusive holder, where a mutex has
//! always lived) and leave the rest to the loop by answering None.

pub mod breaks;

use std::time::Duration;

use anyhow::Result;

use super::kinds::{self, Effects, State};
use super::{Acquire, Broken, Check, LockInfo, Request};
use crate::error::{fail, UNAVAILABLE};
use crate::holder::Holder;

/// Writes lost to other clients in a row before giving up. Each loss means
/// another client's write went through, so the lock is making progress and
/// this bounds only a stampede (or a client that rewrites it in a loop).
pub const MAX_RACES: usize = 100;

/// One name's value as a read found it.
pub struct Snapshot<V> {
    /// The server's clock at the read, µs since the epoch.
    pub now: i64,
    pub state: State,
    /// What the write checks is unchanged: a row version, the keys as read,
    /// a node's version; with whatever else of the value the store keeps.
    pub version: V,
}

/// What a write applies besides the new state.
pub struct Write<'a> {
    /// Wake one waiter: a holder left, or a grant left room for another.
    pub wake: bool,
    /// Write only while the server's clock is before this (µs): the expiry,
    /// as read, of the lease being extended, so that an extension never
    /// brings back a lease that ran out between the read and the write.
    pub until: Option<i64>,
    /// Leases this write breaks (`release --force`): token and expiry.
    pub broken: &'a [(String, i64)],
    /// Who breaks them: "user@host (pid N)" (empty unless the store
    /// records breaks).
    pub by: &'a str,
}

/// Where a backend keeps one versioned value per name.
pub trait Store {
    type Version;

    /// Whether the store keeps who broke a lease (and so needs to be told):
    /// naming this process costs a user lookup, spared where unused.
    const RECORDS_BREAKS: bool = false;

    /// `name`'s state (the default state when it has none yet), with the
    /// server's clock and what the write will compare.
    fn read(&mut self, name: &str) -> Result<Snapshot<Self::Version>>;

    /// Stores `new` if the value is still as `seen`, with `w`'s effects if
    /// the store applies them in the write; false when another client
    /// changed it first (nothing is written then).
    fn write(
        &mut self,
        name: &str,
        seen: &Snapshot<Self::Version>,
        new: &State,
        w: &Write,
    ) -> Result<bool>;

    /// Wakes one waiter with no change to the state (a busy attempt hands
    /// on a wake-up owed to a waiter ahead of it); false when the value
    /// changed since `seen`. By default nothing: the caller gets the
    /// [`Effects`] back and wakes its own way.
    fn wake(&mut self, name: &str, seen: &Snapshot<Self::Version>) -> Result<bool> {
        let _ = (name, seen);
        Ok(true)
    }

    /// Who broke `token`'s lease with `release --force`, where the store
    /// records it.
    fn broken_by(&self, seen: &Snapshot<Self::Version>, token: &str) -> Option<String> {
        let _ = (seen, token);
        None
    }

    /// Runs one read-plan-write attempt: a store that brackets it in a
    /// transaction (SQLite's `BEGIN IMMEDIATE`) does so here.
    fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>
    where
        Self: Sized,
    {
        f(self)
    }

    /// One round trip for a plain mutex where the store can decide alone;
    /// None leaves it to the loop.
    fn fast_acquire(&mut self, req: &Request) -> Result<Option<Acquire>> {
        let _ = req;
        Ok(None)
    }

    /// Extends a lone exclusive holder's lease in one round trip (then
    /// `Done`), or answers what it can tell alone; None: the loop decides.
    fn fast_renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Option<Check>> {
        let _ = (name, token, lease);
        Ok(None)
    }

    /// Frees a lone exclusive holder's lock in one round trip, as
    /// `fast_renew` does.
    fn fast_release(&mut self, name: &str, token: &str) -> Result<Option<Check>> {
        let _ = (name, token);
        Ok(None)
    }

    /// Breaks a lone exclusive holder in one round trip; None: the loop.
    fn fast_force(
        &mut self,
        name: &str,
        only: Option<&str>,
        by: &str,
    ) -> Result<Option<Vec<LockInfo>>> {
        let _ = (name, only, by);
        Ok(None)
    }
}

/// Which holder a renewal extended (the SQL backends' wake-up schemes
/// differ by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The lone exclusive holder of the lock.
    Lone,
    /// One holder among others of a kind (readers, semaphore slots), with its fence.
    Among(u64),
}

/// What a plan decided, and the conditions and effects of its write.
struct Planned<T> {
    out: T,
    fx: Effects,
    until: Option<i64>,
    broken: Vec<(String, i64)>,
}

impl<T> Planned<T> {
    fn plain((out, fx): (T, Effects)) -> Planned<T> {
        Planned {
            out,
            fx,
            until: None,
            broken: Vec::new(),
        }
    }
}

/// The give-up after [`MAX_RACES`] lost writes, the same on every backend.
pub fn gave_up(name: &str) -> anyhow::Error {
    fail(
        UNAVAILABLE,
        format!(
            "lock '{name}' kept changing: {MAX_RACES} attempts in a row to update it \
             lost to other clients' writes; try again"
        ),
    )
}

/// "user@host (pid N)" of this process, as break records name it.
pub fn breaker() -> String {
    let me = Holder::new(std::process::id(), String::new());
    format!("{}@{} (pid {})", me.user, me.host, me.pid)
}

/// Read, plan, write; again from the read whenever the write loses a race.
/// Returns the plan's answer, its effects, and the last read.
fn step<S: Store, T>(
    s: &mut S,
    name: &str,
    by: &str,
    mut plan: impl FnMut(i64, &mut State) -> Result<Planned<T>>,
) -> Result<(T, Effects, Snapshot<S::Version>)> {
    for _ in 0..MAX_RACES {
        let done = s.attempt(|s| {
            let seen = s.read(name)?;
            let mut st = seen.state.clone();
            let p = plan(seen.now, &mut st)?;
            let stored = if p.fx.write {
                let w = Write {
                    wake: p.fx.wake,
                    until: p.until,
                    broken: &p.broken,
                    by,
                };
                s.write(name, &seen, &st, &w)?
            } else if p.fx.wake {
                s.wake(name, &seen)?
            } else {
                true
            };
            Ok(stored.then_some((p.out, p.fx, seen)))
        })?;
        if let Some(out) = done {
            return Ok(out);
        }
    }
    Err(gave_up(name))
}

/// The expiry of `token`'s hold, if it has one.
fn expiry_of(st: &State, token: &str) -> Option<i64> {
    st.holders
        .iter()
        .find(|h| h.token == token)
        .map(|h| h.expires_us)
}

/// When a busy attempt of this process may hand on a wake-up owed to a
/// waiter ahead of it in the queue (`Effects::owed`, a ticket number).
///
/// A woken waiter that is not first in line passes the wake-up on, and the
/// next sleeper woken may be another such waiter, which passes it on again,
/// until the one whose turn it is tries. While that ticket's waiter is dead
/// (its ticket lapses only after `kinds::TICKET_TTL`), live waiters would
/// pass the wake-up round in a loop: so each passes it on once per
/// `TICKET_REFRESH` for the same ticket. A wake-up owed to another ticket
/// (the next hand-off) is passed on at once: a damper per process alone let
/// a waiter woken twice out of turn within a second keep the second wake-up,
/// and the first in line slept until its 1 s refresh.
#[derive(Debug, Default)]
pub struct PassOn {
    last: Option<(u64, std::time::Instant)>,
}

impl PassOn {
    /// Whether a wake-up owed to ticket `owed` may be passed on now.
    pub fn may(&self, owed: u64) -> bool {
        self.last
            .is_none_or(|(seq, at)| seq != owed || at.elapsed() >= kinds::TICKET_REFRESH)
    }

    /// Passes on when it may, and records it; false when it may not.
    pub fn pass(&mut self, owed: u64) -> bool {
        let may = self.may(owed);
        if may {
            self.last = Some((owed, std::time::Instant::now()));
        }
        may
    }
}

/// Takes, extends or queues for `req`; the effects say whether a waiter is
/// owed a wake-up. A busy attempt hands on a wake-up only if `pass_on` lets
/// it (a store that wakes in its write; the caller records it when it did).
pub fn acquire<S: Store>(s: &mut S, req: &Request, pass_on: &PassOn) -> Result<(Acquire, Effects)> {
    if let Some(out) = s.fast_acquire(req)? {
        return Ok((out, Effects::default()));
    }
    let (out, fx, _) = step(s, req.name, "", |now, st| {
        let held = expiry_of(st, req.token);
        let (out, mut fx) = kinds::plan_acquire(now, st, req)?;
        let until = match &out {
            Acquire::Acquired(g) if g.extended => held,
            Acquire::Acquired(_) => None,
            _ => {
                fx.wake &= fx.owed == 0 || pass_on.may(fx.owed);
                None
            }
        };
        Ok(Planned {
            until,
            ..Planned::plain((out, fx))
        })
    })?;
    Ok((out, fx))
}

/// Extends `token`'s lease only while it holds; with `Done`, says which
/// holder it is.
pub fn renew<S: Store>(
    s: &mut S,
    name: &str,
    token: &str,
    lease: Duration,
) -> Result<(Check, Option<Renewed>)> {
    if let Some(check) = s.fast_renew(name, token, lease)? {
        let who = matches!(check, Check::Done).then_some(Renewed::Lone);
        return Ok((check, who));
    }
    let ((check, who), _, seen) = step(s, name, "", |now, st| {
        let held = expiry_of(st, token);
        let (check, fx) = kinds::plan_renew(now, st, name, token, lease);
        let done = matches!(check, Check::Done);
        let who = st.holders.iter().find(|h| h.token == token);
        let who = who
            .filter(|_| done)
            .map(|h| match kinds::split(st.clone()).0 {
                Some(_) => Renewed::Lone,
                None => Renewed::Among(h.fence.max(0) as u64),
            });
        Ok(Planned {
            until: held.filter(|_| done),
            ..Planned::plain(((check, who), fx))
        })
    })?;
    Ok((with_breaker(check, s.broken_by(&seen, token)), who))
}

/// Frees `token`'s hold (or its place in the queue); the effects say
/// whether a waiter is owed a wake-up.
pub fn release<S: Store>(s: &mut S, name: &str, token: &str) -> Result<(Check, Effects)> {
    if let Some(check) = s.fast_release(name, token)? {
        let done = matches!(check, Check::Done);
        let fx = Effects {
            write: done,
            wake: done,
            owed: 0,
        };
        return Ok((check, fx));
    }
    let (check, fx, seen) = step(s, name, "", |now, st| {
        Ok(Planned::plain(kinds::plan_release(now, st, name, token)))
    })?;
    Ok((with_breaker(check, s.broken_by(&seen, token)), fx))
}

/// Breaks every holder, or the one whose token id is `only`; returns whom.
/// The store records who broke them and tells them, where it can.
pub fn force<S: Store>(
    s: &mut S,
    name: &str,
    only: Option<&str>,
) -> Result<(Vec<LockInfo>, Effects)> {
    let by = if S::RECORDS_BREAKS {
        breaker()
    } else {
        String::new()
    };
    if let Some(broken) = s.fast_force(name, only, &by)? {
        let fx = Effects {
            write: !broken.is_empty(),
            wake: !broken.is_empty(),
            owed: 0,
        };
        return Ok((broken, fx));
    }
    let (broken, fx, _) = step(s, name, &by, |now, st| {
        let before = st.holders.clone();
        let planned = kinds::plan_force(now, st, name, only);
        Ok(Planned {
            broken: gone(&before, st, now),
            ..Planned::plain(planned)
        })
    })?;
    Ok((broken, fx))
}

/// The live leases of `before` that `after` no longer has: token and expiry.
fn gone(before: &[kinds::Held], after: &State, now: i64) -> Vec<(String, i64)> {
    before
        .iter()
        .filter(|h| h.expires_us > now && after.holders.iter().all(|a| a.token != h.token))
        .map(|h| (h.token.clone(), h.expires_us))
        .collect()
}

/// A refused renew or release of a lease that was broken says by whom.
pub fn with_breaker(check: Check, by: Option<String>) -> Check {
    match (check, by) {
        (Check::NotHeld, Some(by)) => Check::Broken(Broken { by, now: None }),
        (Check::HeldByOther(i), Some(by)) => Check::Broken(Broken { by, now: Some(i) }),
        (check, _) => check,
    }
}

#[cfg(test)]
mod tests;
