//! The lease logic shared by the SQL backends (SQLite, MySQL/MariaDB and PostgreSQL),
//! which differ only in how they run a statement and in their `Dialect`.
//!
//! One row per lock name, kept after release so that the fence never
//! restarts: name, token (NULL when free), fence, holder_host, holder_pid,
//! holder_user, holder_command, acquired_us, expires_us (µs since the epoch
//! by the database's clock), version, and state (the holders and queue of
//! the lock kinds beyond a lone exclusive holder: see `row.rs`).
//!
//! Every change is the engine's loop (`engine.rs`): read the row and the
//! clock, decide in Rust (the plans of `kinds.rs`, the same for every
//! backend), then write with a compare-and-set on `version`. A concurrent
//! writer makes the write match no row and the whole step is retried, so two
//! callers never both win, and no lock is held
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

use super::engine::breaks::{self, Break};
pub use super::engine::Renewed;
use super::engine::{self, Snapshot, Write};
use super::kinds::{lease_us, Effects, State};
use super::{Acquire, Check, LockInfo, Request};
use crate::backoff::Backoff;
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
    /// Tells a broken holder (`release --force`), where the database can
    /// push a notice: a statement of two parameters, the channel and the
    /// payload, and the scope that channels are named in (see [`break_channel`]).
    notices: Option<(String, String)>,
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
            notices: None,
            extend_mine: format!(
                "UPDATE {t} SET expires_us = {now} + ?, version = version + 1 {mine}"
            ),
            // What `Row::storing` makes of a state without holders; any
            // queue (and record of a break) in `state` stays.
            clear_mine: format!(
                "UPDATE {t} SET token = NULL, holder_host = '', holder_pid = 0, \
                 holder_user = '', holder_command = '', acquired_us = 0, expires_us = 0, \
                 version = version + 1 {mine}"
            ),
        }
    }

    /// Sends every break of a live lease as `stmt` (channel, payload) with
    /// the channels of `scope`: the payload is the token's id and who broke
    /// it, one per line, for the holder's listener.
    pub fn notifying(mut self, stmt: &str, scope: &str) -> Leases {
        self.notices = Some((stmt.to_string(), scope.to_string()));
        self
    }

    /// Announces every change of a row (a grant, release, break or queue
    /// change; not a renewal) on `channel` with the name as payload, by
    /// PostgreSQL's `pg_notify` inside the writing statement itself (no
    /// extra round trip; delivered at commit), for `dlock watch`.
    pub fn announcing(mut self, channel: &str) -> Leases {
        let wrap = |stmt: &str| {
            format!("WITH w AS ({stmt} RETURNING name) SELECT pg_notify('{channel}', name) FROM w")
        };
        self.insert = wrap(&self.insert);
        self.update = wrap(&self.update);
        self.update_until = wrap(&self.update_until);
        self.clear_mine = wrap(&self.clear_mine);
        self
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

    /// Takes, extends or queues for `req`; the effects say whom to wake.
    pub fn acquire(&self, db: &mut dyn Exec, req: &Request) -> Result<(Acquire, Effects)> {
        // The SQL backends wake after the write, and damp it there.
        let free = engine::PassOn::default();
        engine::acquire(&mut Rows { leases: self, db }, req, &free)
    }

    /// Extends `token`'s lease; with `Done`, says which holder it is.
    pub fn renew(
        &self,
        db: &mut dyn Exec,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<(Check, Option<Renewed>)> {
        engine::renew(&mut Rows { leases: self, db }, name, token, lease)
    }

    /// Frees `token`'s hold (or its place in the queue).
    pub fn release(&self, db: &mut dyn Exec, name: &str, token: &str) -> Result<(Check, Effects)> {
        engine::release(&mut Rows { leases: self, db }, name, token)
    }

    /// Breaks every holder, or the one whose token id is `only`.
    pub fn force_release(
        &self,
        db: &mut dyn Exec,
        name: &str,
        only: Option<&str>,
    ) -> Result<(Vec<LockInfo>, Effects)> {
        engine::force(&mut Rows { leases: self, db }, name, only)
    }

    /// Who broke, with `release --force`, the lease of `name` whose token
    /// id is `id`, if the row still records it (until that lease's expiry).
    pub fn broken_by(&self, db: &mut dyn Exec, name: &str, id: &str) -> Result<Option<String>> {
        let (now, row) = self.read(db, name)?;
        let Some(row) = row else { return Ok(None) };
        Ok(breaks::by_id(&row.stored()?.1, now, id))
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

/// A lease table over one connection, as the engine's store: the row is
/// the value, its `version` column what a write compares.
struct Rows<'a> {
    leases: &'a Leases,
    db: &'a mut dyn Exec,
}

/// A row as read, with its records of breaks.
struct Seen {
    row: Option<Row>,
    breaks: Vec<Break>,
}

impl engine::Store for Rows<'_> {
    type Version = Seen;

    /// To name the breaker in the row's records and in a notice; a lookup
    /// on `--force` alone.
    const RECORDS_BREAKS: bool = true;

    fn read(&mut self, name: &str) -> Result<Snapshot<Seen>> {
        let (now, row) = self.leases.read(self.db, name)?;
        let (state, breaks) = match &row {
            Some(r) => r.stored()?,
            None => (State::default(), Vec::new()),
        };
        Ok(Snapshot {
            now,
            state,
            version: Seen { row, breaks },
        })
    }

    /// Wakes nobody: each SQL backend wakes its own way from the effects.
    /// Keeps the live records of breaks, and adds those of `w`.
    fn write(&mut self, name: &str, seen: &Snapshot<Seen>, new: &State, w: &Write) -> Result<bool> {
        let cur = seen.version.row.as_ref();
        let kept = breaks::after_write(&seen.version.breaks, seen.now, new, w);
        let row = Row::storing_with(name, new.clone(), &kept, cur.map_or(0, |c| c.version));
        let stored = self.leases.write(self.db, cur, &row, w.until)?;
        if let Some((stmt, scope)) = self.leases.notices.as_ref().filter(|_| stored) {
            let chan = Val::Text(break_channel(scope, name));
            for (token, _) in w.broken {
                let note = format!("{}\n{}", crate::names::token_id(token), w.by);
                // Best effort: a holder that misses it learns at its next renewal.
                let _ = self.db.execute(stmt, &[chan.clone(), Val::Text(note)]);
            }
        }
        Ok(stored)
    }

    fn broken_by(&self, seen: &Snapshot<Seen>, token: &str) -> Option<String> {
        breaks::by_token(&seen.version.breaks, seen.now, token)
    }

    fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.db.begin()?;
        match f(self).and_then(|out| self.db.commit().map(|_| out)) {
            Ok(out) => Ok(out),
            Err(e) => {
                self.db.rollback();
                Err(e)
            }
        }
    }

    /// "My token, the lone holder, not expired" is the WHERE of one UPDATE.
    fn fast_renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Option<Check>> {
        let p = [
            Val::Int(lease_us(lease)),
            Val::Text(name.to_string()),
            Val::Text(token.to_string()),
        ];
        let done = self.db.execute(&self.leases.extend_mine, &p)? == 1;
        Ok(done.then_some(Check::Done))
    }

    fn fast_release(&mut self, name: &str, token: &str) -> Result<Option<Check>> {
        let p = [Val::Text(name.to_string()), Val::Text(token.to_string())];
        let done = self.db.execute(&self.leases.clear_mine, &p)? == 1;
        Ok(done.then_some(Check::Done))
    }
}

/// The channel on which breaks of `name`'s leases are announced: a
/// lowercase identifier (at most 26 characters) from a hash of the scope
/// (the table, with its schema) and the name.
pub fn break_channel(scope: &str, name: &str) -> String {
    let hex = hash_hex(format!("{scope}\0{name}").as_bytes());
    format!("dlock_brk_{}", &hex[..16])
}

/// The channel on which every change of a row in `scope` is announced
/// (see [`Leases::announcing`]): a lowercase identifier from a hash of it.
pub fn changes_channel(scope: &str) -> String {
    let hex = hash_hex(format!("{scope}\0changes").as_bytes());
    format!("dlock_chg_{}", &hex[..16])
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
