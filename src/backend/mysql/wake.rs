//! Waking MySQL waiters with `GET_LOCK` wake locks, held by live holders
//! and waited on inside the server.
//!
//! A lone exclusive holder (a plain mutex, a writer) that is a live process
//! (`dlock exec`) holds the name's wake lock `dlock-<hash>` on its
//! connection; a waiter blocks server-side in `GET_LOCK` on the same name,
//! on its one connection, and gets it the moment the holder releases or its
//! connection dies. The server hands the wake lock to one waiter at a time:
//! that waiter keeps it while it tries, and keeps it as the new holder, so
//! each release wakes exactly one waiter. One that gives up waiting lets it
//! go for the next. A process that never waited can take the lease in the
//! moment between a release and the woken waiter's attempt; it then finds
//! the wake lock taken and holds a second one, `dlock-<hash>-h`, on which
//! the woken waiter (keeping the first, so the rest sleep on) blocks
//! instead. When the holder has neither (its `dlock acquire` has exited),
//! the woken waiter backs off exponentially from 10ms to 1s.
//!
//! Holders of the other kinds (readers, semaphore slots) are many, and a
//! waiter can block on one wake lock only: each live holder holds one of its
//! own, `dlock-<hash>-<fence>`, and a waiter blocks on that of the holder
//! whose lease ends first, without keeping it (it takes and lets go in one
//! statement, so every waiter blocked there wakes). A release by another of
//! the holders is not announced to it, so that wait is cut to the back-off
//! step (10 ms doubling to 1 s, restarting after a real wake-up): such a
//! release is seen within a second. A waiter woken with the name's wake lock
//! (a writer let go) that takes a reader's or a slot's hold lets that lock
//! go at once, which wakes the next waiter: readers queued behind a writer
//! wake in a chain.
//!
//! A woken waiter whose attempt finds that a waiter ahead of it in the queue
//! could go (`--fair`: the server's order of `GET_LOCK` waits and that of
//! the tickets can differ) lets the name's wake lock go for the next one,
//! and blocks on it again, behind the one it woke, if that one holds it
//! (with no holder, a waiter blocks only on a wake lock that somebody holds,
//! and else backs off). It passes a wake-up on to the same ticket at most
//! once per `TICKET_REFRESH` (`engine::PassOn`: live waiters cannot pass it
//! round in a loop while a dead waiter's place lapses), and backs off after
//! that; queued waiters also try every second anyway.
//!
//! Wake locks only change how soon a waiter tries: the lease itself is
//! decided by the row's compare-and-set alone, and every wait ends by the
//! holder's lease. Lock names are case-insensitive and at most 64
//! characters, hence the hash. MySQL before 5.7 drops a session's earlier
//! GET_LOCK on a new one, so there one process keeps at most one wake lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use mysql::prelude::Queryable;

use super::{interpolate, lock, Db};
use crate::backend::kinds::{self, Kind, Mode};
use crate::backend::sql::{self, Renewed, Val};
use crate::backend::{LockInfo, Waiter};

/// Why this connection holds a wake lock of a name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    /// It holds the lease: waiters sleep until it lets go.
    Holder,
    /// A waiter was woken with the name's wake lock and is trying; it
    /// becomes `Holder` if it takes the lease as a lone exclusive holder,
    /// and is let go otherwise (the waiter gives up, or holds another kind).
    Woken,
    /// It holds the lease, and the second wake lock, since a woken waiter
    /// kept the first: that waiter sleeps on this one.
    Second,
}

/// A wake lock to hold or to block on.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Target {
    /// The name's own, which a lone exclusive holder keeps.
    Name,
    /// That of one holder of another kind: `dlock-<hash>-<fence>`.
    Holder(String),
    /// None: nobody holds the lock, only tickets wait. The waiter ahead
    /// that was woken to take it holds the name's wake lock meanwhile, so
    /// block on that if it is held; else back off.
    Nobody,
    /// None, and a wake-up was passed on in vain (see `busy`): back off.
    Backoff,
}

/// The wake locks of one process, by lock name.
#[derive(Default)]
pub(super) struct Wakes {
    /// Held on the current connection: the key and why.
    held: HashMap<String, (String, Why)>,
    /// What this process's hold calls for; kept over reconnects, to take it again.
    want: HashMap<String, Target>,
    /// What the last busy attempt says to block on.
    blocked_on: HashMap<String, Target>,
    /// When a woken waiter last passed the name's wake lock on, to whom.
    passed: crate::backend::engine::PassOn,
}

impl Wakes {
    /// The server lets go of a closed connection's GET_LOCKs.
    pub(super) fn connection_closed(&mut self) {
        self.held.clear();
    }
}

