//! The lock kinds, written once: pure plans over one name's state, which each
//! backend stores its own way (a row, a Redis key, memory) and changes with a
//! compare-and-set, so that the rules below hold the same on all of them.
//!
//! A name has holders (each with its own token, mode, slot, fence and lease),
//! one fence counter over all its grants, and a queue of waiter tickets.
//!   - exclusive, 1 slot: the mutex; `--shared` holders share the name with it
//!     as a read/write lock (any number of shared holders, or one exclusive).
//!   - exclusive, N slots: a counting semaphore; each holder takes the lowest
//!     free slot number and keeps it while it holds.
//!   - tickets: a `--fair` waiter, or an exclusive waiter blocked by shared
//!     holders, holds one. No request takes the lock while an earlier ticket
//!     could take it, so fair waiters are served in arrival order and new
//!     readers queue behind a waiting writer. A ticket lives `TICKET_TTL`
//!     unless its waiter's tries (every `TICKET_REFRESH`) refresh it, so a
//!     waiter that died leaves the queue within that bound without help.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Acquire, Check, Grant, LockInfo, Request};
use crate::error::{fail, USAGE};
use crate::holder::Holder;
use crate::names::token_id;

/// How long a ticket outlives its waiter's last attempt.
pub const TICKET_TTL: Duration = Duration::from_secs(3);
/// How often a queued waiter tries again, which also refreshes its ticket.
pub const TICKET_REFRESH: Duration = Duration::from_secs(1);

/// Most slots a semaphore may have: a bound on one name's stored state.
pub const MAX_SLOTS: u32 = 10_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Exclusive,
    Shared,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub mode: Mode,
    /// Holders allowed at once; more than 1 makes a semaphore (exclusive only).
    pub slots: u32,
    /// Wait in arrival order, holding a ticket.
    pub fair: bool,
}

impl Kind {
    pub const MUTEX: Kind = Kind {
        mode: Mode::Exclusive,
        slots: 1,
        fair: false,
    };

    /// "a 3-slot semaphore", "a shared lock", "an exclusive lock".
    pub fn describe(mode: Mode, slots: u32) -> String {
        match (mode, slots) {
            (_, n) if n > 1 => format!("a {n}-slot semaphore"),
            (Mode::Shared, _) => "a shared lock".into(),
            (Mode::Exclusive, _) => "an exclusive lock".into(),
        }
    }
}

/// One holder of a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    #[serde(rename = "t")]
    pub token: String,
    #[serde(rename = "m", default)]
    pub mode: Mode,
    #[serde(rename = "s", default)]
    pub slot: u32,
    #[serde(rename = "f")]
    pub fence: i64,
    #[serde(rename = "h")]
    pub holder: Holder,
    #[serde(rename = "a")]
    pub acquired_us: i64,
    #[serde(rename = "e")]
    pub expires_us: i64,
}

/// A waiter's place in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "t")]
    pub token: String,
    #[serde(rename = "m", default)]
    pub mode: Mode,
    #[serde(rename = "q")]
    pub seq: u64,
    #[serde(rename = "e")]
    pub expires_us: i64,
}

/// One name's holders, fence and queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last fence handed out.
    #[serde(rename = "f", default)]
    pub fence: i64,
    /// The slot count of the current holders (1 unless a semaphore).
    #[serde(rename = "n", default = "one")]
    pub slots: u32,
    #[serde(rename = "h", default)]
    pub holders: Vec<Held>,
    #[serde(rename = "q", default)]
    pub queue: Vec<Ticket>,
    /// The last ticket number handed out.
    #[serde(rename = "s", default)]
    pub seq: u64,
}

fn one() -> u32 {
    1
}

/// Backends keep a lone exclusive holder where a plain mutex has always
/// lived (the row's own columns, a Redis string): the one-round-trip renew
/// and release keep working for it, and dlock versions that know no other
/// kind still see the lock as held. Everything else (other holders, the
/// queue) is `rest`, stored beside it.
pub fn split(mut st: State) -> (Option<Held>, State) {
    let lone = st.slots == 1 && st.holders.len() == 1 && st.holders[0].mode == Mode::Exclusive;
    let legacy = if lone { st.holders.pop() } else { None };
    (legacy, st)
}

