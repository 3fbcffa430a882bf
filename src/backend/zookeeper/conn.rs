//! One ZooKeeper session per dlock process: opened on first use, opened
//! again after it expired, and closed (its close answered) when dlock is
//! done with it, so that nothing it created outlives dlock by a session
//! timeout.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error as ZkError};

use super::address::Address;
use super::run::{self, Tasks};
use crate::backend::probe::{self, Proto};
use crate::backoff::Backoff;
use crate::error::{fail, fail_unsent, mark_unsent, INTERNAL, UNAVAILABLE};

/// The session timeout dlock asks for. Only waiters' queue nodes live in
/// the session (leases do not), so it bounds how long a killed waiter holds
/// up the next one; the server keeps it within 2 to 20 ticks (4–40 s with
/// the default tickTime of 2 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a session may take to open before dlock looks at what listens
/// at the URL's ports.
const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for a session's close to be answered when dlock is done.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

struct Session {
    client: Client,
    tasks: Arc<Tasks>,
}

/// A lazily opened session and the settings to open it.
pub struct Conn {
    addr: Address,
    /// The redacted URL, for messages.
    pub shown: String,
    timeout: Mutex<Duration>,
    session: Mutex<Option<Session>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    pub fn new(addr: Address, shown: String, timeout: Duration) -> Conn {
        Conn {
            addr,
            shown,
            timeout: Mutex::new(timeout),
            session: Mutex::new(None),
        }
    }

    pub fn timeout(&self) -> Duration {
        *lock(&self.timeout)
    }

    pub fn set_timeout(&self, t: Duration) {
        *lock(&self.timeout) = t.max(Duration::from_millis(1));
    }

