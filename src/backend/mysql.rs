//! MySQL / MariaDB backend: `mysql://user:pass@host[:port]/database`.
//!
//! Leases live in one InnoDB table per prefix (`<prefix>_leases`, created on
//! first use); the lease logic is in `sql.rs`. Every time is the server's
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
//! Waking waiters: the live holder (the dlock process that acquired and is
//! still running, as `dlock exec` is) also holds `GET_LOCK('dlock-<hash>')`
//! on its connection; a waiter blocks server-side in `GET_LOCK` on the same
//! name and gets it the moment the holder releases or its connection dies.
//! Lock names are case-insensitive and at most 64 characters, hence the hash.
//! When no live holder has the wake lock (its `dlock acquire` has exited),
//! waiters back off exponentially from 10ms to 1s. MySQL before 5.7
//! drops a session's earlier GET_LOCK on a new one, so there one process
//! keeps at most one wake lock.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Result;
use mysql::consts::CapabilityFlags;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Value};

use super::sql::{self, Backoff, Dialect, Exec, Leases, Val};
use super::{Acquire, Backend, Check, Config, LockInfo, Request, Waiter};
use crate::error::{fail, INTERNAL, UNAVAILABLE, USAGE};

const DIALECT: Dialect = Dialect {
    // Independent of the session time zone, and the same on MySQL and MariaDB.
    now_us: "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))",
    insert_ignore: "INSERT IGNORE",
};

// Server error codes dlock tells apart.
const ER_DBACCESS_DENIED: u16 = 1044;
const ER_ACCESS_DENIED: u16 = 1045;
const ER_BAD_DB: u16 = 1049;
const ER_NO_SUCH_TABLE: u16 = 1146;

pub struct MysqlBackend {
    db: Db,
    leases: Leases,
}

struct Db {
    opts: Opts,
    conn: Option<Conn>,
    /// The URL without its password, for messages.
    shown: String,
    database: String,
    table: String,
    timeout: Duration,
    /// Names whose wake-up lock the current connection holds.
    wake_held: HashSet<String>,
}

impl MysqlBackend {
    pub fn open(url: &str, cfg: &Config) -> Result<MysqlBackend> {
        let shown = super::redact(url);
        let timeout = cfg.timeout.max(Duration::from_millis(1));
        let (opts, database) = options(url, &shown, timeout)?;
        let table = sql::table_name(&cfg.prefix);
        let mut db = Db {
            opts,
            conn: None,
            shown,
            database,
            table: table.clone(),
            timeout,
            wake_held: HashSet::new(),
        };
        db.connection()?;
        Ok(MysqlBackend {
            db,
            leases: Leases::new(&DIALECT, &table),
        })
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Driver options from the URL: dlock's own parameters taken out, its
/// timeouts and session settings added.
fn options(url: &str, shown: &str, timeout: Duration) -> Result<(Opts, String)> {
    let usage = |why: String| {
        fail(
            USAGE,
            format!("invalid MySQL URL '{shown}': {why}; expected mysql://user:pass@host[:port]/database"),
        )
    };
    let mut u = ::url::Url::parse(url).map_err(|e| usage(e.to_string()))?;
    let mut require_ssl = false;
    let mut prefer_socket_given = false;
    let mut kept = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "require_ssl" => {
                require_ssl = parse_bool(&v)
                    .ok_or_else(|| usage(format!("{k} must be true or false, not '{v}'")))?;
            }
            _ => {
                prefer_socket_given |= k == "prefer_socket";
                kept.push((k.into_owned(), v.into_owned()));
            }
        }
    }
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    let opts = Opts::from_url(u.as_str()).map_err(|e| usage(e.to_string()))?;
    let database = opts
        .get_db_name()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| usage("no database named".into()))?
        .to_string();
    let tls = require_ssl || opts.get_ssl_opts().is_some();
    if tls {
        // rustls needs a process-wide crypto provider; ring builds with no system libraries.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let ssl = opts.get_ssl_opts().cloned();
    let mut b = OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(timeout))
        .read_timeout(Some(timeout))
        .write_timeout(Some(timeout))
        .init(vec!["SET time_zone = '+00:00'"])
        .additional_capabilities(CapabilityFlags::CLIENT_FOUND_ROWS);
    if !prefer_socket_given {
        // The driver would otherwise reconnect over the server's unix socket: a second handshake.
        b = b.prefer_socket(false);
    }
    if tls {
        b = b.ssl_opts(ssl.unwrap_or_default());
    }
    Ok((Opts::from(b), database))
}

