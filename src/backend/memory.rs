//! An in-memory backend, for fast unit tests of the lease core (waiting,
//! renewal deadlines, lost leases) and of the engine without servers.
//! Compiled for tests only.
//!
//! Every handle made from one [`Memory`] shares its locks, so several
//! handles in one test behave like several dlock processes. It is an
//! `engine::Store` like the real backends: one versioned value per name,
//! read and written under one mutex but in two steps, so that handles race
//! as clients of a server do and the engine's loop is the one they run.
//!
//! The clock is real monotonic time plus an offset that a test can advance:
//! the core measures its own deadlines and waits with `Instant`, so the
//! server clock must run at the same rate for a waiter's TTL timeout to line
//! up with the lease's expiry; `advance` expires leases without sleeping.
//!
//! Each handle has its own [`Knobs`]: injected failures (transport-style,
//! exit code UNAVAILABLE), a hang per request bounded by `set_timeout` as a
//! driver's timeout would be, writes that lose a race, and counts of the
//! calls made.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::engine::{self, Snapshot, Write};
use super::kinds::State as Lock;
use super::{Acquire, Backend, Capabilities, Check, LockInfo, Request, Waiter};
use crate::error::{fail, UNAVAILABLE};
pub use knobs::Knobs;

/// The shared "server".
#[derive(Clone)]
pub struct Memory {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every release and whenever a waiter starts waiting.
    changed: Condvar,
    start: Instant,
    start_us: i64,
}

#[derive(Default)]
struct State {
    /// Each name's state and its version: the count of writes so far, so
    /// that a version never comes back, even after `drop_lease`.
    rows: HashMap<String, (u64, Lock)>,
    writes: u64,
    /// Added to the real clock by [`Memory::advance`].
    offset: Duration,
    /// Releases per name, so that a waiter can tell whether one happened.
    releases: HashMap<String, u64>,
    /// Waiters blocked in `wait` per name.
    waiting: HashMap<String, usize>,
}

impl State {
    fn released(&mut self, name: &str) {
        *self.releases.entry(name.to_string()).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl Memory {
    pub fn new() -> Memory {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Memory {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changed: Condvar::new(),
                start: Instant::now(),
                start_us: since_epoch.as_micros() as i64,
            }),
        }
    }

    /// A new "process": a handle of its own with fresh knobs.
    pub fn handle(&self) -> MemoryBackend {
        MemoryBackend {
            shared: Arc::clone(&self.shared),
            knobs: Arc::new(Knobs::default()),
            timeout: Duration::from_secs(5),
        }
    }

    /// Moves the server's clock forward: leases run out without sleeping.
    /// Like a real server, it announces no expiry to waiters.
    pub fn advance(&self, by: Duration) {
        lock(&self.shared.state).offset += by;
    }

    /// Forgets the lock entirely, fence included, as a server that lost its data.
    pub fn drop_lease(&self, name: &str) {
        lock(&self.shared.state).rows.remove(name);
    }

    /// Blocks until `n` waiters wait for `name`, or `timeout` passes; true if they do.
    pub fn await_waiters(&self, name: &str, n: usize, timeout: Duration) -> bool {
        let s = lock(&self.shared.state);
        let (s, _) = self
            .shared
            .changed
            .wait_timeout_while(s, timeout, |s| {
                s.waiting.get(name).copied().unwrap_or(0) < n
            })
            .unwrap_or_else(|e| e.into_inner());
        s.waiting.get(name).copied().unwrap_or(0) >= n
    }

    /// The held lock's state, read without a request (no knobs apply).
    pub fn peek(&self, name: &str) -> Option<LockInfo> {
        let s = lock(&self.shared.state);
        let now = self.shared.now_us(&s);
        s.rows.get(name)?.1.infos(name, now).into_iter().next()
    }
}

impl Shared {
    fn now_us(&self, s: &State) -> i64 {
        self.start_us + (self.start.elapsed() + s.offset).as_micros() as i64
    }
}

