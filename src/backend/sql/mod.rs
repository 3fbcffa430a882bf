//! The lease logic shared by the SQL backends (SQLite, MySQL/MariaDB and PostgreSQL),
//! which differ only in how they run a statement and in their `Dialect`.
//!
//! One row per lock name, kept after release so that the fence never
//! restarts: name, token (NULL when free), fence, holder_host, holder_pid,
//! holder_user, holder_command, acquired_us, expires_us (µs since the epoch
//! by the database's clock), version, and state (the holders and queue of
//! the lock kinds beyond a lone exclusive holder: see `row.rs`).
//!
//! Every change is: read the row and the clock, decide in Rust (the plans of
//! `kinds.rs`, the same for every backend), then write with a compare-and-set
//! on `version`. A concurrent writer makes the write match no row and the
//! whole step is retried, so two callers never both win, and no lock is held
//! across round trips: a client that stalls or loses its network
//! mid-operation cannot leave a row locked for others. SQLite additionally
//! brackets each step in `BEGIN IMMEDIATE`, so there the compare-and-set
//! never loses.
//!
//! Renew and release, the common case of which is "my token, the lone
//! holder, not expired", first try one UPDATE whose WHERE is that very check
//! (atomic on its own); only when it matches no row (another kind of holder,
//! or not held) do they take the general step.

mod row;
mod schema;
#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::Result;

use super::kinds::{self, lease_us, Effects, State};
use super::{Acquire, Check, LockInfo, Request};
use crate::backoff::Backoff;
use crate::error::{fail, INTERNAL};
/// For tests of the backends that store it.
#[cfg(test)]
pub use row::MARKER;
use row::{bad_reply, int, parse_row, state_of, Row};
pub use schema::{
    add_state_column, create_table, create_table_in, none_without_table, Dialect, NoTable, COLUMNS,
};

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

/// A compare-and-set that keeps losing means something rewrites the row in a loop.
const MAX_TRIES: usize = 100;

/// What a plan decided, and the condition on its write.
struct Planned<T> {
    out: T,
    fx: Effects,
    /// Write only while the database clock is before this: the expiry, as
    /// read, of the lease being extended, since an extension must never
    /// bring back a lease that ran out between the read and the write.
    until: Option<i64>,
}

/// The expiry of `token`'s hold, if it has one.
fn expiry_of(st: &State, token: &str) -> Option<i64> {
    st.holders
        .iter()
        .find(|h| h.token == token)
        .map(|h| h.expires_us)
}

/// Which holder a renewal extended (wake-up schemes differ by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The lone exclusive holder of the lock.
    Lone,
    /// One holder among others of a kind (readers, semaphore slots), with its fence.
    Among(u64),
}

/// The statements for one lease table, and the steps built from them.
pub struct Leases {
    pub table: String,
    select_one: String,
    select_held: String,
    insert: String,
    update: String,
    update_until: String,
    /// Extends the lease where `token` holds it unexpired: renew in one statement.
    extend_mine: String,
    /// Clears the row where `token` holds it unexpired: release in one statement.
    clear_mine: String,
}

impl Leases {
    pub fn new(d: &Dialect, table: &str) -> Leases {
        Leases::in_schema(d, None, table)
    }