/// Bounds every read and write on the connection's socket (the driver sets
/// its timeouts only when connecting).
fn set_socket_timeout(conn: &Conn, t: Duration) {
    let t = t.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid fd owned by `conn`, and a timeval of the size given.
        unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }
}

/// One clear line for a driver error; the password never appears in them.
fn describe(e: &mysql::Error, at: &str, database: &str, timeout: Duration) -> anyhow::Error {
    use std::io::ErrorKind;
    let waited = humantime::format_duration(timeout);
    let refused = || {
        fail(
            UNAVAILABLE,
            format!("cannot connect to {at}: connection refused; is the MySQL/MariaDB server running and listening there?"),
        )
    };
    let silent = || {
        fail(
            UNAVAILABLE,
            format!("{at} did not answer within {waited}; check host, port and firewall, or raise --connect-timeout"),
        )
    };
    match e {
        mysql::Error::MySqlError(m) => {
            let msg = format!("{} ({})", m.message, m.code);
            match m.code {
                ER_ACCESS_DENIED | 1698 | 1251 => fail(
                    UNAVAILABLE,
                    format!("authentication to {at} failed: check the user and password in the URL"),
                ),
                3159 => fail(
                    UNAVAILABLE,
                    format!("{at} accepts only TLS connections: add require_ssl=true to the URL"),
                ),
                ER_DBACCESS_DENIED => fail(
                    UNAVAILABLE,
                    format!("the user in {at} may not use database '{database}': grant it access"),
                ),
                ER_BAD_DB => fail(
                    UNAVAILABLE,
                    format!("unknown database '{database}' on {at}: create it first (CREATE DATABASE `{database}`)"),
                ),
                1040 | 1129 | 1130 | 1226 => {
                    fail(UNAVAILABLE, format!("{at} refused the connection: {msg}"))
                }
                1053 | 1077 | 1152 | 1158..=1161 | 1317 | 1927 | 2006 | 2013 | 4031 => {
                    fail(UNAVAILABLE, format!("lost connection to {at}: {msg}"))
                }
                1205 | 1213 | 1969 | 3024 => {
                    fail(UNAVAILABLE, format!("{at} did not complete the request: {msg}"))
                }
                1142 | 1143 | 1227 | 1290 | 1792 | 1836 => {
                    fail(UNAVAILABLE, format!("{at} refused the request: {msg}"))
                }
                _ => fail(INTERNAL, format!("unexpected error from {at}: {msg}")),
            }
        }
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => match io_error(e) {
            Some(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => fail(
                UNAVAILABLE,
                format!(
                    "TLS with {at} failed: {io}; check root_cert_path and the server's certificate"
                ),
            ),
            Some(io) => match io.kind() {
                ErrorKind::ConnectionRefused => refused(),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => silent(),
                ErrorKind::NotFound => fail(UNAVAILABLE, format!("cannot connect to {at}: {io}")),
                _ => fail(UNAVAILABLE, format!("lost connection to {at}: {io}")),
            },
            None => fail(UNAVAILABLE, format!("lost connection to {at}: {e}")),
        },
        mysql::Error::DriverError(d) => match d {
            mysql::DriverError::ConnectTimeout | mysql::DriverError::Timeout => silent(),
            mysql::DriverError::CouldNotConnect(Some((_, _, ErrorKind::ConnectionRefused))) => {
                refused()
            }
            mysql::DriverError::CouldNotConnect(Some((_, _, ErrorKind::TimedOut))) => silent(),
            mysql::DriverError::CouldNotConnect(Some((_, why, _))) => {
                fail(UNAVAILABLE, format!("cannot connect to {at}: {why}"))
            }
            mysql::DriverError::UnknownAuthPlugin(_)
            | mysql::DriverError::CleartextPluginDisabled
            | mysql::DriverError::OldMysqlPasswordDisabled => {
                fail(UNAVAILABLE, format!("authentication to {at} failed: {d}"))
            }
            mysql::DriverError::TlsNotSupported => fail(
                UNAVAILABLE,
                format!("{at} does not offer TLS; drop require_ssl or enable TLS on the server"),
            ),
            _ => fail(UNAVAILABLE, format!("lost connection to {at}: {d}")),
        },
        mysql::Error::TlsError(t) => fail(UNAVAILABLE, format!("TLS with {at} failed: {t}")),
        mysql::Error::UrlError(u) => fail(USAGE, format!("invalid MySQL URL '{at}': {u}")),
        other => fail(INTERNAL, format!("unexpected reply from {at}: {other}")),
    }
}

/// The I/O error under a driver error, where there is one (a read timeout
/// arrives wrapped in the packet codec's error).
fn io_error(e: &mysql::Error) -> Option<&std::io::Error> {
    match e {
        mysql::Error::IoError(io) => Some(io),
        mysql::Error::CodecError(c) => std::error::Error::source(c)?.downcast_ref(),
        _ => None,
    }
}

/// Errors after which the connection can no longer be trusted.
fn breaks_connection(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(m) => matches!(m.code, 1053 | 1077 | 1927 | 2006 | 2013 | 4031),
        mysql::Error::FromRowError(_) | mysql::Error::FromValueError(_) => false,
        _ => true,
    }
}

