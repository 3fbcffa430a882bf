//! The connection to the cluster: a tokio runtime made only when an etcd
//! URL is used, a client talking to one member at a time, and failover to
//! the next member when that one stops answering.
//!
//! One member at a time (the client, `rpc.rs`, holds one connection) keeps
//! failover plain: a request that found its member unreachable before
//! sending anything goes to the next one at once; any other failure moves
//! the next request to the next member, and the caller decides whether to
//! repeat a request whose fate is unknown. `require_leader` makes a member
//! cut off from the majority refuse at once instead of holding requests.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::rpc::{Client, Error, Settings};

use super::url::Target;
use crate::backend::probe::{self, Proto};
use crate::error::{fail, fail_unsent, INTERNAL, UNAVAILABLE, USAGE};

pub struct Link {
    rt: tokio::runtime::Runtime,
    members: Vec<String>,
    settings: Settings,
    /// The URL without its password, for messages.
    pub shown: String,
    state: Mutex<State>,
}

struct State {
    member: usize,
    client: Option<Client>,
    timeout: Duration,
    /// Whether any member has answered a request yet.
    answered: bool,
}

/// How long a first request may go unanswered before dlock looks at what
/// listens at the member's port (`etcds://` at a plain Redis port waits
/// for a TLS handshake that never comes).
const QUIET: Duration = Duration::from_millis(500);

