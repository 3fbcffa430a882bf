//! What a failed request or connection means to an operator: one line
//! each, naming a server of the wrong kind or protocol where one answered.

use std::time::Duration;

use anyhow::Result;

use super::{Link, Route, Target};
use crate::backend::probe::{self, Proto};
use crate::backend::redis::misplaced;
use crate::error::{fail, fail_setting, fail_unsent, INTERNAL, UNAVAILABLE};

impl Link {
    pub(super) fn connect_error(&self, e: &redis::RedisError, timeout: Duration) -> anyhow::Error {
        let at = &self.shown;
        let msg = if is_auth_error(e) {
            format!("authentication to {at} failed: check the user and password in the URL")
        } else if e.is_connection_refusal() {
            format!("cannot connect to {at}: connection refused; is redis-server running and listening there?")
        } else if self.is_cluster()
            && e.detail()
                .is_some_and(|d| d.contains("cluster support disabled"))
        {
            let one = self
                .first_addr()
                .map_or_else(|| "HOST:PORT".to_string(), |(h, p)| format!("{h}:{p}"));
            return fail_unsent(
                UNAVAILABLE,
                format!("{at} names a Redis server that is not in cluster mode; use redis://{one} for it"),
            );
        } else if e.is_timeout() && self.tls {
            return self.no_handshake();
        } else if let Some(other) = self.not_redis(e) {
            return other;
        } else if e.is_timeout() {
            crate::error::silent(at, timeout, true, "")
        } else {
            format!("cannot connect to {at}: {}", misplaced::text(e))
        };
        fail(UNAVAILABLE, msg)
    }

    /// A `rediss://` server that never finished the TLS handshake; a plain
    /// Redis port waits for a line that TLS never sends, so ask it in plain text.
    pub(super) fn no_handshake(&self) -> anyhow::Error {
        let at = &self.shown;
        let within = crate::duration::format(self.timeout());
        let plain = self.speaks() == Some(Proto::Redis);
        let msg = if plain {
            format!("{at} did not complete a TLS handshake within {within}: that port speaks plain Redis; use redis:// instead of rediss://")
        } else {
            format!("{at} did not complete a TLS handshake within {within}: is it a plain Redis port (then use redis://)? Otherwise check host, port and firewall, or raise --connect-timeout")
        };
        // No request goes before the handshake: nothing was sent.
        fail_unsent(UNAVAILABLE, msg)
    }

    /// What the server at this URL's host and port speaks, by a short look
    /// on a connection of its own (at most a second).
    fn speaks(&self) -> Option<Proto> {
        let (host, port) = self.first_addr()?;
        probe::speaks(host, *port, self.timeout().min(Duration::from_secs(1)))
    }

    /// The server's address, or a cluster's first seed.
    fn first_addr(&self) -> Option<&(String, u16)> {
        match &self.target {
            Target::Cluster(seeds) => seeds.hosts.first(),
            _ => self.addr.as_ref(),
        }
    }

    /// A first reply that is not Redis protocol, or a connection closed
    /// before any answer: say what answers there instead (MySQL greets
    /// first, and its greeting reads as garbage; most others hang up).
    pub(super) fn not_redis(&self, e: &redis::RedisError) -> Option<anyhow::Error> {
        let garbled = e.kind() == redis::ErrorKind::Parse;
        let closed = (e.is_io_error() || e.is_connection_dropped())
            && !e.is_connection_refusal()
            && !e.is_timeout();
        if !garbled && !closed {
            return None;
        }
        let (host, port) = self.first_addr()?;
        let at = (host.as_str(), *port);
        let msg = match (self.speaks(), self.tls) {
            (Some(Proto::Redis), true) => format!(
                "{} did not complete a TLS handshake: that port speaks plain Redis; use redis:// instead of rediss://",
                self.shown
            ),
            (Some(Proto::Redis), false) | (Some(Proto::Tls), true) | (None, true) => return None,
            (Some(other), _) => probe::wrong_port(at, &self.shown, "Redis", other, Some("rediss://")),
            (None, false) if garbled => format!(
                "the server at {host}:{port} does not speak the Redis protocol: it answers in something else; is the port in {} right?",
                self.shown
            ),
            (None, false) => return None,
        };
        Some(fail_unsent(UNAVAILABLE, msg))
    }

    /// Refuses a Cluster node behind a single-server URL, where SCAN would
    /// see only that node's keys (and so too few locks); one request, made
    /// only by a listing `status`.
    pub fn refuse_cluster_node(&self, key: &str) -> Result<()> {
        if !matches!(self.target, Target::Direct(_)) {
            return Ok(());
        }
        let info: String = self.with_con(Route::Key(key), |con| {
            redis::cmd("INFO").arg("cluster").query(con)
        })?;
        if !misplaced::cluster_enabled(&info) {
            return Ok(());
        }
        Err(self.cluster_node_error())
    }

    /// "URL is a Redis Cluster node …; use redis+cluster://HOST:PORT" (69).
    pub fn cluster_node_error(&self) -> anyhow::Error {
        let at = self
            .addr
            .as_ref()
            .map_or_else(|| "HOST:PORT".to_string(), |(h, p)| format!("{h}:{p}"));
        fail_setting(UNAVAILABLE, misplaced::cluster_node(&self.shown, &at))
    }

    pub fn request_error(&self, e: &redis::RedisError) -> anyhow::Error {
        let err = self.request_failure(e);
        // The server answered with an error: the request did not run (a
        // script is refused before it writes), so there is nothing that an
        // unanswered request might have taken. Out of memory is the
        // exception: an old server fails a script's write midway.
        let answered = matches!(
            e.kind(),
            redis::ErrorKind::Server(_)
                | redis::ErrorKind::Extension
                | redis::ErrorKind::AuthenticationFailed
        );
        if answered && e.code() != Some("OOM") {
            crate::error::mark_unsent(err)
        } else {
            err
        }
    }

    fn request_failure(&self, e: &redis::RedisError) -> anyhow::Error {
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
        } else if e.code() == Some("TRYAGAIN") {
            // Refused before the script ran: nothing was taken.
            fail_unsent(
                UNAVAILABLE,
                format!("{at} is moving this lock's slot between nodes and cannot serve its keys until the move is done; try again"),
            )
        } else if e.code() == Some("CLUSTERDOWN") {
            fail_unsent(
                UNAVAILABLE,
                format!("{at} refused the request: the cluster is down (a slot has no live node)"),
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
                crate::error::silent(at, self.timeout(), false, ""),
            )
        } else if e.is_io_error() || e.is_connection_dropped() {
            fail(
                UNAVAILABLE,
                format!("lost connection to {at}: {}", misplaced::text(e)),
            )
        } else {
            fail(
                INTERNAL,
                format!("unexpected reply from {at}: {}", misplaced::text(e)),
            )
        }
    }
}

pub fn is_auth_error(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || e.to_string().contains("WRONGPASS")
        || e.to_string().contains("NOAUTH")
}
