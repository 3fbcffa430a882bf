//! MySQL / MariaDB backend: `mysql://user:pass@host[:port]/database`.
//!
//! Leases live in one InnoDB table per prefix (`<prefix>_leases`, created on
//! first use); the lease logic is in `sql/`. Every time is the server's
//! clock, and each step is autocommit statements guarded by a
//! compare-and-set, so no row lock outlives a statement.
//!
//! URL parameters: `require_ssl=true` turns on TLS, verified against the
//! built-in web roots or `root_cert_path=/path/ca.pem`;
//! `cert_chain_path` + `priv_key_path` present a client certificate;
//! `danger_skip_domain_validation=true` and `danger_accept_invalid_certs=true`
//! weaken the checks (each of these also turns TLS on). `socket=/path` uses a
//! unix socket, `tcp_connect_timeout_ms`, `compress`, `prefer_socket` and the
//! other parameters of the `mysql` crate are passed through.
//!
//! Statements go as plain text queries, values written into them as
//! literals (numbers as digits, text as hex): a process lives for one
//! acquisition, so a prepared statement would cost a round trip of its own
//! and be used once.
//!
//! Waking waiters: live holders keep `GET_LOCK` wake locks on which waiters
//! block inside the server; see `wake.rs`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, Value};

mod breaks;
mod conn;
mod wake;
use conn::{
    breaks_connection, describe, is_denied, is_full, is_no_state, options, set_socket_timeout,
    Unconnected, ER_DUP_FIELDNAME, ER_NO_SUCH_TABLE,
};

use super::sql::{self, Dialect, Exec, Leases, Val};
use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use wake::{MysqlWaiter, Wakes};

/// Names are VARBINARY so that they compare byte for byte (case-sensitive)
/// whatever the server's collation; holder fields and the state are bytes
/// too, so any UTF-8 fits without a charset setting. LONGBLOB, since a
/// shorter type could cut the JSON of a large semaphore in a lax sql_mode.
const DIALECT: Dialect = Dialect {
    // Independent of the session time zone, and the same on MySQL and MariaDB.
    now_us: "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))",
    insert_ignore: "INSERT IGNORE",
    insert_tail: "",
    quote: '`',
    name_type: "VARBINARY(255)",
    token_type: "VARBINARY(128)",
    text_type: |n| format!("VARBINARY({n})"),
    int_type: "BIGINT",
    state_type: "LONGBLOB",
    table_options: " ENGINE=InnoDB",
};

// Server error codes dlock tells apart.
pub struct MysqlBackend {
    /// Shared with the waiter, which blocks on the same connection.
    db: Arc<Mutex<Db>>,
    leases: Leases,
    /// For the break listener's connection of its own.
    url: Url,
    cfg: Config,
}

struct Db {
    opts: Opts,
    conn: Option<Conn>,
    /// The URL without its password, for messages.
    shown: String,
    database: String,
    table: String,
    timeout: Duration,
    /// The wake locks held, and what to block on.
    wakes: Wakes,
    /// Whether a statement may create (or alter) the lease table: not
    /// while `status` reads.
    read_only: bool,
}

/// Opens `mysql://`.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = MysqlBackend::open(url, cfg)?;
    Ok((Box::new(b), url.location("mysql")))
}

impl MysqlBackend {
    fn open(url: &Url, cfg: &Config) -> Result<MysqlBackend> {
        let shown = url.shown().to_string();
        let timeout = cfg.timeout.max(Duration::from_millis(1));
        let (opts, database) = options(url, timeout)?;
        let table = sql::table_name(&cfg.prefix);
        let mut db = Db {
            opts,
            conn: None,
            shown,
            database,
            table: table.clone(),
            timeout,
            wakes: Wakes::default(),
            read_only: false,
        };
        match db.establish() {
            Ok(conn) => db.conn = Some(conn),
            // Full for now (max_connections): the first request connects
            // again, and fails then if it must; a waiter retries it with
            // back-off until --wait runs out.
            Err(Unconnected::Driver(mysql::Error::MySqlError(m))) if is_full(m.code) => {}
            Err(e) => return Err(db.explain(e)),
        }
        Ok(MysqlBackend {
            db: Arc::new(Mutex::new(db)),
            leases: Leases::new(&DIALECT, &table),
            url: url.clone(),
            cfg: cfg.clone(),
        })
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.db)
    }
}

/// A panic elsewhere cannot leave `Db` half-changed in a way that matters:
/// at worst a wake lock is thought held, which only affects latency.
fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(|e| e.into_inner())
}