/// The inverse of [`split`]: one state from the two places it is stored.
pub fn join(legacy: Option<Held>, mut rest: State) -> State {
    if let Some(h) = legacy {
        rest.fence = rest.fence.max(h.fence);
        rest.slots = 1;
        rest.holders.insert(0, h);
    }
    rest
}

impl State {
    /// Nothing worth storing besides the fence.
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }

    /// When the last holder's lease or ticket runs out (µs, backend clock; 0 when idle).
    pub fn last_expiry(&self) -> i64 {
        let h = self.holders.iter().map(|h| h.expires_us);
        let q = self.queue.iter().map(|t| t.expires_us);
        h.chain(q).max().unwrap_or(0)
    }
}

/// What a plan decided besides its answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// The state changed and must be written back.
    pub write: bool,
    /// Another waiter may proceed now: wake one.
    pub wake: bool,
    /// The number of the first ticket that could go now, when a busy
    /// attempt owes it the wake-up (0: none).
    pub owed: u64,
}

pub fn lease_us(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros())
        .unwrap_or(i64::MAX / 4)
        .max(1)
}

impl State {
    /// Drops expired holders and tickets; true if any went.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.holders.len() + self.queue.len();
        self.holders.retain(|h| h.expires_us > now);
        self.queue.retain(|t| t.expires_us > now);
        if self.holders.is_empty() {
            self.slots = 1;
        }
        before != self.holders.len() + self.queue.len()
    }

    /// Live holders, as `status` shows them (sorted by fence).
    pub fn infos(&self, name: &str, now: i64) -> Vec<LockInfo> {
        let mut v: Vec<LockInfo> = self
            .holders
            .iter()
            .filter(|h| h.expires_us > now)
            .map(|h| self.info(name, h, now))
            .collect();
        v.sort_by_key(|i| i.fence);
        v
    }

    /// Live tickets.
    pub fn queued(&self, now: i64) -> usize {
        self.queue.iter().filter(|t| t.expires_us > now).count()
    }

    fn info(&self, name: &str, h: &Held, now: i64) -> LockInfo {
        LockInfo {
            name: name.to_string(),
            holder: h.holder.clone(),
            token_id: token_id(&h.token),
            fence: h.fence.max(0) as u64,
            acquired_at_us: h.acquired_us,
            ttl: Duration::from_micros((h.expires_us - now).max(0) as u64),
            mode: h.mode,
            slots: self.slots,
            slot: (self.slots > 1).then_some(h.slot),
            queued: self.queued(now) as u32,
        }
    }

    /// The holder whose lease ends first: the earliest a waiter may get in.
    fn first_out(&self, name: &str, now: i64) -> Option<LockInfo> {
        let h = self.holders.iter().min_by_key(|h| h.expires_us)?;
        Some(self.info(name, h, now))
    }

    /// Exit 2 when `kind` contradicts the holders (a read/write pair is fine).
    fn check_kind(&self, name: &str, kind: &Kind) -> Result<()> {
        let Some(first) = self.holders.first() else {
            return Ok(());
        };
        let (mode, slots) = (first.mode, self.slots);
        let clash = kind.slots != slots || (slots > 1 && kind.mode == Mode::Shared);
        if !clash {
            return Ok(());
        }
        let taken = if slots > 1 {
            format!(" ({} of {slots} slots taken)", self.holders.len())
        } else {
            String::new()
        };
        let asks = match (kind.mode, kind.slots) {
            (Mode::Shared, _) => "a shared lock".to_string(),
            (_, 1) => "an exclusive lock".to_string(),
            (_, n) => format!("--slots {n}"),
        };
        Err(fail(
            USAGE,
            format!(
                "lock '{name}' is held as {}{taken}; this request asks for {asks}",
                Kind::describe(mode, slots)
            ),
        ))
    }

    /// Whether the holders leave room for one more of `kind`.
    fn fits(&self, kind: &Kind) -> bool {
        match kind.mode {
            Mode::Shared => self.holders.iter().all(|h| h.mode == Mode::Shared),
            Mode::Exclusive => {
                (self.holders.len() as u32) < kind.slots
                    && self.holders.iter().all(|h| h.mode == Mode::Exclusive)
            }
        }
    }

    /// Whether the queue lets `token` go now: no earlier ticket could take
    /// what this request would.
    fn queue_allows(&self, kind: &Kind, token: &str) -> bool {
        let mine = self.queue.iter().find(|t| t.token == token).map(|t| t.seq);
        let ahead: Vec<&Ticket> = self
            .queue
            .iter()
            .filter(|t| mine.is_none_or(|m| t.seq < m) && t.token != token)
            .collect();
        match kind.mode {
            Mode::Shared => ahead.iter().all(|t| t.mode == Mode::Shared),
            Mode::Exclusive => {
                let free = kind.slots.saturating_sub(self.holders.len() as u32) as usize;
                free > ahead.len()
            }
        }
    }

    fn lowest_free_slot(&self) -> u32 {
        (0..)
            .find(|s| self.holders.iter().all(|h| h.slot != *s))
            .unwrap_or(0)
    }

    /// Adds `token`'s ticket, or refreshes it (keeping its place) once it is
    /// half a `TICKET_REFRESH` old; true when the state changed. A try out
    /// of turn then writes nothing, where a write cost a round trip, made
    /// the next in line's write lose its compare-and-set and woke watchers.
    fn enqueue(&mut self, now: i64, token: &str, mode: Mode) -> bool {
        let expires_us = now + lease_us(TICKET_TTL);
        match self.queue.iter_mut().find(|t| t.token == token) {
            Some(t) if expires_us - t.expires_us < lease_us(TICKET_REFRESH) / 2 => false,
            Some(t) => {
                t.expires_us = expires_us;
                true
            }
            None => {
                self.seq += 1;
                self.queue.push(Ticket {
                    token: token.to_string(),
                    mode,
                    seq: self.seq,
                    expires_us,
                });
                true
            }
        }
    }

    /// Whether `token`'s ticket could take the lock as the state stands
    /// (leases and tickets as stored: only the server's clock tells their age).
    pub fn turn_of(&self, token: &str) -> bool {
        let mine = self.queue.iter().find(|t| t.token == token);
        mine.is_some_and(|t| self.may_go(t))
    }

    /// The first ticket that could take the lock now (a wake-up is owed to it).
    fn ticket_can_go(&self) -> Option<u64> {
        self.queue.iter().find(|t| self.may_go(t)).map(|t| t.seq)
    }

    fn may_go(&self, t: &Ticket) -> bool {
        let kind = Kind {
            mode: t.mode,
            slots: self.slots.max(1),
            fair: true,
        };
        self.fits(&kind) && self.queue_allows(&kind, &t.token)
    }
}

