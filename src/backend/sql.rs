//! The lease logic shared by the SQL backends (SQLite and MySQL/MariaDB),
//! which differ only in how they run a statement and in a few dialect strings.
//!
//! One row per lock name, kept after release so that the fence never restarts:
//!   name, token (NULL when free), fence, holder_host, holder_pid, holder_user,
//!   holder_command, acquired_us, expires_us (µs since the epoch by the
//!   database's clock) and version.
//!
//! Every change is: read the row and the clock, decide in Rust (the pure
//! `plan_*` functions below), then write with a compare-and-set on `version`.
//! A concurrent writer makes the write match no row and the whole step is
//! retried, so two callers never both win, and no lock is held across round
//! trips: a client that stalls or loses its network mid-operation cannot leave
//! a row locked for others. SQLite additionally brackets each step in
//! `BEGIN IMMEDIATE`, so there the compare-and-set never loses.
//!
//! Renew and release, the common case of which is "my token, not expired",
//! first try one UPDATE whose WHERE is that very check (atomic on its own);
//! only when it matches no row do they read the row to tell why.

use std::time::Duration;

use anyhow::Result;

use super::{Acquire, Check, Grant, LockInfo, Request};
use crate::error::{fail, INTERNAL};
use crate::holder::Holder;
use crate::names::token_id;

/// A value passed to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

/// What a backend provides: statements with positional `?` parameters.
pub trait Exec {
    /// The rows a query returns.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>>;
    /// Runs a statement and returns how many rows it matched.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64>;
    /// Brackets one read-decide-write step (SQLite: `BEGIN IMMEDIATE`).
    fn begin(&mut self) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    fn rollback(&mut self) {}
}

/// The few strings in which the dialects differ.
pub struct Dialect {
    /// An expression for the database's clock in µs since the epoch.
    pub now_us: &'static str,
    /// An INSERT that does nothing when the key exists.
    pub insert_ignore: &'static str,
}

/// Column sizes, in bytes, of the holder fields (see the CREATE TABLE statements).
pub const MAX_HOST: usize = 255;
pub const MAX_USER: usize = 255;
pub const MAX_COMMAND: usize = 1024;

/// A compare-and-set that keeps losing means something rewrites the row in a loop.
const MAX_TRIES: usize = 100;

/// One lock's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub token: Option<String>,
    pub fence: i64,
    pub holder: Holder,
    pub acquired_us: i64,
    pub expires_us: i64,
    pub version: i64,
}

impl Row {
    fn held(&self, now: i64) -> bool {
        self.token.is_some() && self.expires_us > now
    }

    fn info(&self, now: i64) -> LockInfo {
        LockInfo {
            name: self.name.clone(),
            holder: self.holder.clone(),
            token_id: token_id(self.token.as_deref().unwrap_or("")),
            fence: self.fence.max(0) as u64,
            acquired_at_us: self.acquired_us,
            ttl: Duration::from_micros((self.expires_us - now).max(0) as u64),
            mode: super::Mode::Exclusive,
            slots: 1,
            slot: None,
            queued: 0,
        }
    }

    /// The row once its owner is gone: the fence stays, so it never restarts.
    fn cleared(&self) -> Row {
        Row {
            token: None,
            holder: Holder::default(),
            acquired_us: 0,
            expires_us: 0,
            ..self.clone()
        }
    }
}

/// A write decided by a plan: the row's new contents.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub row: Row,
    /// Only while the stored lease has not expired by the time of the write:
    /// an extension must never bring an expired lease back.
    pub unexpired: bool,
}