/// `sql` with each `?` outside quotes replaced by the next value as a
/// literal. Text becomes a hex literal (`X'…'`, a binary string), which reads
/// the same whatever the sql_mode (`NO_BACKSLASH_ESCAPES`) or the connection's
/// character set, so no value can ever be read as SQL.
fn interpolate(sql: &str, vals: &[Val]) -> Result<String> {
    let mut out = String::with_capacity(sql.len() + vals.len() * 16);
    let mut vals = vals.iter();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '?') => {
                let v = vals
                    .next()
                    .ok_or_else(|| fail(INTERNAL, "too few values for a statement"))?;
                match v {
                    Val::Null => out.push_str("NULL"),
                    Val::Int(i) => write!(out, "{i}").expect("writing to a String"),
                    Val::Text(t) => {
                        out.push_str("X'");
                        for b in t.bytes() {
                            write!(out, "{b:02x}").expect("writing to a String");
                        }
                        out.push('\'');
                    }
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    if vals.next().is_some() || quote.is_some() {
        return Err(fail(INTERNAL, "a statement and its values do not match"));
    }
    Ok(out)
}

fn from_value(v: Value) -> Val {
    match v {
        Value::NULL => Val::Null,
        Value::Int(i) => Val::Int(i),
        Value::UInt(u) => Val::Int(i64::try_from(u).unwrap_or(i64::MAX)),
        Value::Float(f) => Val::Int(f as i64),
        Value::Double(f) => Val::Int(f as i64),
        Value::Bytes(b) => Val::Text(String::from_utf8_lossy(&b).into_owned()),
        other => Val::Text(other.as_sql(true)),
    }
}

impl Db {
    fn explain(&self, e: Unconnected) -> anyhow::Error {
        match e {
            Unconnected::Driver(e) => describe(&e, &self.shown, &self.database, self.timeout),
            Unconnected::Elsewhere(e) => e,
        }
    }

    /// Connects; a failure sent no request, so it changed nothing.
    fn connect(&self) -> Result<Conn> {
        self.establish()
            .map_err(|e| crate::error::mark_unsent(self.explain(e)))
    }

    fn connection(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.wakes.connection_closed();
            self.conn = Some(self.connect()?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.wakes.connection_closed();
    }

    /// Runs `f` on the connection, creating the table on first use; any
    /// transport error drops the connection, since a late reply to a
    /// timed-out request would otherwise be read as the next one's answer.
    fn run<T>(&mut self, mut f: impl FnMut(&mut Conn) -> mysql::Result<T>) -> Result<T> {
        let (mut created, mut altered) = (false, false);
        loop {
            let r = f(self.connection()?);
            match r {
                Ok(v) => return Ok(v),
                Err(mysql::Error::MySqlError(m))
                    if m.code == ER_NO_SUCH_TABLE && self.read_only =>
                {
                    return Err(anyhow::Error::new(sql::NoTable));
                }
                Err(mysql::Error::MySqlError(m)) if m.code == ER_NO_SUCH_TABLE && !created => {
                    created = true;
                    let ddl = sql::create_table(&DIALECT, &self.table);
                    let r = self.connection()?.query_drop(ddl);
                    if let Err(e) = r {
                        return Err(self.fail(e));
                    }
                }
                Err(mysql::Error::MySqlError(m)) if is_no_state(&m) && self.read_only => {
                    return Err(self.older_table());
                }
                Err(mysql::Error::MySqlError(m)) if is_no_state(&m) && !altered => {
                    altered = true;
                    self.add_state_column()?;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Adds the `state` column to a table made by an older dlock. Another
    /// process may have just done so ("duplicate column"): the same.
    fn add_state_column(&mut self) -> Result<()> {
        let ddl = sql::add_state_column(&DIALECT, &self.table);
        match self.connection()?.query_drop(ddl) {
            Ok(()) => Ok(()),
            Err(mysql::Error::MySqlError(m)) if m.code == ER_DUP_FIELDNAME => Ok(()),
            Err(mysql::Error::MySqlError(m)) if is_denied(m.code) => Err(self.older_table()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A table without the `state` column that this user, or this read,
    /// may not add.
    fn older_table(&self) -> anyhow::Error {
        fail(
            UNAVAILABLE,
            format!(
                "table {t} was made by an older dlock and this user may not add the \
                 column that lock kinds need: run ALTER TABLE {t} ADD COLUMN state \
                 LONGBLOB NULL once as a user with the ALTER privilege",
                t = DIALECT.ident(&self.table)
            ),
        )
    }

    fn fail(&mut self, e: mysql::Error) -> anyhow::Error {
        if breaks_connection(&e) {
            self.drop_connection();
        }
        describe(&e, &self.shown, &self.database, self.timeout)
    }
}

impl Exec for Db {
    fn query(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<Vec<Val>>> {
        let q = interpolate(sql, vals)?;
        let rows: Vec<mysql::Row> = self.run(|c| c.query(&q))?;
        Ok(rows
            .into_iter()
            .map(|r| r.unwrap().into_iter().map(from_value).collect())
            .collect())
    }

    fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64> {
        let q = interpolate(sql, vals)?;
        self.run(|c| {
            c.query_drop(&q)?;
            Ok(c.affected_rows())
        })
    }
}

impl Backend for MysqlBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let mut db = self.db();
        let (r, fx) = self.leases.acquire(&mut *db, req)?;
        match &r {
            Acquire::Acquired(g) => db.granted(req.name, &req.kind, g.fence),
            // A woken waiter keeps the name's wake lock and tries again after
            // a back-off (see `wake.rs`), so the others sleep on, unless a
            // waiter ahead of it is owed the wake-up.
            Acquire::Busy(info) | Acquire::Queued(info) => {
                db.busy(req.name, info.as_ref(), fx.owed)
            }
        }
        Ok(r)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let mut db = self.db();
        let (r, who) = self.leases.renew(&mut *db, name, token, lease)?;
        match r {
            // Taken again after a reconnect, or once a waiter that had it lets go.
            Check::Done => db.renewed(name, who),
            _ => db.drop_wake(name),
        }
        Ok(r)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let mut db = self.db();
        let (r, _) = self.leases.release(&mut *db, name, token)?;
        db.drop_wake(name);
        Ok(r)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        // A broken live holder lets its wake lock go as it stops (see breaks.rs).
        let mut db = self.db();
        let broken = self.leases.force_release(&mut *db, name, only)?.0;
        db.tell_broken(name, &broken);
        Ok(broken)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        // A look changes nothing: no table means no locks.
        let mut db = self.db();
        db.read_only = true;
        let r = self.leases.status(&mut *db, names);
        db.read_only = false;
        sql::none_without_table(r)
    }

    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        let mut db = self.db();
        db.read_only = true;
        let r = self.leases.broken_by(&mut *db, name, token_id);
        db.read_only = false;
        sql::none_without_table(r)
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        // No statement and no connection of its own: it waits on this one.
        Ok(Box::new(MysqlWaiter::new(Arc::clone(&self.db), name)))
    }

    fn reconnect(&mut self) -> Result<()> {
        let mut db = self.db();
        db.drop_connection();
        db.connection().map(|_| ())
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        breaks::watch(&self.url, &self.cfg, name, token, on_break);
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let mut db = self.db();
        db.timeout = timeout.max(Duration::from_millis(1));
        if let Some(c) = &db.conn {
            set_socket_timeout(c, db.timeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::USAGE;

    fn options(url: &str, _: &str, t: Duration) -> Result<(Opts, String)> {
        conn::options(&crate::backend::parse_url(url)?, t)
    }

    #[test]
    fn urls_become_driver_options() {
        let t = Duration::from_secs(5);
        let (o, db) = options("mysql://u:p%40ss@db.example:3307/locks", "x", t).unwrap();
        assert_eq!(db, "locks");
        assert_eq!(o.get_pass(), Some("p@ss"));
        assert_eq!(o.get_tcp_port(), 3307);
        assert!(!o.get_prefer_socket() && o.get_ssl_opts().is_none());
        let (o, _) = options("mysql://u@h/d?require_ssl=true&prefer_socket=true", "x", t).unwrap();
        assert!(o.get_ssl_opts().is_some() && o.get_prefer_socket());
        for bad in [
            "mysql://u@h",
            "mysql://u@h/d?require_ssl=maybe",
            "mysql://u@h/d?nope=1",
            "mysql://u@h1,h2/d",
        ] {
            assert_eq!(
                crate::error::code_of(&options(bad, "x", t).unwrap_err()),
                USAGE,
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_map_to_exit_codes_and_plain_words() {
        use crate::error::code_of;
        let t = Duration::from_secs(1);
        let server = |code: u16| {
            mysql::Error::MySqlError(mysql::MySqlError {
                state: "HY000".into(),
                message: "m".into(),
                code,
            })
        };
        let io = |k: std::io::ErrorKind| mysql::Error::IoError(k.into());
        for (e, code, words) in [
            (server(1045), UNAVAILABLE, "authentication to AT failed"),
            (server(1049), UNAVAILABLE, "unknown database 'db'"),
            (server(1044), UNAVAILABLE, "may not use database 'db'"),
            (server(1927), UNAVAILABLE, "lost connection to AT"),
            (server(1064), INTERNAL, "unexpected error from AT"),
            (
                io(std::io::ErrorKind::ConnectionRefused),
                UNAVAILABLE,
                "connection refused",
            ),
            (
                io(std::io::ErrorKind::WouldBlock),
                UNAVAILABLE,
                "did not answer within 1s",
            ),
            (
                io(std::io::ErrorKind::BrokenPipe),
                UNAVAILABLE,
                "lost connection to AT",
            ),
        ] {
            let err = describe(&e, "AT", "db", t);
            assert_eq!(code_of(&err), code, "{e}");
            assert!(err.to_string().contains(words), "{err}");
        }
        assert!(!breaks_connection(&server(1146)));
        assert!(breaks_connection(&io(std::io::ErrorKind::TimedOut)));
    }

    #[test]
    fn values_become_literals_that_cannot_be_read_as_sql() {
        let q = interpolate(
            "SELECT '?', `a?`, ? FROM t WHERE a = ? AND b = ? AND c = ?",
            &[
                Val::Int(-7),
                Val::Null,
                Val::Text("x' OR 1 -- \\?".into()),
                Val::Text(String::new()),
            ],
        )
        .unwrap();
        assert_eq!(
            q,
            "SELECT '?', `a?`, -7 FROM t WHERE a = NULL AND b = X'7827204f522031202d2d205c3f' AND c = X''"
        );
        assert!(interpolate("SELECT ?", &[]).is_err());
        assert!(interpolate("SELECT 1", &[Val::Int(1)]).is_err());
    }
}