impl Db {
    pub(super) fn wake_key(&self, name: &str) -> String {
        let scope = format!("{}\0{}", self.database, self.table);
        format!("dlock-{}", sql::wake_key(&scope, name))
    }

    fn holder_key(&self, name: &str, fence: u64) -> String {
        format!("{}-{fence}", self.wake_key(name))
    }

    /// What waiters of a lock held by `info` block on.
    fn target_of(&self, name: &str, info: Option<&LockInfo>) -> Target {
        match info {
            None => Target::Nobody,
            Some(i) if i.mode == Mode::Exclusive && i.slots == 1 => Target::Name,
            Some(i) => Target::Holder(self.holder_key(name, i.fence)),
        }
    }

    /// Runs a statement that may block in the server up to `wait`.
    fn blocking(&mut self, q: &str, wait: Duration) -> Result<mysql::Result<Option<i64>>> {
        let base = self.timeout;
        let conn = self.connection()?;
        // Whole seconds: MySQL may round the wait up to them.
        super::set_socket_timeout(conn, Duration::from_secs(wait.as_secs() + 1) + base);
        let r = conn.query_first::<Option<i64>, _>(q).map(Option::flatten);
        super::set_socket_timeout(conn, base);
        Ok(r)
    }

    /// A grant of `kind` with `fence`: holds the wake lock it calls for.
    pub(super) fn granted(&mut self, name: &str, kind: &Kind, fence: u64) {
        let want = if kind.mode == Mode::Exclusive && kind.slots == 1 {
            Target::Name
        } else {
            Target::Holder(self.holder_key(name, fence))
        };
        self.wakes.want.insert(name.to_string(), want);
        self.hold_wake(name);
    }

    /// A renewal succeeded: holds (again, after a reconnect) the wake lock
    /// of that hold; a keep-alive that never acquired learns it here.
    pub(super) fn renewed(&mut self, name: &str, who: Option<Renewed>) {
        let want = match who {
            Some(Renewed::Among(fence)) => Target::Holder(self.holder_key(name, fence)),
            _ => Target::Name,
        };
        self.wakes.want.entry(name.to_string()).or_insert(want);
        self.hold_wake(name);
    }

    /// Best effort: without it waiters fall back to backing off, so a failure
    /// here must not fail the request that took the lease.
    fn hold_wake(&mut self, name: &str) {
        let Some(want) = self.wakes.want.get(name).cloned() else {
            return;
        };
        let held = self.wakes.held.get(name).cloned();
        let key = match (want, held) {
            // Woken with it: the new holder keeps it, and the other waiters sleep on.
            (Target::Name, Some((key, Why::Woken))) => (key, Why::Holder),
            (Target::Name, Some(_)) | (Target::Nobody | Target::Backoff, _) => return,
            (Target::Name, None) => match self.take_name_lock(name) {
                Some(k) => k,
                None => return,
            },
            (Target::Holder(k), Some((held, _))) if held == k => return,
            (Target::Holder(k), held) => {
                if held.is_some() {
                    // The name's, kept since woken: the next waiter's turn.
                    self.let_go(name);
                }
                match self.get_lock_now(&k) {
                    Some(true) => (k, Why::Holder),
                    _ => return,
                }
            }
        };
        self.wakes.held.insert(name.to_string(), key);
    }

    /// The name's wake lock, or the second one if a woken waiter keeps it.
    fn take_name_lock(&mut self, name: &str) -> Option<(String, Why)> {
        let key = self.wake_key(name);
        let q = interpolate(
            "SELECT IF(GET_LOCK(?, 0), 1, IF(GET_LOCK(?, 0), 2, 0))",
            &[Val::Text(key.clone()), Val::Text(second_key(&key))],
        );
        match q.and_then(|q| self.run(|c| c.query_first::<Option<i64>, _>(&q))) {
            Ok(Some(Some(1))) => Some((key, Why::Holder)),
            Ok(Some(Some(2))) => Some((second_key(&key), Why::Second)),
            _ => None,
        }
    }

    fn get_lock_now(&mut self, key: &str) -> Option<bool> {
        let q = interpolate("SELECT GET_LOCK(?, 0)", &[Val::Text(key.to_string())]).ok()?;
        let got = self.run(|c| c.query_first::<Option<i64>, _>(&q)).ok()?;
        Some(got.flatten() == Some(1))
    }

    /// Lets go of the wake lock held for `name`: the next waiter blocked on it wakes.
    fn let_go(&mut self, name: &str) {
        if let Some((key, _)) = self.wakes.held.remove(name) {
            if let Ok(q) = interpolate("DO RELEASE_LOCK(?)", &[Val::Text(key)]) {
                let _ = self.run(|c| c.query_drop(&q));
            }
        }
    }