fn lease_us(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros())
        .unwrap_or(i64::MAX / 4)
        .max(1)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub fn plan_acquire(now: i64, cur: Option<&Row>, req: &Request) -> (Option<Change>, Acquire) {
    let lease = lease_us(req.lease);
    if let Some(c) = cur.filter(|c| c.held(now)) {
        if c.token.as_deref() == Some(req.token) {
            let row = Row {
                expires_us: now + lease,
                ..c.clone()
            };
            let grant = Grant {
                fence: c.fence as u64,
                server_now_us: now,
                extended: true,
                lease: req.lease,
                slot: None,
            };
            return (
                Some(Change {
                    row,
                    unexpired: true,
                }),
                Acquire::Acquired(grant),
            );
        }
        return (None, Acquire::Busy(Some(c.info(now))));
    }
    // Strictly increasing, and still increasing if the row was lost, since the clock moved on.
    let last = cur.map_or(0, |c| c.fence);
    let fence = (last + 1).max(now);
    let row = Row {
        name: req.name.to_string(),
        token: Some(req.token.to_string()),
        fence,
        holder: Holder {
            host: clip(&req.holder.host, MAX_HOST),
            pid: req.holder.pid,
            user: clip(&req.holder.user, MAX_USER),
            command: clip(&req.holder.command, MAX_COMMAND),
        },
        acquired_us: now,
        expires_us: now + lease,
        version: cur.map_or(0, |c| c.version),
    };
    let grant = Grant {
        fence: fence as u64,
        server_now_us: now,
        extended: false,
        lease: req.lease,
        slot: None,
    };
    (
        Some(Change {
            row,
            unexpired: false,
        }),
        Acquire::Acquired(grant),
    )
}

pub fn plan_renew(
    now: i64,
    cur: Option<&Row>,
    token: &str,
    lease: Duration,
) -> (Option<Change>, Check) {
    match cur.filter(|c| c.held(now)) {
        None => (None, Check::NotHeld),
        Some(c) if c.token.as_deref() == Some(token) => (
            Some(Change {
                row: Row {
                    expires_us: now + lease_us(lease),
                    ..c.clone()
                },
                unexpired: true,
            }),
            Check::Done,
        ),
        Some(c) => (None, Check::HeldByOther(c.info(now))),
    }
}

pub fn plan_release(now: i64, cur: Option<&Row>, token: &str) -> (Option<Change>, Check) {
    match cur.filter(|c| c.held(now)) {
        None => (None, Check::NotHeld),
        Some(c) if c.token.as_deref() == Some(token) => (
            Some(Change {
                row: c.cleared(),
                unexpired: false,
            }),
            Check::Done,
        ),
        Some(c) => (None, Check::HeldByOther(c.info(now))),
    }
}

pub fn plan_force(now: i64, cur: Option<&Row>) -> (Option<Change>, Option<LockInfo>) {
    match cur.filter(|c| c.held(now)) {
        None => (None, None),
        Some(c) => (
            Some(Change {
                row: c.cleared(),
                unexpired: false,
            }),
            Some(c.info(now)),
        ),
    }
}

const COLUMNS: &str = "name, token, fence, holder_host, holder_pid, holder_user, holder_command, acquired_us, expires_us, version";

/// The statements for one lease table, and the steps built from them.
pub struct Leases {
    pub table: String,
    select_one: String,
    select_held: String,
    insert: String,
    update: String,
    update_unexpired: String,
    /// Extends the lease where `token` holds it unexpired: renew in one statement.
    extend_mine: String,
    /// Clears the row where `token` holds it unexpired: release in one statement.
    clear_mine: String,
}

impl Leases {
    pub fn new(d: &Dialect, table: &str) -> Leases {
        let cols = COLUMNS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let set = "token = ?, fence = ?, holder_host = ?, holder_pid = ?, holder_user = ?, \
                   holder_command = ?, acquired_us = ?, expires_us = ?, version = ?";
        let update = format!("UPDATE `{table}` SET {set} WHERE name = ? AND version = ?");
        let mine = format!("WHERE name = ? AND token = ? AND expires_us > {}", d.now_us);
        Leases {
            table: table.to_string(),
            // The join yields the clock even when the row does not exist yet.
            select_one: format!(
                "SELECT {now}, {cols} FROM (SELECT 1 AS one) AS o LEFT JOIN `{table}` AS l ON l.name = ?",
                now = d.now_us
            ),
            select_held: format!(
                "SELECT {now}, {cols} FROM `{table}` AS l WHERE l.token IS NOT NULL",
                now = d.now_us
            ),
            insert: format!(
                "{} INTO `{table}` ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                d.insert_ignore
            ),
            update_unexpired: format!("{update} AND expires_us > {}", d.now_us),
            update,
            extend_mine: format!(
                "UPDATE `{table}` SET expires_us = {now} + ?, version = version + 1 {mine}",
                now = d.now_us
            ),
            // The same values as `Row::cleared`: the fence stays.
            clear_mine: format!(
                "UPDATE `{table}` SET token = NULL, holder_host = '', holder_pid = 0, \
                 holder_user = '', holder_command = '', acquired_us = 0, expires_us = 0, \
                 version = version + 1 {mine}"
            ),
        }
    }

