//! Waking PostgreSQL waiters: session advisory locks held by live holders
//! and waited on inside the server, and LISTEN/NOTIFY for the rest.
//!
//! A lone exclusive holder (a plain mutex, a writer) that is a live process
//! (`dlock exec`) holds the name's advisory lock (its *wake lock*) on its
//! session; a waiter blocks server-side in `pg_advisory_lock` on the same
//! key, with `lock_timeout` as its wait, and gets it the moment the holder
//! lets go or its session ends. The server hands the lock to one waiter at
//! a time: that waiter keeps it while it tries, and keeps it as the new
//! holder, so a release wakes exactly one waiter; one that gives up lets it
//! go for the next.
//!
//! Every release, `release --force` and grant that leaves room also sends
//! `NOTIFY dlock_<key>` (delivered at commit, so never before the row is
//! free). A woken waiter listens on it before its attempt; if a process
//! that never waited (a plain `dlock acquire`, which exits holding the
//! lease, or an `exec` that took the lease first) holds the lease, it
//! sleeps until that notification, while the other waiters sleep on in the
//! lock queue behind it. So nothing polls, and releases from any process
//! (`release --token` elsewhere) wake it.
//!
//! Holders of the other kinds (readers, semaphore slots) are many, and a
//! waiter can block on one lock only: each live holder holds one of its
//! own (the key of `name` and its fence), and a waiter blocks on that of
//! the holder whose lease ends first without keeping it (every waiter
//! there wakes); since the other holders' releases do not reach it there,
//! that wait is cut to the back-off step (10 ms doubling to 1 s). A waiter
//! woken with the name's lock (a writer let go) that takes a reader's or a
//! slot's hold lets it go at once, which wakes the next: readers queued
//! behind a writer wake in a chain.
//!
//! Keys are computed here, not by `hashtext` (internal to the server, and
//! not promised stable): the first 8 bytes, big-endian, as a signed bigint,
//! of FNV-1a-128 over `schema.table`, NUL, the lock name (and for a
//! holder's own lock, NUL and its fence). Another application's advisory
//! lock that happens to use the same key costs a spurious or late wake-up,
//! never a wrong grant: the lease row alone decides who holds the lock,
//! and every wait also ends when the holder's lease would.
//!
//! Poolers in transaction mode (PgBouncer) run each statement on whichever
//! server session is free, which strands session locks and loses LISTEN.
//! The first wake-up statement on a connection learns its server process
//! id; every later one checks it first and fails without touching a lock
//! when it differs. Such a connection then takes no wake locks and waits
//! by backing off (10 ms doubling to 1 s), which is slower, never wrong.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::{lock, Db};
use crate::backend::kinds::{Kind, Mode};
use crate::backend::sql::{self, Renewed};
use crate::backend::{LockInfo, Waiter};

/// Why this session holds a wake lock of a name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    /// It holds the lease: waiters sleep until it lets go.
    Holder,
    /// A waiter was woken with the name's wake lock and is trying; it
    /// becomes `Holder` if it takes the lease as a lone exclusive holder,
    /// and is let go otherwise.
    Woken,
}

/// A wake lock to hold or to block on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Target {
    /// The name's own, which a lone exclusive holder keeps.
    Name,
    /// That of one holder of another kind.
    Holder(i64),
    /// None: nobody holds the lock (only tickets wait).
    Nobody,
}

/// The wake locks of one process, by lock name.
#[derive(Default)]
pub(super) struct Wakes {
    /// Held on the current session: the key and why.
    held: HashMap<String, (i64, Why)>,
    /// What this process's hold calls for; kept over reconnects, to take it again.
    want: HashMap<String, Target>,
    /// What the last busy attempt says to block on.
    blocked_on: HashMap<String, Target>,
    /// When a woken waiter last passed the name's wake lock on, to whom.
    passed: crate::backend::engine::PassOn,
    /// Channels this session listens on.
    listening: HashSet<String>,
    /// The server process of this session, once a wake-up statement asked.
    pid: Option<String>,
    /// Statements of this connection run on different server sessions (a
    /// pooler in transaction mode): no wake locks, no LISTEN.
    pub(super) pooled: bool,
}