    /// The statements for `table` in `schema` (the database's default when None).
    pub fn in_schema(d: &Dialect, schema: Option<&str>, table: &str) -> Leases {
        let cols = COLUMNS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let t = d.qualified(schema, table);
        let now = d.now_us;
        let set = "token = ?, fence = ?, holder_host = ?, holder_pid = ?, holder_user = ?, \
                   holder_command = ?, acquired_us = ?, expires_us = ?, version = ?, state = ?";
        let update = format!("UPDATE {t} SET {set} WHERE name = ? AND version = ?");
        let mine = format!("WHERE name = ? AND token = ? AND expires_us > {now}");
        Leases {
            table: table.to_string(),
            // The join yields the clock even when the row does not exist yet.
            select_one: format!(
                "SELECT {now}, {cols} FROM (SELECT 1 AS one) AS o LEFT JOIN {t} AS l ON l.name = ?"
            ),
            select_held: format!("SELECT {now}, {cols} FROM {t} AS l WHERE l.token IS NOT NULL"),
            insert: format!(
                "{} INTO {t} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?){}",
                d.insert_ignore, d.insert_tail
            ),
            update_until: format!("{update} AND ? > {now}"),
            update,
            extend_mine: format!(
                "UPDATE {t} SET expires_us = {now} + ?, version = version + 1 {mine}"
            ),
            // What `Row::storing` makes of a state without holders; any
            // queue in `state` stays.
            clear_mine: format!(
                "UPDATE {t} SET token = NULL, holder_host = '', holder_pid = 0, \
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

    /// Writes `new` if the row is still as read (`cur`), and with `until`
    /// only before that instant; false when someone else wrote first.
    fn write(
        &self,
        db: &mut dyn Exec,
        cur: Option<&Row>,
        new: &Row,
        until: Option<i64>,
    ) -> Result<bool> {
        let text = |s: &str| Val::Text(s.to_string());
        let fields = [
            new.token.as_deref().map_or(Val::Null, text),
            Val::Int(new.fence),
            text(&new.holder.host),
            Val::Int(i64::from(new.holder.pid)),
            text(&new.holder.user),
            text(&new.holder.command),
            Val::Int(new.acquired_us),
            Val::Int(new.expires_us),
        ];
        let state = new.state.as_deref().map_or(Val::Null, text);
        let n = match cur {
            // A new row cannot extend anything.
            None => {
                let mut p = vec![text(&new.name)];
                p.extend(fields);
                p.extend([Val::Int(1), state]);
                db.execute(&self.insert, &p)?
            }
            Some(c) => {
                let mut p = fields.to_vec();
                p.extend([Val::Int(c.version + 1), state]);
                p.extend([text(&c.name), Val::Int(c.version)]);
                match until {
                    Some(t) => {
                        p.push(Val::Int(t));
                        db.execute(&self.update_until, &p)?
                    }
                    None => db.execute(&self.update, &p)?,
                }
            }
        };
        Ok(n == 1)
    }

    /// Read, plan, write; again from the start whenever the write loses a race.
    fn step<T>(
        &self,
        db: &mut dyn Exec,
        name: &str,
        mut plan: impl FnMut(i64, &mut State) -> Result<Planned<T>>,
    ) -> Result<(T, Effects)> {
        for _ in 0..MAX_TRIES {
            db.begin()?;
            let attempt = (|| {
                let (now, cur) = self.read(db, name)?;
                let mut st = state_of(cur.as_ref())?;
                let p = plan(now, &mut st)?;
                if !p.fx.write {
                    return Ok(Some((p.out, p.fx)));
                }
                let new = Row::storing(name, st, cur.as_ref().map_or(0, |c| c.version));
                let written = self.write(db, cur.as_ref(), &new, p.until)?;
                Ok(written.then_some((p.out, p.fx)))
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

    /// Takes, extends or queues for `req`; the effects say whom to wake.
    pub fn acquire(&self, db: &mut dyn Exec, req: &Request) -> Result<(Acquire, Effects)> {
        self.step(db, req.name, |now, st| {
            let held = expiry_of(st, req.token);
            let (out, fx) = kinds::plan_acquire(now, st, req)?;
            let until = match &out {
                Acquire::Acquired(g) if g.extended => held,
                _ => None,
            };
            Ok(Planned { out, fx, until })
        })
    }

    /// Extends `token`'s lease; with `Done`, says which holder it is.
    pub fn renew(
        &self,
        db: &mut dyn Exec,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<(Check, Option<Renewed>)> {
        let p = [
            Val::Int(lease_us(lease)),
            Val::Text(name.to_string()),
            Val::Text(token.to_string()),
        ];
        if db.execute(&self.extend_mine, &p)? == 1 {
            return Ok((Check::Done, Some(Renewed::Lone)));
        }
        let (out, _) = self.step(db, name, |now, st| {
            let held = expiry_of(st, token);
            let (check, fx) = kinds::plan_renew(now, st, name, token, lease);
            let done = matches!(check, Check::Done);
            let until = done.then_some(held).flatten();
            let who = st.holders.iter().find(|h| h.token == token);
            let who = who
                .filter(|_| done)
                .map(|h| match kinds::split(st.clone()).0 {
                    Some(_) => Renewed::Lone,
                    None => Renewed::Among(h.fence.max(0) as u64),
                });
            Ok(Planned {
                out: (check, who),
                fx,
                until,
            })
        })?;
        Ok(out)
    }

    /// Frees `token`'s hold (or its place in the queue).
    pub fn release(&self, db: &mut dyn Exec, name: &str, token: &str) -> Result<(Check, Effects)> {
        let p = [Val::Text(name.to_string()), Val::Text(token.to_string())];
        if db.execute(&self.clear_mine, &p)? == 1 {
            let fx = Effects {
                write: true,
                wake: true,
            };
            return Ok((Check::Done, fx));
        }
        self.step(db, name, |now, st| {
            let (out, fx) = kinds::plan_release(now, st, name, token);
            Ok(Planned {
                out,
                fx,
                until: None,
            })
        })
    }

    /// Breaks every holder, or the one whose token id is `only`.
    pub fn force_release(
        &self,
        db: &mut dyn Exec,
        name: &str,
        only: Option<&str>,
    ) -> Result<(Vec<LockInfo>, Effects)> {
        self.step(db, name, |now, st| {
            let (out, fx) = kinds::plan_force(now, st, name, only);
            Ok(Planned {
                out,
                fx,
                until: None,
            })
        })
    }

    /// One entry per live holder, sorted by name, then fence.
    pub fn status(&self, db: &mut dyn Exec, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        let mut out = Vec::new();
        match names {
            Some(names) => {
                let mut names = names.to_vec();
                names.sort();
                names.dedup();
                for n in &names {
                    let (now, row) = self.read(db, n)?;
                    out.extend(state_of(row.as_ref())?.infos(n, now));
                }
            }
            None => {
                for vals in db.query(&self.select_held, &[])? {
                    let now = int(vals.first())?;
                    if let Some(r) = parse_row(&vals[1..])? {
                        out.extend(r.state()?.infos(&r.name, now));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.name, a.fence).cmp(&(&b.name, b.fence)));
        Ok(out)
    }
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

/// Waits that double from 10ms to 1s (the caller keeps each within its
/// timeout), for when no event will announce a release because the holder's
/// process has exited (a plain `dlock acquire`): a release by another
/// process is then seen within a second, at two statements a second per
/// waiter at most.
pub fn quiet_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), 2, Duration::from_secs(1))
}