    /// The clock and `name`'s row, if it exists.
    fn read(&self, db: &mut dyn Exec, name: &str) -> Result<(i64, Option<Row>)> {
        let rows = db.query(&self.select_one, &[Val::Text(name.to_string())])?;
        let first = rows
            .first()
            .ok_or_else(|| bad_reply("no row from a join"))?;
        Ok((int(first.first())?, parse_row(&first[1..])?))
    }

    /// Writes `ch` if the row is still as read (`cur`); false when someone else wrote first.
    fn write(&self, db: &mut dyn Exec, cur: Option<&Row>, ch: &Change) -> Result<bool> {
        let r = &ch.row;
        let fields = [
            r.token.clone().map_or(Val::Null, Val::Text),
            Val::Int(r.fence),
            Val::Text(r.holder.host.clone()),
            Val::Int(i64::from(r.holder.pid)),
            Val::Text(r.holder.user.clone()),
            Val::Text(r.holder.command.clone()),
            Val::Int(r.acquired_us),
            Val::Int(r.expires_us),
        ];
        let n = match cur {
            None => {
                let mut p = vec![Val::Text(r.name.clone())];
                p.extend(fields);
                p.push(Val::Int(1));
                db.execute(&self.insert, &p)?
            }
            Some(c) => {
                let mut p = fields.to_vec();
                p.push(Val::Int(c.version + 1));
                p.push(Val::Text(c.name.clone()));
                p.push(Val::Int(c.version));
                let sql = if ch.unexpired {
                    &self.update_unexpired
                } else {
                    &self.update
                };
                db.execute(sql, &p)?
            }
        };
        Ok(n == 1)
    }

    /// Read, decide, write; again from the start whenever the write loses a race.
    fn step<T>(
        &self,
        db: &mut dyn Exec,
        name: &str,
        mut plan: impl FnMut(i64, Option<&Row>) -> (Option<Change>, T),
    ) -> Result<T> {
        for _ in 0..MAX_TRIES {
            db.begin()?;
            let attempt = (|| {
                let (now, cur) = self.read(db, name)?;
                let (change, out) = plan(now, cur.as_ref());
                match change {
                    None => Ok(Some(out)),
                    Some(ch) => Ok(self.write(db, cur.as_ref(), &ch)?.then_some(out)),
                }
            })();
            match attempt.and_then(|out| db.commit().map(|_| out)) {
                Ok(Some(out)) => return Ok(out),
                Ok(None) => {}
                Err(e) => {
                    db.rollback();
                    return Err(e);
                }
            }
        }
        Err(fail(
            INTERNAL,
            format!(
                "the row of lock '{name}' kept changing during {MAX_TRIES} attempts; giving up"
            ),
        ))
    }

    pub fn acquire(&self, db: &mut dyn Exec, req: &Request) -> Result<Acquire> {
        self.step(db, req.name, |now, cur| plan_acquire(now, cur, req))
    }

