//! A connection to one etcd member and the calls dlock makes on it: unary
//! requests of the KV, Lease and Auth services, and the two bidirectional
//! streams (Watch, LeaseKeepAlive). Method paths are etcd's
//! (`/etcdserverpb.SERVICE/METHOD`, rpc.proto).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

use super::messages::*;

/// How to reach a member.
#[derive(Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// HTTP/2 pings: how often, and how long one may go unanswered.
    pub keep_alive: (Duration, Duration),
    /// Ask members to refuse at once while they have no leader, rather
    /// than hold requests (etcd's `hasleader` metadata).
    pub require_leader: bool,
    pub user: Option<(String, String)>,
    pub tls: Option<ClientTlsConfig>,
}

/// What went wrong with a call.
#[derive(Debug)]
pub enum Error {
    /// The member answered with a gRPC status (or tonic made one of a
    /// failed exchange).
    Status(Status),
    /// No connection could be made.
    Connect(tonic::transport::Error),
    /// The connection took longer than allowed.
    Io(std::io::Error),
    /// A keep-alive found its lease gone.
    LeaseGone,
    /// A stream ended before its first answer, or a token was unusable.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Status(s) if s.message().is_empty() => write!(f, "{:?}", s.code()),
            Error::Status(s) => f.write_str(s.message()),
            Error::Connect(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "io error: {e}"),
            Error::LeaseGone => f.write_str("lease not found"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Status(s) => std::error::Error::source(s),
            Error::Connect(e) => std::error::Error::source(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Status(s)
    }
}

/// The connection to one member; clones share it and its auth token.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
    require_leader: bool,
    user: Option<Arc<(String, String)>>,
    token: Arc<RwLock<Option<AsciiMetadataValue>>>,
}

/// A lease's keep-alive stream, opened by [`Client::lease_keep_alive`].
pub struct Keeper {
    id: i64,
    tx: mpsc::Sender<LeaseId>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

/// A watch, opened by [`Client::watch`]; it ends when dropped.
pub struct Watch {
    // Held so the request side stays open: the watch lives while it does.
    _tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

/// etcd's answer to a token it does not know (expired, or from before a
/// restart): log in again and repeat.
fn token_rejected(s: &Status) -> bool {
    s.code() == Code::Unauthenticated || s.message() == "etcdserver: invalid auth token"
}

impl Client {
    /// Connects to `member` (`http[s]://host:port`) and logs in when
    /// `settings` has a user.
    pub async fn connect(member: &str, settings: &Settings) -> Result<Client, Error> {
        let (every, within) = settings.keep_alive;
        let mut endpoint = Endpoint::from_shared(member.to_string())
            .map_err(Error::Connect)?
            .connect_timeout(settings.connect_timeout)
            .http2_keep_alive_interval(every)
            .keep_alive_timeout(within)
            .keep_alive_while_idle(true);
        if let Some(tls) = &settings.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(Error::Connect)?;
        }
        let channel = endpoint.connect().await.map_err(Error::Connect)?;
        let c = Client {
            grpc: Grpc::new(channel),
            require_leader: settings.require_leader,
            user: settings.user.clone().map(Arc::new),
            token: Arc::new(RwLock::new(None)),
        };
        if c.user.is_some() {
            c.clone().authenticate().await?;
        }
        Ok(c)
    }

    /// A request carrying the metadata every call has.
    fn request<T>(&self, msg: T, with_token: bool) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let meta = r.metadata_mut();
        if self.require_leader {
            meta.insert("hasleader", AsciiMetadataValue::from_static("true"));
        }
        let token = self.token.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = token.as_ref().filter(|_| with_token) {
            meta.insert("token", t.clone());
        }
        r
    }

    /// Waits until the channel takes a request (it reconnects if need be).
    async fn ready(&mut self) -> Result<(), Error> {
        self.grpc.ready().await.map_err(Error::Connect)
    }