impl Link {
    pub fn new(target: &Target, shown: String, timeout: Duration) -> Result<Link> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| {
                fail(
                    INTERNAL,
                    format!("cannot start the etcd client runtime: {e}"),
                )
            })?;
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let members = target
            .members
            .iter()
            .map(|m| format!("{scheme}://{m}"))
            .collect();
        let mut settings = Settings {
            connect_timeout: timeout,
            keep_alive: (Duration::from_secs(10), timeout),
            require_leader: true,
            user: target.user.clone(),
            tls: None,
        };
        if let Some(tls) = &target.tls {
            // rustls needs a process-wide crypto provider; ring builds with no system libraries.
            let _ = rustls::crypto::ring::default_provider().install_default();
            settings.tls = Some(tls_config(tls, &shown)?);
        }
        Ok(Link {
            rt,
            members,
            settings,
            shown,
            state: Mutex::new(State {
                member: 0,
                client: None,
                timeout,
                answered: false,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn timeout(&self) -> Duration {
        self.state().timeout
    }

    pub fn set_timeout(&self, t: Duration) {
        self.state().timeout = t.max(Duration::from_millis(1));
    }

    /// The member requests go to now.
    pub fn member(&self) -> String {
        let s = self.state();
        self.members[s.member].clone()
    }

    /// Drops the connection and moves to the next member.
    pub fn next_member(&self) {
        let mut s = self.state();
        s.client = None;
        s.member = (s.member + 1) % self.members.len();
    }

    /// Runs a future on the runtime from a plain thread.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The client for the current member, connecting if needed (which
    /// authenticates, when the URL has a user).
    async fn client(&self, until: Instant) -> Result<Client, Error> {
        if let Some(c) = self.state().client.clone() {
            return Ok(c);
        }
        let member = self.member();
        let left = until.saturating_duration_since(Instant::now());
        let connect = Client::connect(&member, &self.settings);
        let c = match tokio::time::timeout(left, connect).await {
            Ok(c) => c?,
            Err(_) => return Err(Error::Io(std::io::ErrorKind::TimedOut.into())),
        };
        self.state().client = Some(c.clone());
        Ok(c)
    }

    /// One request (`what` names it in errors), bounded by the timeout. A
    /// member that cannot be reached passes the request to the next one
    /// while time is left; after any other failure the next request goes to
    /// the next member.
    pub fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.rt.block_on(self.call_async(what, f))
    }

    pub async fn call_async<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let timeout = self.timeout();
        let until = Instant::now() + timeout;
        let mut tries = self.members.len();
        loop {
            let member = self.member();
            let attempt = async {
                let c = self.client(until).await.map_err(|e| (e, true))?;
                f(c).await.map_err(|e| {
                    let unsent = unreachable(&e);
                    (e, unsent)
                })
            };
            // On the heap: a request's future is large, and renewals run on
            // a thread with a small stack.
            let r = self.first_look(until, &member, Box::pin(attempt)).await?;
            let err = match r {
                Ok(Ok(v)) => {
                    self.state().answered = true;
                    return Ok(v);
                }
                Ok(Err((e, unsent))) => {
                    if let Some(refusal) = self.refusal(&e, what) {
                        return Err(refusal);
                    }
                    self.next_member();
                    tries -= 1;
                    if unsent && tries > 0 && Instant::now() < until {
                        continue;
                    }
                    // Before any answer, the port may not be etcd's at all.
                    if !self.state().answered {
                        if let Some(other) = Self::look(&member, &self.shown, until).await {
                            return Err(other);
                        }
                    }
                    self.unavailable(&e, what, unsent)
                }
                Err(_) => {
                    self.next_member();
                    fail(
                        UNAVAILABLE,
                        crate::error::silent(&self.shown, timeout, false, ""),
                    )
                }
            };
            return Err(err);
        }
    }

    /// Awaits `attempt` until `until`; before any member has answered, one
    /// that keeps silent for [`QUIET`] is looked at, and named when it
    /// speaks another protocol.
    async fn first_look<T>(
        &self,
        until: Instant,
        member: &str,
        mut attempt: std::pin::Pin<Box<impl Future<Output = T>>>,
    ) -> Result<Result<T, tokio::time::error::Elapsed>> {
        let left = until.saturating_duration_since(Instant::now());
        let quiet = left.min(QUIET);
        if self.state().answered || quiet >= left {
            return Ok(tokio::time::timeout(left, attempt).await);
        }
        if let Ok(r) = tokio::time::timeout(quiet, attempt.as_mut()).await {
            return Ok(Ok(r));
        }
        if let Some(other) = Self::look(member, &self.shown, until).await {
            return Err(other);
        }
        let left = until.saturating_duration_since(Instant::now());
        Ok(tokio::time::timeout(left, attempt).await)
    }

    /// Why `member` cannot serve, when a look at its port shows it: the
    /// connection is refused, or another protocol answers there.
    async fn look(member: &str, shown: &str, until: Instant) -> Option<anyhow::Error> {
        let (member, shown) = (member.to_string(), shown.to_string());
        let within = until.saturating_duration_since(Instant::now()).min(QUIET);
        let msg = tokio::task::spawn_blocking(move || elsewhere(&member, &shown, within))
            .await
            .ok()??;
        Some(fail_unsent(UNAVAILABLE, msg))
    }

    /// A refusal that another member would repeat: bad credentials, a
    /// request the server rejects.
    fn refusal(&self, e: &Error, what: &str) -> Option<anyhow::Error> {
        use tonic::Code;
        let Error::Status(s) = e else {
            return None;
        };
        let auth = s.message().contains("authentication failed")
            || s.message().contains("permission denied")
            || s.message().contains("invalid auth token");
        let no_auth = s.message().contains("authentication is not enabled");
        let no_user = s.message().contains("user name is empty");
        let (code, hint) = match s.code() {
            _ if no_user => (
                UNAVAILABLE,
                "; the cluster requires a login: put its user and password in the URL \
                 (etcd://USER:PASS@host:2379)",
            ),
            _ if no_auth => (
                UNAVAILABLE,
                "; remove the user from the URL, or enable authentication (etcdctl auth enable)",
            ),
            _ if auth => (
                UNAVAILABLE,
                "; check the user and password in the URL and the user's role",
            ),
            Code::Unauthenticated | Code::PermissionDenied => (
                UNAVAILABLE,
                "; check the user and password in the URL and the user's role",
            ),
            // A lease that is gone, a request the server rejects: the same on every member.
            Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange => (INTERNAL, ""),
            Code::ResourceExhausted if s.message().contains("space") => (
                UNAVAILABLE,
                "; the cluster is out of space (compact and defragment it)",
            ),
            _ => return None,
        };
        Some(fail(
            code,
            format!(
                "etcd at {} refused {what}: {}{hint}",
                self.shown,
                s.message()
            ),
        ))
    }

    fn unavailable(&self, e: &Error, what: &str, unsent: bool) -> anyhow::Error {
        let msg = format!("etcd at {} failed {what}: {}", self.shown, describe(e));
        if unsent {
            fail_unsent(UNAVAILABLE, msg)
        } else {
            fail(UNAVAILABLE, msg)
        }
    }
}

/// What answers at `member` (`http[s]://host:port`) if not etcd, or that
/// nothing does, as the line to print.
fn elsewhere(member: &str, shown: &str, within: Duration) -> Option<String> {
    let (tls, at) = match member.split_once("://") {
        Some(("https", at)) => (true, at),
        Some((_, at)) => (false, at),
        None => (false, member),
    };
    let (host, port) = at.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let refused = std::net::TcpStream::connect_timeout(&addr, within.max(Duration::from_millis(1)))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    if refused {
        return Some(format!(
            "cannot connect to {shown}: connection refused at {at}; is etcd running and listening there?"
        ));
    }
    let other = probe::speaks(host, port, within)?;
    Some(match (other, tls) {
        (Proto::Http2, false) | (Proto::Tls, true) => return None,
        (Proto::Http2, true) => format!(
            "the server at {at} does not speak TLS: it answers in plain HTTP/2 (gRPC); \
             for a plain etcd port use etcd://; otherwise fix the port in {shown}"
        ),
        (other, false) => {
            probe::wrong_port((host, port), shown, "etcd (gRPC)", other, Some("etcds://"))
        }
        (other, true) => {
            probe::wrong_port((host, port), shown, "etcd (gRPC over TLS)", other, None)
        }
    })
}

/// The client's error in one line: its own words and their causes.
pub fn describe(e: &Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// True when the error shows that no request reached a server: the
/// connection could not be made.
fn unreachable(e: &Error) -> bool {
    let text = describe(e).to_lowercase();
    match e {
        Error::Connect(_) | Error::Io(_) => true,
        Error::Status(s) if s.code() == tonic::Code::Unavailable => {
            text.contains("connect") || text.contains("dns")
        }
        _ => false,
    }
}

fn tls_config(tls: &super::url::Tls, shown: &str) -> Result<ClientTlsConfig> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| {
            fail(
                USAGE,
                format!("cannot read the {what} {} of {shown}: {e}", p.display()),
            )
        })
    };
    let mut o = ClientTlsConfig::new();
    o = match &tls.ca {
        Some(ca) => o.ca_certificate(Certificate::from_pem(read(ca, "CA file (cacert=)")?)),
        None => o.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        let cert = read(cert, "client certificate (cert=)")?;
        let key = read(key, "client key (key=)")?;
        o = o.identity(Identity::from_pem(cert, key));
    }
    Ok(o)
}