impl Wakes {
    /// The server lets go of a closed session's advisory locks and LISTENs.
    pub(super) fn connection_closed(&mut self) {
        self.held.clear();
        self.listening.clear();
        self.pid = None;
    }
}

/// What a wake-up statement found.
enum Got {
    /// The value of its one column.
    Value(i64),
    /// Its wait ran out (`lock_timeout`).
    TimedOut,
    /// Another server session answered: a pooler in transaction mode.
    Pooled,
    /// No answer: the connection is dropped, and the caller's next request
    /// shows whether the server is there.
    Failed,
}

/// FNV-1a-128's first 8 bytes as a signed bigint.
pub(super) fn key_of(data: &str) -> i64 {
    let hex = sql::hash_hex(data.as_bytes());
    u64::from_str_radix(&hex[..16], 16).expect("hex digits") as i64
}

impl Db {
    pub(super) fn scope(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub(super) fn wake_key(&self, name: &str) -> i64 {
        key_of(&format!("{}\0{name}", self.scope()))
    }

    fn holder_key(&self, name: &str, fence: u64) -> i64 {
        key_of(&format!("{}\0{name}\0{fence}", self.scope()))
    }

    /// The channel releases of `name` are announced on.
    pub(super) fn channel(&self, name: &str) -> String {
        format!("dlock_{:016x}", self.wake_key(name) as u64)
    }

    fn target_of(&self, name: &str, info: Option<&LockInfo>) -> Target {
        match info {
            None => Target::Nobody,
            Some(i) if i.mode == Mode::Exclusive && i.slots == 1 => Target::Name,
            Some(i) => Target::Holder(self.holder_key(name, i.fence)),
        }
    }

    /// Runs a wake-up statement: `body` is an expression of one integer,
    /// evaluated only on the session this connection's locks are on; `wait`
    /// bounds a lock wait inside it; `listen` adds a LISTEN that takes
    /// effect only if it succeeded.
    fn wake_sql(&mut self, body: &str, wait: Option<Duration>, listen: Option<&str>) -> Got {
        if self.wakes.pooled {
            return Got::Pooled;
        }
        if self.wakes.pid.is_none() {
            match self.simple("SELECT pg_backend_pid()", None) {
                Ok(mut rows) => self.wakes.pid = rows.pop(),
                Err(_) => return Got::Failed,
            }
        }
        let pid = self.wakes.pid.clone().unwrap_or_default();
        // A different session: fail before any lock is taken, by a division
        // by zero (which the planner cannot fold away: the pid is not a
        // constant), and so skip the rest.
        let mut q = format!(
            "SELECT CASE WHEN pg_backend_pid() <> {pid} THEN 1 / (pg_backend_pid() * 0) \
             ELSE ({body})::int END"
        );
        if let Some(w) = wait {
            let ms = w.as_millis().clamp(1, i32::MAX as u128);
            q = format!("SET lock_timeout = {ms}; {q}; RESET lock_timeout");
        }
        if let Some(c) = listen.filter(|c| !self.wakes.listening.contains(*c)) {
            q.push_str(&format!("; LISTEN {c}"));
        }
        match self.simple(&q, wait) {
            Ok(rows) => {
                if let Some(c) = listen {
                    self.wakes.listening.insert(c.to_string());
                }
                match rows.first().and_then(|v| v.parse().ok()) {
                    Some(v) => Got::Value(v),
                    None => Got::Failed,
                }
            }
            Err(Some(code)) if code == "22012" => {
                self.wakes.pooled = true;
                self.wakes.held.clear();
                self.wakes.listening.clear();
                crate::output::event(
                    crate::output::Level::Info,
                    "pooled",
                    None,
                    &format!(
                        "{} ran this connection's statements on different server sessions \
                         (a pooler in transaction mode?): waiters back off instead of queueing \
                         in the server; connect dlock to the server or a session-mode pool",
                        self.shown
                    ),
                    serde_json::json!({}),
                );
                Got::Pooled
            }
            Err(Some(code)) if code == "55P03" => Got::TimedOut,
            Err(_) => Got::Failed,
        }
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

    /// Best effort: without it waiters wait until the lease would end or a
    /// release is announced, so a failure here must not fail the request.
    fn hold_wake(&mut self, name: &str) {
        let Some(want) = self.wakes.want.get(name).copied() else {
            return;
        };
        let held = self.wakes.held.get(name).copied();
        let key = match (want, held) {
            // Woken with it: the new holder keeps it, and the other waiters sleep on.
            (Target::Name, Some((key, Why::Woken))) => key,
            (Target::Name, Some(_)) | (Target::Nobody, _) => return,
            (Target::Name, None) => self.wake_key(name),
            (Target::Holder(k), Some((held, _))) if held == k => return,
            (Target::Holder(k), held) => {
                if held.is_some() {
                    // The name's, kept since woken: the next waiter's turn.
                    self.let_go(name, false);
                }
                k
            }
        };
        if held.is_some_and(|(k, _)| k == key) {
            self.wakes.held.insert(name.to_string(), (key, Why::Holder));
            return;
        }
        // Taken only if free: a woken waiter may keep the name's, and then
        // it sleeps until this process's release is announced.
        let body = format!("pg_try_advisory_lock({key})");
        if let Got::Value(1) = self.wake_sql(&body, None, None) {
            self.wakes.held.insert(name.to_string(), (key, Why::Holder));
        }
    }

    /// Lets go of the wake lock held for `name` (the next waiter blocked on
    /// it wakes), announcing a release too with `notify`.
    fn let_go(&mut self, name: &str, notify: bool) {
        let held = self.wakes.held.remove(name);
        let chan = self.channel(name);
        let q = match (held, notify) {
            (Some((key, _)), true) => {
                format!("SELECT pg_advisory_unlock({key}), pg_notify('{chan}', '')")
            }
            (Some((key, _)), false) => format!("SELECT pg_advisory_unlock({key})"),
            (None, true) => format!("SELECT pg_notify('{chan}', '')"),
            (None, false) => return,
        };
        // Best effort: a failure drops the connection, and with it the lock.
        let _ = self.simple(&q, None);
    }

    /// This process's hold on `name` ended (released, or found lost);
    /// `notify` announces that the lock may be free.
    pub(super) fn drop_wake(&mut self, name: &str, notify: bool) {
        self.wakes.want.remove(name);
        self.let_go(name, notify);
    }

    /// Announces that `name` may have room: a grant that leaves room, or a
    /// release by `--force`.
    pub(super) fn announce(&mut self, name: &str) {
        self.let_go_if_woken(name);
        let chan = self.channel(name);
        let _ = self.simple(&format!("SELECT pg_notify('{chan}', '')"), None);
    }

    fn let_go_if_woken(&mut self, name: &str) {
        if matches!(self.wakes.held.get(name), Some((_, Why::Woken))) {
            self.let_go(name, false);
        }
    }

    /// After a busy attempt: what to block on. With `owed` (the ticket of a
    /// waiter ahead in the queue that could go), a woken waiter passes the name's wake lock on.
    pub(super) fn busy(&mut self, name: &str, info: Option<&LockInfo>, owed: u64) {
        let target = self.target_of(name, info);
        self.wakes.blocked_on.insert(name.to_string(), target);
        let woken = matches!(self.wakes.held.get(name), Some((_, Why::Woken)));
        let w = &mut self.wakes;
        if owed != 0 && woken && w.passed.pass(owed) {
            self.let_go(name, false);
        }
    }
}

pub(super) struct PgWaiter {
    db: Arc<Mutex<Db>>,
    name: String,
    key: i64,
    chan: String,
    backoff: crate::backoff::Backoff,
    /// A holder's wake lock last found free: see `wait_holder`.
    found_free: Option<i64>,
}

impl PgWaiter {
    pub(super) fn new(db: Arc<Mutex<Db>>, name: &str) -> PgWaiter {
        let (key, chan) = {
            let d = lock(&db);
            (d.wake_key(name), d.channel(name))
        };
        PgWaiter {
            db,
            name: name.to_string(),
            key,
            chan,
            backoff: sql::quiet_backoff(),
            found_free: None,
        }
    }

    /// Behind a lone exclusive holder: the name's wake lock, kept when it
    /// comes; once kept, the announcement of the next release.
    fn wait_name(&mut self, timeout: Duration) -> Result<()> {
        let mut db = lock(&self.db);
        if db.wakes.held.contains_key(&self.name) {
            // Woken, yet a process that never waited holds the lease: we
            // keep the wake lock, so the others sleep on, and listen.
            if !db.notified(timeout) {
                return Ok(());
            }
            self.backoff.reset();
            return Ok(());
        }
        let body = format!("pg_advisory_lock({})::text = ''", self.key);
        match db.wake_sql(&body, Some(timeout), Some(&self.chan)) {
            Got::Value(_) => {
                // Kept while the caller tries. What was announced before
                // this attempt is stale: the attempt sees it.
                db.drop_notes();
                db.wakes
                    .held
                    .insert(self.name.clone(), (self.key, Why::Woken));
                self.backoff.reset();
            }
            // The caller tries again as the holder's lease runs out.
            Got::TimedOut => {}
            Got::Pooled | Got::Failed => {
                drop(db);
                std::thread::sleep(self.backoff.next_within(timeout));
            }
        }
        Ok(())
    }

    /// Behind holders of another kind: the wake lock of the one whose lease
    /// ends first, for at most the back-off step.
    fn wait_holder(&mut self, key: i64, timeout: Duration) -> Result<()> {
        let wait = self.backoff.next_within(timeout);
        let mut db = lock(&self.db);
        // -1 at once when nobody holds it; else 1 once its holder let go (not kept).
        let body = format!(
            "CASE WHEN pg_try_advisory_lock({key}) THEN \
               CASE WHEN pg_advisory_unlock({key}) THEN -1 ELSE -1 END \
             WHEN pg_advisory_lock({key})::text = '' THEN \
               CASE WHEN pg_advisory_unlock({key}) THEN 1 ELSE 1 END \
             ELSE 0 END"
        );
        match db.wake_sql(&body, Some(wait), Some(&self.chan)) {
            Got::Value(1) => self.backoff.reset(),
            // Free the first time: that holder may have just let go, after
            // our attempt saw it; try at once (now listening). Free again:
            // it is not a live process; a release is announced.
            Got::Value(-1) if self.found_free != Some(key) => self.found_free = Some(key),
            Got::Value(_) => {
                if db.notified(wait) {
                    self.backoff.reset();
                }
            }
            Got::TimedOut => {}
            Got::Pooled | Got::Failed => {
                drop(db);
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    /// Only queued tickets, no holder: until a release is announced, or
    /// the back-off step.
    fn wait_nobody(&mut self, timeout: Duration) -> Result<()> {
        let wait = self.backoff.next_within(timeout);
        let mut db = lock(&self.db);
        if !db.wakes.listening.contains(&self.chan) {
            // Listen first, then let the caller try: nothing is missed.
            if let Got::Value(_) = db.wake_sql("1", None, Some(&self.chan)) {
                return Ok(());
            }
        }
        if db.wakes.listening.contains(&self.chan) && !db.wakes.pooled {
            if db.notified(wait) {
                self.backoff.reset();
            }
        } else {
            drop(db);
            std::thread::sleep(wait);
        }
        Ok(())
    }
}

impl Waiter for PgWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let target = lock(&self.db).wakes.blocked_on.get(&self.name).copied();
        match target.unwrap_or(Target::Name) {
            Target::Name => self.wait_name(timeout),
            Target::Holder(key) => self.wait_holder(key, timeout),
            Target::Nobody => self.wait_nobody(timeout),
        }
    }

    /// A release before the first wait leaves the wake lock free (or with a
    /// waiter that was queued earlier, which takes the lease and releases in
    /// turn), so the first wait returns at once, listening from then on,
    /// and a holder's own lock found free means a try at once: nothing is
    /// missed.
    fn keeps_wakeups(&self) -> bool {
        true
    }
}

impl Drop for PgWaiter {
    /// Gives up: the name's wake lock goes to the next waiter. A holder's stays.
    fn drop(&mut self) {
        lock(&self.db).let_go_if_woken(&self.name);
    }
}