    async fn unary_once<Q, R>(&mut self, p: &'static str, msg: Q, token: bool) -> Result<R, Error>
    where
        Q: prost::Message + 'static,
        R: prost::Message + Default + 'static,
    {
        self.ready().await?;
        let req = self.request(msg, token);
        let r = self.grpc.unary(req, path(p), ProstCodec::default()).await?;
        Ok(r.into_inner())
    }

    /// A unary call; a rejected token is renewed once and the call repeated
    /// (the server refused it unread, so it did nothing).
    async fn unary<Q, R>(&mut self, p: &'static str, msg: Q) -> Result<R, Error>
    where
        Q: prost::Message + Clone + 'static,
        R: prost::Message + Default + 'static,
    {
        match self.unary_once(p, msg.clone(), true).await {
            Err(Error::Status(s)) if self.user.is_some() && token_rejected(&s) => {
                self.authenticate().await?;
                self.unary_once(p, msg, true).await
            }
            r => r,
        }
    }

    /// Logs in with the user and password; later calls carry the token.
    async fn authenticate(&mut self) -> Result<(), Error> {
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        let req = AuthenticateRequest {
            name: user.0.clone(),
            password: user.1.clone(),
        };
        let r: AuthenticateResponse = self
            .unary_once("/etcdserverpb.Auth/Authenticate", req, false)
            .await?;
        let token = r
            .token
            .parse::<AsciiMetadataValue>()
            .map_err(|e| Error::Other(format!("etcd sent an unusable auth token: {e}")))?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    /// Opens a bidirectional stream whose first request is `first`.
    async fn open<Q, R>(
        &mut self,
        p: &'static str,
        first: Q,
    ) -> Result<(mpsc::Sender<Q>, Streaming<R>), Error>
    where
        Q: prost::Message + 'static,
        R: prost::Message + Default + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(first)
            .map_err(|e| Error::Other(e.to_string()))?;
        let out =
            futures_lite::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        self.ready().await?;
        let req = self.request(out, true);
        let r = self
            .grpc
            .streaming(req, path(p), ProstCodec::default())
            .await?;
        Ok((tx, r.into_inner()))
    }

    pub async fn range(&mut self, r: RangeRequest) -> Result<RangeResponse, Error> {
        self.unary("/etcdserverpb.KV/Range", r).await
    }

    pub async fn txn(&mut self, t: TxnRequest) -> Result<TxnResponse, Error> {
        self.unary("/etcdserverpb.KV/Txn", t).await
    }

    /// Deletes one key.
    pub async fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<DeleteRangeResponse, Error> {
        let d = DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
            prev_kv: false,
        };
        self.unary("/etcdserverpb.KV/DeleteRange", d).await
    }

    pub async fn lease_grant(&mut self, ttl: i64) -> Result<LeaseGrantResponse, Error> {
        let g = LeaseGrantRequest { ttl };
        self.unary("/etcdserverpb.Lease/LeaseGrant", g).await
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.unary("/etcdserverpb.Lease/LeaseRevoke", LeaseId { id })
            .await
    }

    pub async fn lease_time_to_live(&mut self, id: i64) -> Result<LeaseTimeToLiveResponse, Error> {
        self.unary("/etcdserverpb.Lease/LeaseTimeToLive", LeaseId { id })
            .await
    }

    /// Opens a keep-alive stream for lease `id`, which sends one keep-alive
    /// and reads its answer: [`Error::LeaseGone`] when the lease is gone.
    pub async fn lease_keep_alive(&mut self, id: i64) -> Result<Keeper, Error> {
        let (tx, mut rx): (_, Streaming<LeaseKeepAliveResponse>) = self
            .open("/etcdserverpb.Lease/LeaseKeepAlive", LeaseId { id })
            .await?;
        match rx.message().await? {
            Some(r) if r.ttl > 0 => Ok(Keeper { id, tx, rx }),
            Some(_) => Err(Error::LeaseGone),
            None => Err(Error::Other("the keep-alive stream ended at once".into())),
        }
    }

    /// Opens a watch; its first answer says it was created.
    pub async fn watch(&mut self, w: WatchCreateRequest) -> Result<Watch, Error> {
        let create = WatchRequest {
            request_union: Some(WatchRequestUnion::CreateRequest(w)),
        };
        let (tx, rx) = self.open("/etcdserverpb.Watch/Watch", create).await?;
        Ok(Watch { _tx: tx, rx })
    }
}

impl Keeper {
    /// One more keep-alive: the answer (TTL 0 or less: the lease is gone),
    /// or None when the stream has ended.
    pub async fn keep_alive(&mut self) -> Result<Option<LeaseKeepAliveResponse>, Error> {
        if self.tx.send(LeaseId { id: self.id }).await.is_err() {
            return Ok(None);
        }
        Ok(self.rx.message().await?)
    }
}

impl Watch {
    /// The next answer, or None when the stream has ended.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        Ok(self.rx.message().await?)
    }
}