    /// This process's hold on `name` ended (released, or found lost).
    pub(super) fn drop_wake(&mut self, name: &str) {
        self.wakes.want.remove(name);
        self.let_go(name);
    }

    /// After a busy attempt: what to block on. With `owed` (the ticket of a
    /// waiter ahead in the queue that could go), a woken waiter lets the
    /// name's wake lock go, since the wake-up is that waiter's, and blocks
    /// on it again behind that waiter (`Nobody`). Kept, it held up that
    /// waiter until its own back-off ended. Passed on to the same ticket
    /// within `TICKET_REFRESH` already (its waiter may be dead), it backs
    /// off instead, so that live waiters do not pass it round in a loop.
    pub(super) fn busy(&mut self, name: &str, info: Option<&LockInfo>, owed: u64) {
        let mut target = self.target_of(name, info);
        let woken = matches!(self.wakes.held.get(name), Some((_, Why::Woken)));
        if owed != 0 && woken {
            if !self.wakes.passed.pass(owed) && target == Target::Nobody {
                target = Target::Backoff;
            }
            self.let_go(name);
        }
        self.wakes.blocked_on.insert(name.to_string(), target);
    }
}

pub(super) struct MysqlWaiter {
    db: Arc<Mutex<Db>>,
    name: String,
    key: String,
    backoff: crate::backoff::Backoff,
    /// A holder's wake lock last found free: see `wait_holder`.
    found_free: Option<String>,
}

impl MysqlWaiter {
    pub(super) fn new(db: Arc<Mutex<Db>>, name: &str) -> MysqlWaiter {
        let key = lock(&db).wake_key(name);
        MysqlWaiter {
            db,
            name: name.to_string(),
            key,
            backoff: sql::quiet_backoff(),
            found_free: None,
        }
    }
}

/// The wake lock a holder takes when a woken waiter keeps the first one.
fn second_key(key: &str) -> String {
    format!("{key}-h")
}

/// A GET_LOCK timeout of `wait`: MariaDB takes fractions of a second, MySQL
/// rounds them to whole seconds, where a zero would return at once and turn
/// the caller's loop into a spin. Asking the server which it is costs nothing
/// here, unlike a `SELECT VERSION()` of its own.
fn lock_wait(wait: Duration) -> String {
    let secs = format!("{:.3}", wait.as_secs_f64().max(0.001));
    format!("IF(VERSION() LIKE '%MariaDB%', {secs}, CEIL({secs}))")
}

/// Blocks until the holder lets the wake lock go: 1 when it did.
pub(super) fn wait_statement(key: &str, wait: Duration) -> Result<String> {
    let sql = format!("SELECT GET_LOCK(?, {})", lock_wait(wait));
    interpolate(&sql, &[Val::Text(key.to_string())])
}

/// Blocks until the holder of `key` lets it go, and keeps it (1), or -1
/// at once when nobody holds it.
fn wait_held_statement(key: &str, wait: Duration) -> Result<String> {
    let sql = format!(
        "SELECT IF(IS_FREE_LOCK(?), -1, GET_LOCK(?, {}))",
        lock_wait(wait)
    );
    let k = Val::Text(key.to_string());
    interpolate(&sql, &[k.clone(), k])
}

/// Blocks until the holder of `key` lets it go, without keeping it (1), or
/// -1 at once when nobody holds it and so nobody will announce anything.
fn pass_wait_statement(key: &str, wait: Duration) -> Result<String> {
    let sql = format!(
        "SELECT IF(IS_FREE_LOCK(?), -1, IF(GET_LOCK(?, {}) = 1, RELEASE_LOCK(?), 0))",
        lock_wait(wait)
    );
    let k = Val::Text(key.to_string());
    interpolate(&sql, &[k.clone(), k.clone(), k])
}

