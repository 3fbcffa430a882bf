//! The one connection of a process, and what its errors mean to an operator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Connection};

use crate::error::{fail, fail_unsent, mark_unsent, INTERNAL, UNAVAILABLE};

/// Shared by the backend and its waiter: a waiter blocks in BZPOPMIN only
/// between attempts, never during one.
pub struct Link {
    pub client: Client,
    con: Mutex<Option<Connection>>,
    timeout: Mutex<Duration>,
    /// The URL without its password, for messages.
    pub shown: String,
    /// Host and port of a TCP server, to ask what answers there when its
    /// replies make no sense, and whether it is reached over TLS.
    addr: Option<(String, u16)>,
    tls: bool,
    /// Whether the server has answered a request yet: over TLS the handshake
    /// happens with the first one, so a first timeout may be a plain port.
    answered: AtomicBool,
}

impl Link {
    pub fn new(client: Client, timeout: Duration, shown: String) -> Link {
        let (addr, tls) = match client.get_connection_info().addr() {
            redis::ConnectionAddr::TcpTls { host, port, .. } => (Some((host.clone(), *port)), true),
            redis::ConnectionAddr::Tcp(host, port) => (Some((host.clone(), *port)), false),
            _ => (None, false),
        };
        Link {
            client,
            con: Mutex::new(None),
            timeout: Mutex::new(timeout),
            shown,
            addr,
            tls,
            answered: AtomicBool::new(false),
        }
    }

    /// Opens the connection if there is none.
    pub fn connect(&self) -> Result<()> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.new_connection()?);
        }
        Ok(())
    }

    pub fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.con.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_timeout(&self, t: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        let mut con = self.lock();
        if let Some(c) = con.as_ref() {
            if c.set_read_timeout(Some(t))
                .and_then(|_| c.set_write_timeout(Some(t)))
                .is_err()
            {
                *con = None;
            }
        }
    }

    /// Runs `f` on the connection, opening it first if needed. Any error drops
    /// the connection, because a late reply to a timed-out request would
    /// otherwise be read as the next one's answer.
    pub fn with_con<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.new_connection()?);
        }
        let con = guard.as_mut().expect("just connected");
        match f(con) {
            Ok(v) => {
                self.answered.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                *guard = None;
                drop(guard);
                if !self.answered.load(Ordering::Relaxed) {
                    if e.is_timeout() && self.tls {
                        return Err(self.no_handshake());
                    }
                    if let Some(other) = self.not_redis(&e) {
                        return Err(other);
                    }
                }
                Err(self.request_error(&e))
            }
        }
    }

    fn new_connection(&self) -> Result<Connection> {
        let timeout = self.timeout();
        let con = self
            .client
            .get_connection_with_timeout(timeout)
            .map_err(|e| mark_unsent(self.connect_error(&e, timeout)))?;
        con.set_read_timeout(Some(timeout))
            .and_then(|_| con.set_write_timeout(Some(timeout)))
            .map_err(|e| self.connect_error(&e, timeout))?;
        Ok(con)
    }

    fn connect_error(&self, e: &redis::RedisError, timeout: Duration) -> anyhow::Error {
        let at = &self.shown;
        let msg = if is_auth_error(e) {
            format!("authentication to {at} failed: check the user and password in the URL")
        } else if e.is_connection_refusal() {
            format!("cannot connect to {at}: connection refused; is redis-server running and listening there?")
        } else if e.is_timeout() && self.tls {
            return self.no_handshake();
        } else if let Some(other) = self.not_redis(e) {
            return other;
        } else if e.is_timeout() {
            format!(
                "cannot connect to {at}: no answer within {}; check host, port and firewall, or raise --connect-timeout",
                crate::duration::format(timeout)
            )
        } else {
            format!("cannot connect to {at}: {e}")
        };
        fail(UNAVAILABLE, msg)
    }

    /// A `rediss://` server that never finished the TLS handshake; a plain
    /// Redis port waits for a line that TLS never sends, so ask it in plain text.
    fn no_handshake(&self) -> anyhow::Error {
        let at = &self.shown;
        let within = crate::duration::format(self.timeout());
        let plain = self.speaks() == Some("Redis");
        let msg = if plain {
            format!("{at} did not complete a TLS handshake within {within}: that port speaks plain Redis; use redis:// instead of rediss://")
        } else {
            format!("{at} did not complete a TLS handshake within {within}: is it a plain Redis port (then use redis://)? Otherwise check host, port and firewall, or raise --connect-timeout")
        };
        fail(UNAVAILABLE, msg)
    }

    /// What the server at this URL's host and port speaks, by a short look
    /// on a connection of its own (at most a second).
    fn speaks(&self) -> Option<&'static str> {
        let (host, port) = self.addr.as_ref()?;
        super::super::probe::speaks(host, *port, self.timeout().min(Duration::from_secs(1)))
    }

    /// A first reply that is not Redis protocol: say what answers there
    /// instead (MySQL greets first, and its greeting reads as garbage).
    fn not_redis(&self, e: &redis::RedisError) -> Option<anyhow::Error> {
        if e.kind() != redis::ErrorKind::Parse || self.tls {
            return None;
        }
        let (host, port) = self.addr.as_ref()?;
        let other = self.speaks().filter(|p| *p != "Redis");
        let found = other.map_or("it answers in something else".to_string(), |p| {
            format!("it answers as {p} does")
        });
        Some(fail_unsent(
            UNAVAILABLE,
            format!(
                "the server at {host}:{port} does not speak the Redis protocol: {found}; is the port in {} right?",
                self.shown
            ),
        ))
    }

    pub fn request_error(&self, e: &redis::RedisError) -> anyhow::Error {
        let at = &self.shown;
        if is_auth_error(e) {
            fail(
                UNAVAILABLE,
                format!("authentication to {at} failed: check the user and password in the URL"),
            )
        } else if e.code() == Some("OOM") {
            fail(
                UNAVAILABLE,
                format!("{at} refused the write: it is out of memory (maxmemory reached); free memory on the server or raise its maxmemory"),
            )
        } else if e.code() == Some("READONLY") {
            fail(
                UNAVAILABLE,
                format!(
                    "{at} refused the write: it is a read-only replica; point dlock at the primary"
                ),
            )
        } else if e.is_timeout() {
            fail(
                UNAVAILABLE,
                format!(
                    "{at} did not answer within {}",
                    crate::duration::format(self.timeout())
                ),
            )
        } else if e.is_io_error() || e.is_connection_dropped() {
            fail(UNAVAILABLE, format!("lost connection to {at}: {e}"))
        } else {
            fail(INTERNAL, format!("unexpected reply from {at}: {e}"))
        }
    }
}

pub fn is_auth_error(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || e.to_string().contains("WRONGPASS")
        || e.to_string().contains("NOAUTH")
}