/// One "process"'s connection to a [`Memory`].
pub struct MemoryBackend {
    shared: Arc<Shared>,
    knobs: Arc<Knobs>,
    timeout: Duration,
}

#[derive(Clone, Copy)]
enum Kind {
    Acquire,
    Renew,
    Release,
    Force,
    Status,
    Waiter,
}

impl MemoryBackend {
    pub fn knobs(&self) -> Arc<Knobs> {
        Arc::clone(&self.knobs)
    }

    /// Counts the request, applies the knobs, then runs `op`.
    fn request<T>(&mut self, kind: Kind, op: impl FnOnce(&mut Self) -> T) -> Result<T> {
        let (hang, fails, after_applying) = {
            let mut k = lock(&self.knobs.state);
            let c = &mut k.calls;
            match kind {
                Kind::Acquire => c.acquire += 1,
                Kind::Renew => c.renew += 1,
                Kind::Release => c.release += 1,
                Kind::Force => c.force += 1,
                Kind::Status => c.status += 1,
                Kind::Waiter => c.waiter += 1,
            }
            let fails = if k.skip > 0 {
                k.skip -= 1;
                false
            } else if k.fail > 0 {
                k.fail -= 1;
                true
            } else {
                false
            };
            (k.hang, fails, k.after_applying)
        };
        let out = self.answer(hang, fails, after_applying, op);
        if out.is_err() {
            lock(&self.knobs.state).calls.failed += 1;
        }
        self.knobs.changed.notify_all();
        out
    }

    fn answer<T>(
        &mut self,
        hang: Duration,
        fails: bool,
        after_applying: bool,
        op: impl FnOnce(&mut Self) -> T,
    ) -> Result<T> {
        if hang > self.timeout {
            std::thread::sleep(self.timeout);
            return Err(fail(
                UNAVAILABLE,
                format!(
                    "memory backend: no answer within {} (injected hang)",
                    crate::duration::format(self.timeout)
                ),
            ));
        }
        std::thread::sleep(hang);
        let lost = || fail(UNAVAILABLE, "memory backend: connection lost (injected)");
        if fails && !after_applying {
            return Err(lost());
        }
        let out = op(self);
        if fails {
            return Err(lost());
        }
        Ok(out)
    }

    /// Runs `op` on the shared state at the server's clock, and tells
    /// whoever waits for a change.
    fn with<T>(&self, op: impl FnOnce(&mut State, i64) -> T) -> T {
        let mut s = lock(&self.shared.state);
        let now = self.shared.now_us(&s);
        let out = op(&mut s, now);
        self.shared.changed.notify_all();
        out
    }
}

/// One value per name; a write bumps its version.
impl engine::Store for MemoryBackend {
    type Version = u64;

    fn read(&mut self, name: &str) -> Result<Snapshot<u64>> {
        Ok(self.with(|s, now| {
            let (version, state) = s.rows.get(name).cloned().unwrap_or_default();
            Snapshot {
                now,
                state,
                version,
            }
        }))
    }

    fn write(&mut self, name: &str, seen: &Snapshot<u64>, new: &Lock, w: &Write) -> Result<bool> {
        {
            let mut k = lock(&self.knobs.state);
            if k.lose > 0 {
                k.lose -= 1;
                k.calls.lost += 1;
                return Ok(false);
            }
        }
        Ok(self.with(|s, now| {
            let version = s.rows.get(name).map_or(0, |r| r.0);
            if version != seen.version || w.until.is_some_and(|t| now >= t) {
                return false;
            }
            s.writes += 1;
            s.rows.insert(name.to_string(), (s.writes, new.clone()));
            if w.wake {
                s.released(name);
            }
            true
        }))
    }

    fn wake(&mut self, name: &str, seen: &Snapshot<u64>) -> Result<bool> {
        Ok(self.with(|s, _| {
            let same = s.rows.get(name).map_or(0, |r| r.0) == seen.version;
            if same {
                s.released(name);
            }
            same
        }))
    }
}