impl MysqlWaiter {
    /// Behind a lone exclusive holder: the name's wake lock, kept when it
    /// comes. With `if_held`, only if someone holds it now: nobody will
    /// let go of a free one.
    fn wait_name(&mut self, timeout: Duration, if_held: bool) -> Result<()> {
        let mut db = lock(&self.db);
        let woken = db.wakes.held.contains_key(&self.name);
        let q = if woken {
            // Woken, yet the lease was taken by a process that never waited;
            // we keep the wake lock, so the other waiters sleep on.
            pass_wait_statement(&second_key(&self.key), timeout)?
        } else if if_held {
            wait_held_statement(&self.key, timeout)?
        } else {
            wait_statement(&self.key, timeout)?
        };
        match db.blocking(&q, timeout)? {
            Ok(Some(1)) => {
                if !woken {
                    // Kept while the caller tries: the next waiter wakes only
                    // when we take the lease and later release it, or give up.
                    let held = (self.key.clone(), Why::Woken);
                    db.wakes.held.insert(self.name.clone(), held);
                }
                self.backoff.reset();
            }
            // Nobody will announce the end of this lease.
            Ok(Some(-1)) => {
                drop(db);
                std::thread::sleep(self.backoff.next_within(timeout));
            }
            // Timed out: the caller tries again as the holder's lease runs out.
            Ok(_) => {}
            Err(_) => {
                // A spurious wake-up: the caller's next request shows whether the server is there.
                db.drop_connection();
                drop(db);
                std::thread::sleep(self.backoff.next_within(timeout));
            }
        }
        Ok(())
    }

    /// Behind holders of another kind: the wake lock of the one whose lease
    /// ends first, for at most the back-off step, since the others' releases
    /// are not announced here.
    fn wait_holder(&mut self, key: &str, timeout: Duration) -> Result<()> {
        let wait = self.backoff.next_within(timeout);
        let mut db = lock(&self.db);
        let q = pass_wait_statement(key, wait)?;
        match db.blocking(&q, wait)? {
            Ok(Some(1)) => self.backoff.reset(),
            // Free the first time: that holder may have just let go, after
            // our attempt saw it; try at once. Free again: it is not a live
            // process and will announce nothing.
            Ok(Some(-1)) if self.found_free.as_deref() != Some(key) => {
                self.found_free = Some(key.to_string());
            }
            Ok(Some(-1)) => {
                drop(db);
                std::thread::sleep(wait);
            }
            Ok(_) => {}
            Err(_) => {
                db.drop_connection();
                drop(db);
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

impl Waiter for MysqlWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let target = lock(&self.db).wakes.blocked_on.get(&self.name).cloned();
        match target.unwrap_or(Target::Name) {
            Target::Name => self.wait_name(timeout, false),
            // Who holds it is about to take the lease, or is a process whose
            // lease ran out (stopped, say): a second at most, as for a ticket.
            Target::Nobody => self.wait_name(timeout.min(kinds::TICKET_REFRESH), true),
            Target::Holder(key) => self.wait_holder(&key, timeout),
            Target::Backoff => {
                std::thread::sleep(self.backoff.next_within(timeout));
                Ok(())
            }
        }
    }

    /// A release before the first wait leaves the wake lock free (or with a
    /// waiter that was queued earlier, which takes the lease and releases in
    /// turn), so `GET_LOCK` returns at once, and a holder's own wake lock
    /// found free means a try within the first back-off step: nothing is missed.
    fn keeps_wakeups(&self) -> bool {
        true
    }
}

impl Drop for MysqlWaiter {
    /// Gives up: the name's wake lock goes to the next waiter. A holder's stays.
    fn drop(&mut self) {
        let mut db = lock(&self.db);
        if matches!(db.wakes.held.get(&self.name), Some((_, Why::Woken))) {
            db.let_go(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statements_read_as_sql() {
        let w = wait_statement("dlock-ab", Duration::ZERO).unwrap();
        assert_eq!(
            w,
            "SELECT GET_LOCK(X'646c6f636b2d6162', IF(VERSION() LIKE '%MariaDB%', 0.001, CEIL(0.001)))"
        );
        let p = pass_wait_statement("k", Duration::from_millis(1500)).unwrap();
        assert_eq!(
            p,
            "SELECT IF(IS_FREE_LOCK(X'6b'), -1, IF(GET_LOCK(X'6b', \
             IF(VERSION() LIKE '%MariaDB%', 1.500, CEIL(1.500))) = 1, RELEASE_LOCK(X'6b'), 0))"
        );
    }

    #[test]
    fn wake_keys_fit_get_lock() {
        let db = Db {
            opts: mysql::Opts::default(),
            conn: None,
            shown: String::new(),
            database: "d".into(),
            table: "dlock_leases".into(),
            timeout: Duration::from_secs(1),
            wakes: Wakes::default(),
            read_only: false,
        };
        let k = db.wake_key(&"é".repeat(127));
        assert!(k.len() <= 64 && k == k.to_ascii_lowercase(), "{k}");
        assert_ne!(db.wake_key("A"), db.wake_key("a"));
        let h = db.holder_key("a", u64::MAX);
        assert!(h.len() <= 64 && h.starts_with(&db.wake_key("a")), "{h}");
        assert!(second_key(&db.wake_key("a")).len() <= 64);
    }
}
