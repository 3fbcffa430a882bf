//! The connections of a process, where each request goes (one server, the
//! primary the sentinels name, or a cluster key's slot owner), and what
//! their errors mean to an operator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Connection};

use super::topo::{self, Addr, Cluster, Sentinel, Target};
use crate::error::{fail, fail_unsent, mark_unsent, INTERNAL, UNAVAILABLE};

/// Redirections followed for one request (a MOVED, then an ASK, then one spare).
const MAX_REDIRECTS: usize = 3;

/// Where a request goes.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// The node of this key's slot (the only node, outside a cluster).
    Key(&'a str),
    /// This cluster node.
    Node(&'a Addr),
}

/// The open connections.
#[derive(Default)]
pub struct Conns {
    one: Option<Connection>,
    cluster: Cluster,
}

/// Which connection of `Conns` a request used.
#[derive(Clone, PartialEq, Eq)]
enum Used {
    One,
    Node(Addr),
}

/// Shared by the backend and its waiter: a waiter blocks in BZPOPMIN only
/// between attempts, never during one.
pub struct Link {
    target: Target,
    conns: Mutex<Conns>,
    timeout: Mutex<Duration>,
    /// The URL without its password, for messages.
    pub shown: String,
    /// Replicas that must acknowledge a lease write (`WAIT`), if any.
    pub wait_replicas: Option<u32>,
    /// Host and port of a TCP server, to ask what answers there when its
    /// replies make no sense, and whether it is reached over TLS.
    addr: Option<(String, u16)>,
    tls: bool,
    /// Whether the server has answered a request yet: over TLS the handshake
    /// happens with the first one, so a first timeout may be a plain port.
    answered: AtomicBool,
    /// Connections opened so far, so that a caller can tell a new one (a
    /// reconnect, which may reach another server) from one it checked.
    opened: AtomicU64,
}

impl Link {
    pub fn new(target: Target, timeout: Duration, shown: String) -> Link {
        let (addr, tls) = match &target {
            Target::Direct(client) => match client.get_connection_info().addr() {
                redis::ConnectionAddr::TcpTls { host, port, .. } => {
                    (Some((host.clone(), *port)), true)
                }
                redis::ConnectionAddr::Tcp(host, port) => (Some((host.clone(), *port)), false),
                _ => (None, false),
            },
            _ => (None, false),
        };
        Link {
            target,
            conns: Mutex::new(Conns::default()),
            timeout: Mutex::new(timeout),
            shown,
            wait_replicas: None,
            addr,
            tls,
            answered: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    /// How many connections this link has opened (see `opened`).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Opens the connection (or reads the cluster's slot map) if there is none.
    pub fn connect(&self) -> Result<()> {
        let mut g = self.lock();
        match &self.target {
            Target::Cluster(seeds) if !g.cluster.has_map() => g
                .cluster
                .refresh(seeds, self.timeout())
                .map_err(|e| mark_unsent(self.connect_error(&e, self.timeout()))),
            Target::Cluster(_) => Ok(()),
            _ if g.one.is_none() => {
                g.one = Some(self.new_connection()?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Drops every connection (and the slot map): the next request opens anew,
    /// asking the sentinels again.
    pub fn disconnect(&self) {
        let mut g = self.lock();
        g.one = None;
        g.cluster = Cluster::default();
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_timeout(&self, t: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        let mut g = self.lock();
        let set = |c: &Connection| {
            c.set_read_timeout(Some(t))
                .and_then(|_| c.set_write_timeout(Some(t)))
                .is_ok()
        };
        if g.one.as_ref().is_some_and(|c| !set(c)) {
            g.one = None;
        }
        g.cluster.nodes.retain(|_, c| set(c));
    }

    /// The primaries of a cluster (read afresh), to visit each one.
    pub fn primaries(&self) -> Result<Vec<Addr>> {
        let Target::Cluster(seeds) = &self.target else {
            return Ok(Vec::new());
        };
        let mut g = self.lock();
        g.cluster
            .refresh(seeds, self.timeout())
            .map_err(|e| self.request_error(&e))?;
        Ok(g.cluster.primaries())
    }

    /// A client for a subscriber connection of its own: the server itself,
    /// the primary the sentinels name now, or a cluster node (a PUBLISH
    /// reaches every node of a cluster).
    pub fn subscriber(&self) -> redis::RedisResult<Client> {
        match &self.target {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel(s) => {
                let addr = s.primary(self.timeout()).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no primary", e))
                })?;
                s.node_client(&addr)
            }
            Target::Cluster(seeds) => {
                let (h, p) = &seeds.hosts[0];
                topo::client_for(&seeds.node_url(h, *p, 0))
            }
        }
    }

    /// Runs `f` on the connection that `route` names, opening it first if
    /// needed, and follows a cluster's MOVED and ASK. Any other error drops
    /// the connection, because a late reply to a timed-out request would
    /// otherwise be read as the next one's answer.
    /// Every key matching `pattern` on the server `route` leads to, by SCAN.
    pub fn scan(&self, route: Route, pattern: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self.with_con(route, |con| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)
            })?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    pub fn with_con<T>(
        &self,
        route: Route,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut g = self.lock();
        let mut redirect: Option<(Addr, bool)> = None;
        for hop in 0..=MAX_REDIRECTS {
            let asking = redirect.as_ref().is_some_and(|(_, ask)| *ask);
            let used = self.pick(&mut g, route, redirect.take().map(|(a, _)| a))?;
            let con = match &used {
                Used::One => g.one.as_mut(),
                Used::Node(a) => g.cluster.nodes.get_mut(a),
            }
            .expect("picked an open connection");
            let r = if asking {
                redis::cmd("ASKING").query::<()>(con).and_then(|_| f(con))
            } else {
                f(con)
            };
            let e = match r {
                Ok(v) => {
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if let Some((to, ask)) = topo::redirection(&e).filter(|_| hop < MAX_REDIRECTS) {
                if !ask {
                    // The slots moved: read the map again for the requests after this one.
                    g.cluster.forget_map();
                }
                redirect = Some((to, ask));
                continue;
            }
            match used {
                Used::One => g.one = None,
                Used::Node(a) => {
                    g.cluster.nodes.remove(&a);
                    // A node that fails may have lost its slots to a replica.
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        g.cluster.forget_map();
                    }
                }
            }
            drop(g);
            if !self.answered.load(Ordering::Relaxed) {
                if e.is_timeout() && self.tls {
                    return Err(self.no_handshake());
                }
                if let Some(other) = self.not_redis(&e) {
                    return Err(other);
                }
            }
            return Err(self.request_error(&e));
        }
        unreachable!("the last hop returns")
    }

    /// Opens what `route` needs and says which connection it is.
    fn pick(&self, g: &mut Conns, route: Route, redirect: Option<Addr>) -> Result<Used> {
        let Target::Cluster(seeds) = &self.target else {
            if g.one.is_none() {
                g.one = Some(self.new_connection()?);
            }
            return Ok(Used::One);
        };
        let timeout = self.timeout();
        let unsent = |e: redis::RedisError| mark_unsent(self.connect_error(&e, timeout));
        let addr = match (redirect, route) {
            (Some(a), _) => a,
            (None, Route::Node(a)) => a.clone(),
            (None, Route::Key(key)) => {
                if !g.cluster.has_map() {
                    g.cluster.refresh(seeds, timeout).map_err(unsent)?;
                }
                let slot = topo::slot(key);
                g.cluster.owner(slot).cloned().ok_or_else(|| {
                    fail_unsent(
                        UNAVAILABLE,
                        format!("no node of {} serves slot {slot} (key {key}): is the cluster's slot coverage complete?", self.shown),
                    )
                })?
            }
        };
        if let Err(e) = g.cluster.con(seeds, &addr, timeout) {
            // The node may be gone for good, its slots served by another now.
            g.cluster.forget_map();
            let at = format!("{}:{}", addr.0, addr.1);
            return Err(mark_unsent(fail(
                UNAVAILABLE,
                format!(
                    "cannot connect to cluster node {at} of {}: {}",
                    self.shown,
                    topo::short(&e)
                ),
            )));
        }
        Ok(Used::Node(addr))
    }

    fn new_connection(&self) -> Result<Connection> {
        let timeout = self.timeout();
        let con = match &self.target {
            Target::Direct(client) => topo::open(client, timeout)
                .map_err(|e| mark_unsent(self.connect_error(&e, timeout))),
            Target::Sentinel(s) => self.primary_connection(s, timeout),
            Target::Cluster(_) => unreachable!("a cluster routes by slot"),
        }?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(con)
    }

    /// Asks the sentinels for the primary, connects, and checks that it
    /// says it is one: a replica named during a failover would refuse writes.
    fn primary_connection(&self, s: &Sentinel, timeout: Duration) -> Result<Connection> {
        let at = &self.shown;
        let addr = s.primary(timeout).map_err(|why| {
            fail_unsent(
                UNAVAILABLE,
                format!(
                    "no sentinel of {at} named a primary for '{}': {why}",
                    s.service
                ),
            )
        })?;
        let node = format!("{}:{}", addr.0, addr.1);
        let mut con = s
            .node_client(&addr)
            .and_then(|c| topo::open(&c, timeout))
            .map_err(|e| {
                let msg = if is_auth_error(&e) {
                    format!("authentication to the primary {node} of {at} failed: check the user and password in the URL")
                } else {
                    format!("cannot connect to the primary {node} that the sentinels of {at} name: {}", topo::short(&e))
                };
                mark_unsent(fail(UNAVAILABLE, msg))
            })?;
        match topo::is_primary(&mut con) {
            Ok(true) => Ok(con),
            Ok(false) => Err(fail_unsent(
                UNAVAILABLE,
                format!("the sentinels of {at} name {node} as the primary, but it says it is a replica: a failover is under way; try again"),
            )),
            Err(e) => Err(mark_unsent(self.request_error(&e))),
        }
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
            mark_unsent(err)
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
