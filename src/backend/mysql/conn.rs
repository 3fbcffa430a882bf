//! Connecting to MySQL/MariaDB: the URL's options, what the driver's
//! errors mean to an operator, and which errors end a connection.

use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Result;
use mysql::consts::CapabilityFlags;
use mysql::{Conn, Opts, OptsBuilder};

use crate::backend::url::bracketed;
use crate::backend::Url;
use crate::error::{fail, INTERNAL, UNAVAILABLE, USAGE};

pub(super) const ER_DBACCESS_DENIED: u16 = 1044;
pub(super) const ER_ACCESS_DENIED: u16 = 1045;
pub(super) const ER_BAD_DB: u16 = 1049;
pub(super) const ER_NO_SUCH_TABLE: u16 = 1146;
pub(super) const ER_BAD_FIELD: u16 = 1054;
pub(super) const ER_DUP_FIELDNAME: u16 = 1060;
/// ALTER, or any command, refused for lack of a privilege.
const ER_TABLEACCESS_DENIED: u16 = 1142;
pub(super) const ER_CON_COUNT: u16 = 1040;
pub(super) const ER_TOO_MANY_USER_CONNECTIONS: u16 = 1203;

/// Far above any statement or row dlock sends (a few KB, a few MB for the
/// state of a semaphore with thousands of holders); set so that the driver
/// does not ask the server for it on every connection.
pub(super) const MAX_PACKET: usize = 16 << 20;

pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Driver options from the URL: dlock's own parameters taken out, its
/// timeouts and session settings added.
pub(super) fn options(url: &Url, timeout: Duration) -> Result<(Opts, String)> {
    let usage = |why: String| {
        fail(
            USAGE,
            format!(
                "invalid MySQL URL '{}': {why}; expected mysql://user:pass@host[:port]/database",
                url.shown()
            ),
        )
    };
    if url.hosts.len() != 1 {
        return Err(usage("it must name one host".into()));
    }
    let mut require_ssl = false;
    let mut prefer_socket_given = false;
    let mut kept = ::url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &url.query {
        match k.as_str() {
            "require_ssl" => {
                require_ssl = parse_bool(v)
                    .ok_or_else(|| usage(format!("{k} must be true or false, not '{v}'")))?;
            }
            _ => {
                prefer_socket_given |= k == "prefer_socket";
                kept.append_pair(k, v);
            }
        }
    }
    // The driver reads a URL: the parts checked above, without dlock's own parameters.
    let (host, port) = &url.hosts[0];
    let auth = url.userinfo().map(|u| format!("{u}@")).unwrap_or_default();
    let mut u = format!("mysql://{auth}{}:{port}{}", bracketed(host), url.path);
    let kept = kept.finish();
    if !kept.is_empty() {
        u = format!("{u}?{kept}");
    }
    let opts = Opts::from_url(&u).map_err(|e| usage(e.to_string()))?;
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
        .max_allowed_packet(Some(MAX_PACKET))
        // No session settings: the clock is UTC_TIMESTAMP(6), whatever the session's time zone.
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
pub(super) fn set_socket_timeout(conn: &Conn, t: Duration) {
    let t = t.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: t.as_secs().min(i32::MAX as u64) as _, // libc deprecates the name time_t on musl
        tv_usec: t.subsec_micros() as _,
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
pub(super) fn describe(
    e: &mysql::Error,
    at: &str,
    database: &str,
    timeout: Duration,
) -> anyhow::Error {
    use std::io::ErrorKind;
    let refused = || {
        fail(
            UNAVAILABLE,
            format!("cannot connect to {at}: connection refused; is the MySQL/MariaDB server running and listening there?"),
        )
    };
    let silent = || fail(UNAVAILABLE, crate::error::silent(at, timeout, true, ""));
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
                ER_CON_COUNT | ER_TOO_MANY_USER_CONNECTIONS | 1129 | 1130 | 1226 => {
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
pub(super) fn io_error(e: &mysql::Error) -> Option<&std::io::Error> {
    match e {
        mysql::Error::IoError(io) => Some(io),
        mysql::Error::CodecError(c) => std::error::Error::source(c)?.downcast_ref(),
        _ => None,
    }
}

/// Errors after which the connection can no longer be trusted.
pub(super) fn breaks_connection(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(m) => matches!(m.code, 1053 | 1077 | 1927 | 2006 | 2013 | 4031),
        mysql::Error::FromRowError(_) | mysql::Error::FromValueError(_) => false,
        _ => true,
    }
}

/// A statement on a table made before the `state` column.
pub(super) fn is_no_state(m: &mysql::MySqlError) -> bool {
    m.code == ER_BAD_FIELD && m.message.contains("state")
}

/// A statement refused for lack of a privilege.
pub(super) fn is_denied(code: u16) -> bool {
    matches!(code, ER_TABLEACCESS_DENIED | ER_DBACCESS_DENIED | 1227)
}

/// The server refuses new connections until others close (max_connections,
/// max_user_connections).
pub(super) fn is_full(code: u16) -> bool {
    matches!(code, ER_CON_COUNT | ER_TOO_MANY_USER_CONNECTIONS)
}

/// How long a MySQL server takes to greet a new connection before dlock
/// looks at what else might be listening (a Redis port greets nobody).
pub(super) const GREETING_WAIT: Duration = Duration::from_millis(500);

/// Why no connection was made: the driver's error, or a server of another kind.
pub(super) enum Unconnected {
    Driver(mysql::Error),
    Elsewhere(anyhow::Error),
}

/// A request or connection attempt that ran out of time.
pub(super) fn timed_out(e: &mysql::Error) -> bool {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match e {
        mysql::Error::DriverError(
            mysql::DriverError::ConnectTimeout | mysql::DriverError::Timeout,
        ) => true,
        _ => io_error(e).is_some_and(|io| matches!(io.kind(), TimedOut | WouldBlock)),
    }
}

impl super::Db {
    /// Connects within `limit` for the TCP connection, with `read` as the
    /// limit on each read while connecting.
    fn try_connect(&self, limit: Duration, read: Duration) -> mysql::Result<Conn> {
        let opts = OptsBuilder::from_opts(self.opts.clone())
            .tcp_connect_timeout(Some(limit.max(Duration::from_millis(1))))
            .read_timeout(Some(read))
            // Near a renewal deadline the timeout is shorter than when the options were made.
            .write_timeout(Some(self.timeout));
        let conn = Conn::new(opts)?;
        set_socket_timeout(&conn, self.timeout);
        Ok(conn)
    }

    /// Connects; a server that has not greeted within [`GREETING_WAIT`] is
    /// asked what it speaks, so that a wrong port fails at once in one clear
    /// line. A MySQL server that is merely slow gets a second attempt with
    /// the rest of the timeout: the two attempts share one timeout.
    pub(super) fn establish(&self) -> std::result::Result<Conn, Unconnected> {
        let started = std::time::Instant::now();
        if self.timeout <= GREETING_WAIT || self.opts.get_socket().is_some() {
            return self
                .try_connect(self.timeout, self.timeout)
                .map_err(Unconnected::Driver);
        }
        let first = match self.try_connect(self.timeout, GREETING_WAIT) {
            Err(e) if timed_out(&e) => e,
            done => return done.map_err(Unconnected::Driver),
        };
        let left = self.timeout.saturating_sub(started.elapsed());
        if left < Duration::from_millis(50) {
            // The TCP connection itself took the time (a host that drops
            // packets): nothing answered to ask, and no time is left.
            return Err(Unconnected::Driver(first));
        }
        let (host, port) = (self.opts.get_ip_or_hostname(), self.opts.get_tcp_port());
        let other = crate::backend::probe::speaks(&host, port, left.min(GREETING_WAIT));
        if let Some(other) = other.filter(|p| *p != crate::backend::probe::Proto::Mysql) {
            let msg = crate::backend::probe::wrong_port(
                (&host, port),
                &self.shown,
                "MySQL",
                other,
                // MySQL's TLS begins inside its own protocol, never on a bare TLS port.
                None,
            );
            return Err(Unconnected::Elsewhere(fail(UNAVAILABLE, msg)));
        }
        let left = self.timeout.saturating_sub(started.elapsed());
        let left = left.max(Duration::from_millis(1));
        self.try_connect(left, left).map_err(Unconnected::Driver)
    }
}
