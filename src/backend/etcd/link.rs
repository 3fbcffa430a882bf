//! The connection to the cluster: a tokio runtime made only when an etcd
//! URL is used, a client talking to one member at a time, and failover to
//! the next member when that one stops answering.
//!
//! One member at a time (rather than the client's own balancing) keeps
//! failover plain: a request that found its member unreachable before
//! sending anything goes to the next one at once; any other failure moves
//! the next request to the next member, and the caller decides whether to
//! repeat a request whose fate is unknown. `require_leader` makes a member
//! cut off from the majority refuse at once instead of holding requests.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Certificate, Client, ConnectOptions, Error, Identity, TlsOptions};

use super::url::Target;
use crate::error::{fail, fail_unsent, INTERNAL, UNAVAILABLE, USAGE};

pub struct Link {
    rt: tokio::runtime::Runtime,
    members: Vec<String>,
    options: ConnectOptions,
    /// The URL without its password, for messages.
    pub shown: String,
    state: Mutex<State>,
}

struct State {
    member: usize,
    client: Option<Client>,
    timeout: Duration,
}

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
        let mut options = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        if let Some((user, pass)) = &target.user {
            options = options.with_user(user.clone(), pass.clone());
        }
        if let Some(tls) = &target.tls {
            // rustls needs a process-wide crypto provider; ring builds with no system libraries.
            let _ = rustls::crypto::ring::default_provider().install_default();
            options = options.with_tls(tls_options(tls, &shown)?);
        }
        Ok(Link {
            rt,
            members,
            options,
            shown,
            state: Mutex::new(State {
                member: 0,
                client: None,
                timeout,
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
        let connect = Client::connect([member], Some(self.options.clone()));
        let c = match tokio::time::timeout(left, connect).await {
            Ok(c) => c?,
            Err(_) => return Err(Error::IoError(std::io::ErrorKind::TimedOut.into())),
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
            let left = until.saturating_duration_since(Instant::now());
            let attempt = async {
                let c = self.client(until).await.map_err(|e| (e, true))?;
                f(c).await.map_err(|e| {
                    let unsent = unreachable(&e);
                    (e, unsent)
                })
            };
            let err = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err((e, unsent))) => {
                    if let Some(refusal) = self.refusal(&e, what) {
                        return Err(refusal);
                    }
                    self.next_member();
                    tries -= 1;
                    if unsent && tries > 0 && Instant::now() < until {
                        continue;
                    }
                    self.unavailable(&e, what, unsent)
                }
                Err(_) => {
                    self.next_member();
                    fail(
                        UNAVAILABLE,
                        format!(
                            "etcd at {} did not answer {what} within {}",
                            self.shown,
                            crate::duration::format(timeout)
                        ),
                    )
                }
            };
            return Err(err);
        }
    }

    /// A refusal that another member would repeat: bad credentials, a
    /// request the server rejects.
    fn refusal(&self, e: &Error, what: &str) -> Option<anyhow::Error> {
        use tonic::Code;
        let Error::GRpcStatus(s) = e else {
            return None;
        };
        let auth = s.message().contains("authentication failed")
            || s.message().contains("permission denied")
            || s.message().contains("invalid auth token");
        let no_auth = s.message().contains("authentication is not enabled");
        let (code, hint) = match s.code() {
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

/// The client's error in one line: its own words and their causes.
pub fn describe(e: &Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    match e {
        Error::GRpcStatus(s) if !s.message().is_empty() => parts.push(s.message().to_string()),
        Error::GRpcStatus(s) => parts.push(format!("{:?}", s.code())),
        other => parts.push(other.to_string()),
    }
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
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            text.contains("connect") || text.contains("dns")
        }
        _ => false,
    }
}

fn tls_options(tls: &super::url::Tls, shown: &str) -> Result<TlsOptions> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| {
            fail(
                USAGE,
                format!("cannot read the {what} {} of {shown}: {e}", p.display()),
            )
        })
    };
    let mut o = TlsOptions::new();
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