    pub fn renew(
        &self,
        db: &mut dyn Exec,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Check> {
        let p = [
            Val::Int(lease_us(lease)),
            Val::Text(name.to_string()),
            Val::Text(token.to_string()),
        ];
        if db.execute(&self.extend_mine, &p)? == 1 {
            return Ok(Check::Done);
        }
        self.step(db, name, |now, cur| plan_renew(now, cur, token, lease))
    }

    pub fn release(&self, db: &mut dyn Exec, name: &str, token: &str) -> Result<Check> {
        let p = [Val::Text(name.to_string()), Val::Text(token.to_string())];
        if db.execute(&self.clear_mine, &p)? == 1 {
            return Ok(Check::Done);
        }
        self.step(db, name, |now, cur| plan_release(now, cur, token))
    }

    pub fn force_release(
        &self,
        db: &mut dyn Exec,
        name: &str,
        only: Option<&str>,
    ) -> Result<Vec<LockInfo>> {
        let r = self.step(db, name, |now, cur| {
            let cur = cur.filter(|c| {
                only.is_none_or(|id| Some(id) == c.token.as_deref().map(token_id).as_deref())
            });
            plan_force(now, cur)
        })?;
        Ok(r.into_iter().collect())
    }

    pub fn status(&self, db: &mut dyn Exec, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        let mut out = Vec::new();
        match names {
            Some(names) => {
                for n in names {
                    let (now, row) = self.read(db, n)?;
                    out.extend(row.filter(|r| r.held(now)).map(|r| r.info(now)));
                }
            }
            None => {
                for vals in db.query(&self.select_held, &[])? {
                    let now = int(vals.first())?;
                    if let Some(r) = parse_row(&vals[1..])?.filter(|r| r.held(now)) {
                        out.push(r.info(now));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }
}

fn bad_reply(what: &str) -> anyhow::Error {
    fail(
        INTERNAL,
        format!("unexpected reply from the database: {what}"),
    )
}

fn int(v: Option<&Val>) -> Result<i64> {
    match v {
        Some(Val::Int(i)) => Ok(*i),
        Some(Val::Text(s)) => s.trim().parse().map_err(|_| bad_reply("a number expected")),
        _ => Err(bad_reply("a number expected")),
    }
}

fn text(v: Option<&Val>) -> String {
    match v {
        Some(Val::Text(s)) => s.clone(),
        Some(Val::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

/// A row in COLUMNS order; all NULL (the join found nothing) is no row.
fn parse_row(v: &[Val]) -> Result<Option<Row>> {
    if v.len() < 10 {
        return Err(bad_reply("too few columns"));
    }
    if v[0] == Val::Null {
        return Ok(None);
    }
    Ok(Some(Row {
        name: text(v.first()),
        token: match &v[1] {
            Val::Null => None,
            t => Some(text(Some(t))).filter(|t| !t.is_empty()),
        },
        fence: int(v.get(2))?,
        holder: Holder {
            host: text(v.get(3)),
            pid: u32::try_from(int(v.get(4))?).unwrap_or(0),
            user: text(v.get(5)),
            command: text(v.get(6)),
        },
        acquired_us: int(v.get(7))?,
        expires_us: int(v.get(8))?,
        version: int(v.get(9))?,
    }))
}

/// A table name from the prefix: kept as is when it is plain lowercase ASCII,
/// otherwise made plain and told apart by a hash (MySQL may fold the case of
/// table names, and identifiers are at most 64 characters).
pub fn table_name(prefix: &str) -> String {
    let plain = !prefix.is_empty()
        && prefix.len() <= 40
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        return format!("{prefix}_leases");
    }
    let clean: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(24)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{clean}_{}_leases", &hash_hex(prefix.as_bytes())[..12])
}

/// FNV-1a, 128 bits, as 32 hex digits: stable across builds and hosts, unlike
/// std's hasher, because every dlock that shares a backend must agree on it.
/// Not collision-proof against an adversary; a collision costs only a
/// spurious wake-up.
pub fn hash_hex(data: &[u8]) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for &b in data {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}

/// The key under which waiters for one lock are woken.
pub fn wake_key(scope: &str, name: &str) -> String {
    hash_hex(format!("{scope}\0{name}").as_bytes())
}

/// Waits that double from 10ms to 1s (never past the caller's timeout), for
/// when no event will announce a release because the holder's process has
/// exited (a plain `dlock acquire`): a release by another process is then
/// seen within a second, at two statements a second per waiter at most.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub fn sleep(&mut self, timeout: Duration) {
        std::thread::sleep(self.next.min(timeout));
        self.next = (self.next * 2).min(Self::MAX);
    }

    /// A real wake-up happened: the next quiet spell starts short again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder {
            host: "h".into(),
            pid: 7,
            user: "u".into(),
            command: "c".into(),
        }
    }

    fn req<'a>(token: &'a str, h: &'a Holder) -> Request<'a> {
        Request {
            name: "n",
            token,
            lease: Duration::from_millis(1000),
            holder: h,
            kind: super::super::Kind::MUTEX,
        }
    }

    fn held_row(token: &str, fence: i64, expires_us: i64) -> Row {
        Row {
            name: "n".into(),
            token: Some(token.into()),
            fence,
            holder: holder(),
            acquired_us: 1,
            expires_us,
            version: 3,
        }
    }

    #[test]
    fn acquire_takes_a_free_or_expired_lock_with_a_greater_fence() {
        let h = holder();
        let (ch, out) = plan_acquire(5_000, None, &req("t", &h));
        let ch = ch.unwrap();
        assert!(!ch.unexpired);
        assert_eq!(ch.row.fence, 5_000);
        assert_eq!(ch.row.expires_us, 5_000 + 1_000_000);
        assert!(matches!(
            out,
            Acquire::Acquired(Grant {
                fence: 5_000,
                extended: false,
                ..
            })
        ));

        // Expired, and a fence ahead of the clock: last + 1 wins.
        let old = held_row("other", 9_000, 4_000);
        let (ch, out) = plan_acquire(5_000, Some(&old), &req("t", &h));
        assert_eq!(ch.unwrap().row.fence, 9_001);
        assert!(matches!(out, Acquire::Acquired(Grant { fence: 9_001, .. })));

        // Released rows keep their fence.
        let (ch, _) = plan_acquire(5_000, Some(&old.cleared()), &req("t", &h));
        assert_eq!(ch.unwrap().row.fence, 9_001);
    }

    #[test]
    fn acquire_extends_for_the_same_token_and_is_busy_for_others() {
        let h = holder();
        let cur = held_row("t", 42, 10_000);
        let (ch, out) = plan_acquire(5_000, Some(&cur), &req("t", &h));
        let ch = ch.unwrap();
        assert!(
            ch.unexpired,
            "an extension must not revive an expired lease"
        );
        assert_eq!((ch.row.fence, ch.row.expires_us), (42, 1_005_000));
        assert!(matches!(
            out,
            Acquire::Acquired(Grant {
                fence: 42,
                extended: true,
                ..
            })
        ));

        let (ch, out) = plan_acquire(5_000, Some(&cur), &req("x", &h));
        assert!(ch.is_none());
        match out {
            Acquire::Busy(Some(i)) => {
                assert_eq!(i.ttl, Duration::from_micros(5_000));
                assert_eq!(i.fence, 42);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renew_checks_the_token_and_never_revives() {
        let cur = held_row("t", 1, 10_000);
        let lease = Duration::from_secs(1);
        let (ch, c) = plan_renew(5_000, Some(&cur), "t", lease);
        assert!(matches!(c, Check::Done) && ch.unwrap().unexpired);
        assert!(matches!(
            plan_renew(5_000, Some(&cur), "x", lease).1,
            Check::HeldByOther(_)
        ));
        let (ch, c) = plan_renew(10_000, Some(&cur), "t", lease);
        assert!(
            ch.is_none() && matches!(c, Check::NotHeld),
            "expired stays lost"
        );
        assert!(matches!(plan_renew(1, None, "t", lease).1, Check::NotHeld));
    }

    #[test]
    fn release_keeps_the_fence_and_clears_the_owner() {
        let cur = held_row("t", 77, 10_000);
        let (ch, c) = plan_release(5_000, Some(&cur), "t");
        let row = ch.unwrap().row;
        assert!(matches!(c, Check::Done));
        assert_eq!((row.token, row.fence, row.expires_us), (None, 77, 0));
        assert!(matches!(
            plan_release(5_000, Some(&cur), "x").1,
            Check::HeldByOther(_)
        ));
        assert!(matches!(
            plan_release(10_001, Some(&cur), "t").1,
            Check::NotHeld
        ));
        let (ch, who) = plan_force(5_000, Some(&cur));
        assert_eq!(ch.unwrap().row.fence, 77);
        assert_eq!(who.unwrap().token_id, "t");
        assert!(plan_force(10_000, Some(&cur)).1.is_none());
    }

    #[test]
    fn holder_fields_fit_their_columns() {
        let h = Holder {
            host: "h".repeat(300),
            pid: 1,
            user: "u".into(),
            command: "é".repeat(600),
        };
        let (ch, _) = plan_acquire(1, None, &req("t", &h));
        let row = ch.unwrap().row;
        assert_eq!(row.holder.host.len(), MAX_HOST);
        assert!(row.holder.command.len() <= MAX_COMMAND);
        assert!(row.holder.command.chars().all(|c| c == 'é'));
    }

    #[test]
    fn table_names_are_safe_and_distinct() {
        assert_eq!(table_name("dlock"), "dlock_leases");
        let a = table_name("My-Prefix");
        let b = table_name("my-prefix");
        assert_ne!(a, b);
        for t in [
            &a,
            &b,
            &table_name(&"x".repeat(200)),
            &table_name("`; drop"),
        ] {
            assert!(t.len() <= 64, "{t}");
            assert!(
                t.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{t}"
            );
        }
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(hash_hex(b""), "6c62272e07bb014262b821756295c58d");
        assert_ne!(wake_key("a", "b"), wake_key("b", "a"));
        assert_eq!(wake_key("p", "n").len(), 32);
    }
}