fn to_value(v: &Val) -> Value {
    match v {
        Val::Null => Value::NULL,
        Val::Int(i) => Value::Int(*i),
        Val::Text(s) => Value::Bytes(s.clone().into_bytes()),
    }
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

fn params(vals: &[Val]) -> Params {
    if vals.is_empty() {
        Params::Empty
    } else {
        Params::Positional(vals.iter().map(to_value).collect())
    }
}

impl Db {
    fn connect(&self) -> Result<Conn> {
        // Near a renewal deadline the timeout is shorter than when the options were made.
        let t = Some(self.timeout);
        let opts = OptsBuilder::from_opts(self.opts.clone())
            .tcp_connect_timeout(t)
            .read_timeout(t)
            .write_timeout(t);
        let conn =
            Conn::new(opts).map_err(|e| describe(&e, &self.shown, &self.database, self.timeout))?;
        set_socket_timeout(&conn, self.timeout);
        Ok(conn)
    }

    fn connection(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.wake_held.clear();
            self.conn = Some(self.connect()?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        // The server releases a closed connection's GET_LOCKs.
        self.wake_held.clear();
    }

    /// Runs `f` on the connection, creating the table on first use; any
    /// transport error drops the connection, since a late reply to a
    /// timed-out request would otherwise be read as the next one's answer.
    fn run<T>(&mut self, mut f: impl FnMut(&mut Conn) -> mysql::Result<T>) -> Result<T> {
        let mut created = false;
        loop {
            let r = f(self.connection()?);
            match r {
                Ok(v) => return Ok(v),
                Err(mysql::Error::MySqlError(m)) if m.code == ER_NO_SUCH_TABLE && !created => {
                    created = true;
                    let ddl = create_table(&self.table);
                    let r = self.connection()?.query_drop(ddl);
                    if let Err(e) = r {
                        return Err(self.fail(e));
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: mysql::Error) -> anyhow::Error {
        if breaks_connection(&e) {
            self.drop_connection();
        }
        describe(&e, &self.shown, &self.database, self.timeout)
    }

    fn wake_key(&self, name: &str) -> String {
        let scope = format!("{}\0{}", self.database, self.table);
        format!("dlock-{}", sql::wake_key(&scope, name))
    }

    /// Best effort: without it waiters fall back to backing off, so a failure
    /// here must not fail the request that took the lease.
    fn hold_wake(&mut self, name: &str) {
        if self.wake_held.contains(name) {
            return;
        }
        let key = self.wake_key(name);
        let got = self.run(|c| c.exec_first::<Option<i64>, _, _>("SELECT GET_LOCK(?, 0)", (&key,)));
        if let Ok(Some(Some(1))) = got {
            self.wake_held.insert(name.to_string());
        }
    }

    /// Wakes the waiters of `name`, if this connection was keeping them asleep.
    fn drop_wake(&mut self, name: &str) {
        if self.wake_held.remove(name) {
            let key = self.wake_key(name);
            let _ = self.run(|c| c.exec_drop("DO RELEASE_LOCK(?)", (&key,)));
        }
    }
}

impl Exec for Db {
    fn query(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<Vec<Val>>> {
        let rows: Vec<mysql::Row> = self.run(|c| c.exec(sql, params(vals)))?;
        Ok(rows
            .into_iter()
            .map(|r| r.unwrap().into_iter().map(from_value).collect())
            .collect())
    }

    fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64> {
        self.run(|c| {
            c.exec_drop(sql, params(vals))?;
            Ok(c.affected_rows())
        })
    }
}

/// Names are VARBINARY so that they compare byte for byte (case-sensitive)
/// whatever the server's collation; holder fields are bytes too, so any
/// UTF-8 fits without a charset setting.
fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (
            name VARBINARY(255) NOT NULL PRIMARY KEY,
            token VARBINARY(128) NULL,
            fence BIGINT NOT NULL DEFAULT 0,
            holder_host VARBINARY({h}) NOT NULL DEFAULT '',
            holder_pid BIGINT NOT NULL DEFAULT 0,
            holder_user VARBINARY({u}) NOT NULL DEFAULT '',
            holder_command VARBINARY({c}) NOT NULL DEFAULT '',
            acquired_us BIGINT NOT NULL DEFAULT 0,
            expires_us BIGINT NOT NULL DEFAULT 0,
            version BIGINT NOT NULL DEFAULT 0
        ) ENGINE=InnoDB",
        h = sql::MAX_HOST,
        u = sql::MAX_USER,
        c = sql::MAX_COMMAND,
    )
}

impl Backend for MysqlBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let r = self.leases.acquire(&mut self.db, req)?;
        if matches!(r, Acquire::Acquired(_)) {
            self.db.hold_wake(req.name);
        }
        Ok(r)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let r = self.leases.renew(&mut self.db, name, token, lease)?;
        match r {
            // Taken again after a reconnect (or if a waiter briefly had it when we acquired).
            Check::Done => self.db.hold_wake(name),
            _ => self.db.drop_wake(name),
        }
        Ok(r)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let r = self.leases.release(&mut self.db, name, token)?;
        self.db.drop_wake(name);
        Ok(r)
    }

    fn force_release(&mut self, name: &str) -> Result<Option<LockInfo>> {
        // A live holder elsewhere keeps its wake lock until it notices at its
        // next renewal; waiters then wake, or at the TTL they were given.
        self.leases.force_release(&mut self.db, name)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        self.leases.status(&mut self.db, names)
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        let mut w = MysqlWaiter {
            conn: None,
            key: self.db.wake_key(name),
            fractional: false,
            opts: self.db.opts.clone(),
            shown: self.db.shown.clone(),
            database: self.db.database.clone(),
            timeout: self.db.timeout,
            backoff: Backoff::new(),
        };
        w.connection()?;
        Ok(Box::new(w))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.db.drop_connection();
        self.db.connection().map(|_| ())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.db.timeout = timeout.max(Duration::from_millis(1));
        if let Some(c) = &self.db.conn {
            set_socket_timeout(c, self.db.timeout);
        }
        Ok(())
    }
}

struct MysqlWaiter {
    conn: Option<Conn>,
    key: String,
    /// MariaDB takes fractional GET_LOCK timeouts; MySQL rounds them to whole seconds.
    fractional: bool,
    opts: Opts,
    shown: String,
    database: String,
    timeout: Duration,
    backoff: Backoff,
}

impl MysqlWaiter {
    fn connection(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            let mut c = Conn::new(self.opts.clone())
                .map_err(|e| describe(&e, &self.shown, &self.database, self.timeout))?;
            set_socket_timeout(&c, self.timeout);
            let version: Option<String> = c
                .query_first("SELECT VERSION()")
                .map_err(|e| describe(&e, &self.shown, &self.database, self.timeout))?;
            self.fractional = version.is_some_and(|v| v.contains("MariaDB"));
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }
}

impl Waiter for MysqlWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let secs = if self.fractional {
            timeout.as_secs_f64().max(0.001)
        } else {
            // Rounded up: a zero would return at once and turn the caller's loop into a spin.
            timeout.as_secs_f64().ceil().max(1.0)
        };
        let base = self.timeout;
        let key = self.key.clone();
        let conn = self.connection()?;
        set_socket_timeout(conn, Duration::from_secs_f64(secs) + base);
        // -1: nobody holds the wake lock, so no release will be announced.
        let r = conn.exec_first::<Option<i64>, _, _>(
            "SELECT IF(IS_FREE_LOCK(?), -1, GET_LOCK(?, ?))",
            (&key, &key, secs),
        );
        match r {
            Ok(Some(Some(-1))) => {
                set_socket_timeout(conn, base);
                self.backoff.sleep(timeout);
            }
            Ok(Some(Some(1))) => {
                set_socket_timeout(conn, base);
                if conn.exec_drop("DO RELEASE_LOCK(?)", (&key,)).is_err() {
                    self.conn = None;
                }
                self.backoff.reset();
            }
            Ok(_) => set_socket_timeout(conn, base),
            Err(_) => {
                // A spurious wake-up: the caller's next request shows whether the server is there.
                self.conn = None;
                self.backoff.sleep(timeout);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wake_keys_fit_get_lock() {
        let db = Db {
            opts: Opts::default(),
            conn: None,
            shown: String::new(),
            database: "d".into(),
            table: "dlock_leases".into(),
            timeout: Duration::from_secs(1),
            wake_held: HashSet::new(),
        };
        let k = db.wake_key(&"é".repeat(127));
        assert!(k.len() <= 64 && k == k.to_ascii_lowercase(), "{k}");
        assert_ne!(db.wake_key("A"), db.wake_key("a"));
    }
}