/// Takes the lock for `req` if its kind fits the holders and the queue lets it,
/// extends it if `req.token` holds it already, or queues the request when it
/// must hold a ticket (fair, or a writer behind readers).
pub fn plan_acquire(now: i64, st: &mut State, req: &Request) -> Result<(Acquire, Effects)> {
    let mut fx = Effects {
        write: st.prune(now),
        ..Effects::default()
    };
    let lease = lease_us(req.lease);
    if let Some(h) = st.holders.iter_mut().find(|h| h.token == req.token) {
        h.expires_us = now + lease;
        let grant = Grant {
            fence: h.fence as u64,
            server_now_us: now,
            extended: true,
            lease: req.lease,
            slot: (st.slots > 1).then_some(h.slot),
        };
        fx.write = true;
        return Ok((Acquire::Acquired(grant), fx));
    }
    st.check_kind(req.name, &req.kind)?;
    let kind = req.kind;
    if st.fits(&kind) && st.queue_allows(&kind, req.token) {
        st.queue.retain(|t| t.token != req.token);
        // Strictly increasing, and still increasing if the state was lost, since the clock moved on.
        let fence = (st.fence + 1).max(now);
        let slot = st.lowest_free_slot();
        st.fence = fence;
        st.slots = kind.slots;
        st.holders.push(Held {
            token: req.token.to_string(),
            mode: kind.mode,
            slot,
            fence,
            holder: clipped(req.holder),
            acquired_us: now,
            expires_us: now + lease,
        });
        fx.write = true;
        // Room for another (a reader, a free slot): pass a wake-up on.
        fx.wake = st.fits(&kind) || st.ticket_can_go().is_some();
        let grant = Grant {
            fence: fence as u64,
            server_now_us: now,
            extended: false,
            lease: req.lease,
            slot: (kind.slots > 1).then_some(slot),
        };
        return Ok((Acquire::Acquired(grant), fx));
    }
    let info = st.first_out(req.name, now);
    let blocked_by_readers =
        kind.mode == Mode::Exclusive && st.holders.iter().any(|h| h.mode == Mode::Shared);
    // Woken but not first in line while someone ahead could go: hand the wake-up on.
    fx.owed = st.ticket_can_go().unwrap_or(0);
    fx.wake = fx.owed != 0;
    if kind.fair || blocked_by_readers || st.queue.iter().any(|t| t.token == req.token) {
        fx.write |= st.enqueue(now, req.token, kind.mode);
        return Ok((Acquire::Queued(info), fx));
    }
    Ok((Acquire::Busy(info), fx))
}