impl Backend for MemoryBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let out = self.request(Kind::Acquire, |b| {
            engine::acquire(b, req, &engine::PassOn::default())
        })?;
        Ok(out?.0)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let arrived = Instant::now();
        // The plan extends only a lease the token holds and that has not expired.
        let check = self.request(Kind::Renew, |b| engine::renew(b, name, token, lease))??;
        if matches!(check.0, Check::Done) {
            let mut k = lock(&self.knobs.state);
            k.last_renewed = k.last_set_timeout.map(|t| (t, arrived));
        }
        Ok(check.0)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let out = self.request(Kind::Release, |b| engine::release(b, name, token))??;
        Ok(out.0)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        let out = self.request(Kind::Force, |b| engine::force(b, name, only))??;
        Ok(out.0)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        self.request(Kind::Status, |b| {
            b.with(|s, now| {
                let infos = |n: &String| s.rows.get(n).map(|r| r.1.infos(n, now));
                let mut out: Vec<LockInfo> = match names {
                    Some(names) => names
                        .iter()
                        .flat_map(|n| infos(n).unwrap_or_default())
                        .collect(),
                    None => s.rows.iter().flat_map(|(n, r)| r.1.infos(n, now)).collect(),
                };
                out.sort_by(|a, b| (&a.name, a.fence).cmp(&(&b.name, b.fence)));
                out.dedup_by(|a, b| a.name == b.name && a.token_id == b.token_id);
                out
            })
        })
    }
    /// With `Knobs::own_wait`: try, then sleep on releases, until the deadline.
    fn acquire_waiting(
        &mut self,
        req: &Request,
        deadline: Option<Instant>,
        _cancel: &crate::cancel::Cancel,
    ) -> Option<Result<(Acquire, Instant)>> {
        {
            let mut k = lock(&self.knobs.state);
            if !k.own_wait {
                return None;
            }
            k.calls.own_waits += 1;
        }
        let mut w = match self.waiter(req.name) {
            Ok(w) => w,
            Err(e) => return Some(Err(e)),
        };
        Some(loop {
            let sent = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(sent));
            match self.acquire(req) {
                Ok(Acquire::Acquired(g)) => break Ok((Acquire::Acquired(g), sent)),
                Ok(busy) if left.is_some_and(|l| l.is_zero()) => break Ok((busy, sent)),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
            if let Err(e) = w.wait(left.unwrap_or(Duration::from_secs(3600))) {
                break Err(e);
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        let seen = self.request(Kind::Waiter, |b| {
            b.with(|s, _| s.releases.get(name).copied().unwrap_or(0))
        })?;
        Ok(Box::new(MemoryWaiter {
            shared: Arc::clone(&self.shared),
            name: name.to_string(),
            seen,
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        lock(&self.knobs.state).calls.reconnect += 1;
        self.knobs.changed.notify_all();
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout;
        lock(&self.knobs.state).last_set_timeout = Some(Instant::now());
        Ok(())
    }
}

/// Woken by any release of its name since it was made or last woke: a
/// release between the subscription and the wait is never missed.
struct MemoryWaiter {
    shared: Arc<Shared>,
    name: String,
    seen: u64,
}

impl Waiter for MemoryWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let sh = &self.shared;
        let mut s = lock(&sh.state);
        *s.waiting.entry(self.name.clone()).or_default() += 1;
        sh.changed.notify_all();
        let name = self.name.as_str();
        let seen = self.seen;
        let (mut s, _) = sh
            .changed
            .wait_timeout_while(s, timeout, |s| {
                s.releases.get(name).copied().unwrap_or(0) == seen
            })
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.waiting.get_mut(name) {
            *n -= 1;
        }
        self.seen = s.releases.get(name).copied().unwrap_or(0);
        Ok(())
    }
}

pub mod knobs;
#[cfg(test)]
mod tests;