    /// Nodes dlock creates: readable and writable by anyone, or only by the
    /// URL's digest user when it names one.
    pub fn options(&self, mode: CreateMode) -> CreateOptions<'static> {
        if self.addr.digest.is_some() {
            mode.with_acls(Acls::creator_all())
        } else {
            mode.with_acls(Acls::anyone_all())
        }
    }

    /// The live session's client, opening a session if there is none or the
    /// last one ended (expired, closed, refused).
    pub fn client(&self) -> Result<Client> {
        let mut s = lock(&self.session);
        if let Some(cur) = s.as_ref() {
            if !cur.client.state().is_terminated() {
                return Ok(cur.client.clone());
            }
        }
        if let Some(old) = s.take() {
            drop(old.client);
        }
        let fresh = self.open().map_err(mark_unsent)?;
        let client = fresh.client.clone();
        *s = Some(fresh);
        Ok(client)
    }

    /// Connects to the first server that serves, trying them all again
    /// (an election, a restart) until the timeout runs out; unless no host
    /// even accepts a connection, or one speaks another protocol.
    fn open(&self) -> Result<Session> {
        let timeout = self.timeout();
        let deadline = Instant::now() + timeout;
        let mut pause =
            Backoff::new(Duration::from_millis(50), 2, Duration::from_millis(500)).until(deadline);
        let mut looked = false;
        loop {
            let tasks = Arc::new(Tasks::default());
            let mut connector = Client::connector()
                .with_session_timeout(SESSION_TIMEOUT)
                .with_fail_eagerly();
            if let Some(d) = &self.addr.digest {
                connector = connector.with_auth("digest", d.as_bytes());
            }
            let hosts = self.addr.hosts.as_str();
            let r = tasks.enter(|| {
                let mut fut = std::pin::pin!(connector.connect(hosts));
                let quiet = deadline.min(Instant::now() + QUIET);
                match run::until(quiet, fut.as_mut()) {
                    None if !looked && quiet < deadline => {
                        // Still no session: a port that never answers ZooKeeper's
                        // hello (Redis, PostgreSQL) would keep it so till the end.
                        looked = true;
                        if let Some(e) = self.elsewhere(deadline) {
                            return Err(e);
                        }
                        Ok(run::until(deadline, fut))
                    }
                    None => Ok(run::until(deadline, fut)),
                    done => Ok(done),
                }
            })?;
            if matches!(r, Some(Err(ZkError::NoHosts))) && !looked {
                // Refused everywhere: say so now if another protocol answers.
                looked = true;
                if let Some(e) = self.elsewhere(deadline) {
                    return Err(e);
                }
            }
            match r {
                Some(Ok(client)) => return Ok(Session { client, tasks }),
                // Not one server answered: try them all again after a pause, in time.
                Some(Err(ZkError::NoHosts)) if pause.sleep() => {}
                Some(Err(e)) if e != ZkError::NoHosts => {
                    let auth = matches!(e, ZkError::NoAuth | ZkError::AuthFailed);
                    let other = (!auth).then(|| self.elsewhere(deadline)).flatten();
                    return Err(other.unwrap_or_else(|| self.error(&e, "connecting")));
                }
                _ => return Err(fail(
                    UNAVAILABLE,
                    crate::error::silent(
                        &self.shown,
                        timeout,
                        true,
                        " (no server of the ensemble served: refused, down, or without a quorum)",
                    ),
                )),
            }
        }
    }

    /// Why no host of the URL can serve, when a quick look shows it: every
    /// one refuses connections, or one speaks another protocol (and none
    /// ZooKeeper). None when some host may yet serve.
    fn elsewhere(&self, deadline: Instant) -> Option<anyhow::Error> {
        let hosts = host_ports(&self.addr.hosts);
        let mut refused = 0;
        let mut other = None;
        for (host, port) in &hosts {
            let left = deadline.saturating_duration_since(Instant::now());
            if refuses(host, *port, left.min(QUIET)) {
                refused += 1;
                continue;
            }
            match probe::speaks(host, *port, left.min(QUIET)) {
                Some(Proto::ZooKeeper) => return None,
                Some(p) => other = other.or(Some((host.as_str(), *port, p))),
                None => {}
            }
        }
        let msg = match other {
            Some((host, port, p)) => {
                probe::wrong_port((host, port), &self.shown, "ZooKeeper", p, None)
            }
            None if refused > 0 && refused == hosts.len() => format!(
                "cannot connect to {}: connection refused; is ZooKeeper running and listening there?",
                self.shown
            ),
            None => return None,
        };
        Some(fail_unsent(UNAVAILABLE, msg))
    }

    /// The live session's client, if there is one: what a cleanup of this
    /// session's ephemeral nodes needs (an ended session took them along).
    pub fn current(&self) -> Option<Client> {
        let s = lock(&self.session);
        let c = &s.as_ref()?.client;
        (!c.state().is_terminated()).then(|| c.clone())
    }

    /// Drops the session (after a transport error); the next request opens a new one.
    pub fn reset(&self) {
        lock(&self.session).take();
    }

    /// Closes the session and waits (briefly) until the server answered the
    /// close: its ephemeral nodes are gone when this returns.
    pub fn close(&self) {
        if let Some(s) = lock(&self.session).take() {
            drop(s.client);
            s.tasks.finish(CLOSE_WAIT.min(self.timeout()));
        }
    }

    /// Awaits a request made with a client from [`Conn::client`], within
    /// the timeout, with the client's error turned into dlock's.
    pub fn wait<T>(&self, what: &str, fut: impl Future<Output = Result<T, ZkError>>) -> Result<T> {
        self.wait_raw(fut)?.map_err(|e| self.error(&e, what))
    }

    /// Awaits `fut` within the timeout; an error only when it did not finish.
    pub fn wait_raw<T>(&self, fut: impl Future<Output = T>) -> Result<T> {
        let timeout = self.timeout();
        run::within(timeout, fut).ok_or_else(|| {
            fail(
                UNAVAILABLE,
                crate::error::silent(&self.shown, timeout, false, ""),
            )
        })
    }

    /// One line for a client error, with the exit code its kind calls for.
    pub fn error(&self, e: &ZkError, what: &str) -> anyhow::Error {
        let shown = &self.shown;
        match e {
            ZkError::NoAuth | ZkError::AuthFailed => fail(
                UNAVAILABLE,
                format!(
                    "ZooKeeper at {shown} refused {what}: not authorized; dlock's nodes belong to \
                     another user, so give that user's credentials in the URL (zk://user:pass@…)"
                ),
            ),
            ZkError::ConnectionLoss
            | ZkError::SessionExpired
            | ZkError::SessionMoved
            | ZkError::ClientClosed
            | ZkError::NoHosts
            | ZkError::Timeout
            | ZkError::Throttled
            | ZkError::NotReadOnly => fail(
                UNAVAILABLE,
                format!("ZooKeeper at {shown} failed {what}: {e}"),
            ),
            _ => fail(
                INTERNAL,
                format!("ZooKeeper at {shown} answered {what} with an error: {e}"),
            ),
        }
    }
}

/// `host:port` pairs of a connect string (`a:2181,[::1]:2182`).
fn host_ports(hosts: &str) -> Vec<(String, u16)> {
    hosts
        .split(',')
        .filter_map(|h| {
            let (host, port) = h.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Whether every address of `host` refuses a TCP connection at once.
fn refuses(host: &str, port: u16, within: Duration) -> bool {
    let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) else {
        return false;
    };
    let within = within.max(Duration::from_millis(1));
    let mut any = false;
    for a in addrs {
        any = true;
        match std::net::TcpStream::connect_timeout(&a, within) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return false,
        }
    }
    any
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}