/// The check for a token that holds nothing here: "held by another" only
/// when one other token holds the whole lock.
fn not_mine(st: &State, name: &str, now: i64) -> Check {
    match st.holders.as_slice() {
        [h] if st.slots == 1 && h.mode == Mode::Exclusive => {
            Check::HeldByOther(st.info(name, h, now))
        }
        _ => Check::NotHeld,
    }
}

/// Extends `token`'s lease only while it still holds: an expired lease stays lost.
pub fn plan_renew(
    now: i64,
    st: &mut State,
    name: &str,
    token: &str,
    lease: Duration,
) -> (Check, Effects) {
    let mut fx = Effects {
        write: st.prune(now),
        ..Effects::default()
    };
    match st.holders.iter_mut().find(|h| h.token == token) {
        Some(h) => {
            h.expires_us = now + lease_us(lease);
            fx.write = true;
            (Check::Done, fx)
        }
        None => (not_mine(st, name, now), fx),
    }
}

/// Frees `token`'s hold (and drops any ticket it has), waking one waiter.
pub fn plan_release(now: i64, st: &mut State, name: &str, token: &str) -> (Check, Effects) {
    let mut fx = Effects {
        write: st.prune(now),
        ..Effects::default()
    };
    let queued = st.queue.len();
    st.queue.retain(|t| t.token != token);
    let had_ticket = st.queue.len() != queued;
    fx.write |= had_ticket;
    let before = st.holders.len();
    st.holders.retain(|h| h.token != token);
    if st.holders.len() == before {
        // A waiter that gives its place back held nothing: "not held" (exit 3).
        let check = if had_ticket {
            Check::NotHeld
        } else {
            not_mine(st, name, now)
        };
        return (check, fx);
    }
    if st.holders.is_empty() {
        st.slots = 1;
    }
    fx.write = true;
    fx.wake = true;
    (Check::Done, fx)
}

/// Breaks every holder, or only the one whose token id is `only`; returns whom.
pub fn plan_force(
    now: i64,
    st: &mut State,
    name: &str,
    only: Option<&str>,
) -> (Vec<LockInfo>, Effects) {
    let mut fx = Effects {
        write: st.prune(now),
        ..Effects::default()
    };
    let hit = |h: &Held| only.is_none_or(|id| token_id(&h.token) == id);
    let mut broken: Vec<LockInfo> = st
        .holders
        .iter()
        .filter(|h| hit(h))
        .map(|h| st.info(name, h, now))
        .collect();
    broken.sort_by_key(|i| i.fence);
    if !broken.is_empty() {
        st.holders.retain(|h| !hit(h));
        if st.holders.is_empty() {
            st.slots = 1;
        }
        fx.write = true;
        fx.wake = true;
    }
    (broken, fx)
}

mod fields;
use fields::clipped;
pub use fields::{MAX_COMMAND, MAX_HOST, MAX_USER};

#[cfg(test)]
mod tests;
