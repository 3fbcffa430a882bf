//! The lock backends behind one small trait.
//!
//! A backend stores leases: a name, the token that holds it, a fence, holder
//! metadata and an expiry measured by the backend's own clock. Everything
//! else (waiting, renewal deadlines, child supervision) is written once on top
//! of this trait, so a new backend is one file plus a line in [`open`].

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::error::{fail, USAGE};
use crate::holder::Holder;
pub use kinds::{Kind, Mode};

pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod forms;
pub mod kinds;
#[cfg(test)]
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod notice;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod probe;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redlock;
#[cfg(any(feature = "sqlite", feature = "mysql", feature = "postgres"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod url;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

use url::Parts;
pub use url::Url;

/// What a caller asks for when acquiring.
pub struct Request<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub lease: Duration,
    pub holder: &'a Holder,
    pub kind: Kind,
}

/// A lease that is now held by the caller's token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub fence: u64,
    /// The backend's clock when it granted or extended the lease, in µs since the epoch.
    pub server_now_us: i64,
    /// True when the token already held the lock and the lease was only extended.
    pub extended: bool,
    /// The lease the backend granted, which the renewal deadline counts from.
    /// A backend may grant less than was asked (a quorum's validity after the
    /// time spent reaching it) or more (a server that rounds up).
    pub lease: Duration,
    /// The semaphore slot held (0..N-1), for `--slots N` with N > 1.
    pub slot: Option<u32>,
}

/// The outcome of one acquisition attempt.
#[derive(Debug)]
pub enum Acquire {
    Acquired(Grant),
    /// Someone else holds it; `info` says who, when the backend could tell.
    Busy(Option<LockInfo>),
    /// Busy, and the request holds a place in the lock's queue, which lapses
    /// unless it tries again within [`kinds::TICKET_REFRESH`].
    Queued(Option<LockInfo>),
}

/// The outcome of a token-checked renew or release.
#[derive(Debug)]
pub enum Check {
    Done,
    /// Nobody holds the lock: it was released or its lease expired.
    NotHeld,
    /// Another token holds it.
    HeldByOther(LockInfo),
    /// The token's lease was broken with `release --force` (where the backend
    /// records who broke it).
    Broken(Broken),
}

/// Who broke a lease, and who holds the lock now, if anyone.
#[derive(Debug)]
pub struct Broken {
    /// "user@host (pid N)" of the `release --force` that broke it.
    pub by: String,
    pub now: Option<LockInfo>,
}

/// A held lock as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LockInfo {
    pub name: String,
    pub holder: Holder,
    /// The first characters of the token: enough to tell holders apart, not to release.
    pub token_id: String,
    pub fence: u64,
    /// The backend's clock at acquisition, µs since the epoch.
    pub acquired_at_us: i64,
    /// Time left on the lease, by the backend's clock.
    #[serde(skip)]
    pub ttl: Duration,
    pub mode: Mode,
    /// The lock's slot count (1 unless a semaphore).
    pub slots: u32,
    /// The semaphore slot this holder has.
    pub slot: Option<u32>,
    /// Waiters holding a place in the lock's queue (see [`kinds`]).
    #[serde(skip)]
    pub queued: u32,
}

impl LockInfo {
    /// "exclusive", "shared" or "semaphore".
    pub fn kind(&self) -> &'static str {
        match (self.mode, self.slots) {
            (_, n) if n > 1 => "semaphore",
            (Mode::Shared, _) => "shared",
            (Mode::Exclusive, _) => "exclusive",
        }
    }
}

/// What a backend can do; dlock refuses the rest with a usage error rather
/// than faking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `--shared`, `--slots N` and `--fair`.
    pub kinds: bool,
    /// A lease outlives the process that took it, so that a plain `acquire`
    /// can hand its token to a later `renew` or `release` (a backend whose
    /// leases live in a client session cannot).
    pub detached: bool,
    /// Fences strictly increase per name over all grants; without it `exec`
    /// exports no DLOCK_FENCE rather than one that could go backwards.
    pub fences: bool,
}

impl Capabilities {
    /// A plain mutex whose leases and fences live on the server.
    pub const MUTEX: Capabilities = Capabilities {
        kinds: false,
        detached: true,
        fences: true,
    };
    /// Every lock kind as well.
    pub const ALL: Capabilities = Capabilities {
        kinds: true,
        ..Capabilities::MUTEX
    };
}

/// What a command is about to ask of a backend.
pub struct Use<'a> {
    pub kind: &'a Kind,
    /// A plain `acquire`, whose lease must outlive dlock.
    pub detached: bool,
}

/// Blocks until the lock may have been released, or the timeout passes.
/// Spurious wake-ups are allowed; missed ones are not (the caller subscribes
/// before its last attempt).
pub trait Waiter: Send {
    fn wait(&mut self, timeout: Duration) -> Result<()>;
    /// True when a release that happened before the waiter existed still wakes
    /// it (a persistent baton), so the caller need not try again after
    /// creating it.
    fn keeps_wakeups(&self) -> bool {
        false
    }
    /// What must be undone if dlock exits on a signal while this waiter
    /// lives (its place in a server-side queue, say). The caller, which
    /// owns signals and exits, runs it on such an exit; None by default.
    fn on_exit(&self) -> Option<Box<dyn FnOnce() + Send>> {
        None
    }
}

pub trait Backend: Send {
    /// Takes the lock if it is free or already held by `req.token` (then only
    /// the lease is extended; nothing is counted).
    fn acquire(&mut self, req: &Request) -> Result<Acquire>;
    /// Extends the lease only while `token` still holds it; never re-creates an expired lease.
    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check>;
    /// Frees the lock only if `token` holds it, and wakes waiters.
    fn release(&mut self, name: &str, token: &str) -> Result<Check>;
    /// Frees the lock whoever holds it (every holder, or the one whose token
    /// id is `only`); returns whom it broke.
    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>>;
    /// The holders of held locks (one entry per holder): those named, or
    /// every one under the prefix.
    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>>;
    /// What this backend can do beyond a plain mutex.
    fn capabilities(&self) -> Capabilities {
        Capabilities::MUTEX
    }
    /// A backend that waits its own way (a key queue whose watch wakes it,
    /// say) takes the wait here, until `deadline` (None: forever) or until
    /// `cancel` fires, and answers Acquired (with the instant the granting
    /// request was sent, which the renewal deadline counts from) or Busy,
    /// having left no place of its own behind. A failure is returned as an
    /// error at once: the caller (`lease::acquire`) backs off and calls again
    /// with the same request, which may find its place kept, and on giving
    /// up releases the token. The caller owns signals and exits. `None`
    /// leaves the wait to the shared try/subscribe loop, as most backends do.
    fn acquire_waiting(
        &mut self,
        req: &Request,
        deadline: Option<std::time::Instant>,
        cancel: &crate::cancel::Cancel,
    ) -> Option<Result<(Acquire, std::time::Instant)>> {
        let _ = (req, deadline, cancel);
        None
    }
    /// A subscription that reports releases of `name`.
    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>>;
    /// Drops and re-opens the connection after a transport error.
    fn reconnect(&mut self) -> Result<()>;
    /// Bounds every request from now on (renewals shorten it near their deadline).
    fn set_timeout(&mut self, timeout: Duration) -> Result<()>;
    /// Calls `on_break` once, from a thread of the backend's own, with a
    /// one-line reason as soon as `token`'s lease on `name` is broken with
    /// `release --force`. Returns at once. By default there are no such
    /// notices, and the next renewal finds the lease gone.
    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        let _ = (name, token, on_break);
    }
    /// For `dlock watch`: a subscription whose `wait` returns when one of
    /// `names` (None: any lock under the prefix) may have changed (granted,
    /// released, broken, queued), on a connection of its own; spurious
    /// wake-ups are allowed. It only listens: it never changes a lock.
    /// None (the default): the backend cannot push, and the watcher polls.
    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        let _ = names;
        Ok(None)
    }
    /// How coarsely the backend counts the time a lease has left (etcd:
    /// whole seconds): a watcher that sees a lease vanish within this of
    /// its expiry takes it to have expired.
    fn ttl_grain(&self) -> Duration {
        Duration::ZERO
    }
    /// For `dlock watch`: who broke, with `release --force`, the lease of
    /// `name` whose token id is `token_id`, where the backend records it
    /// (None by default: a break looks like a release).
    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        let _ = (name, token_id);
        Ok(None)
    }
}

/// Refuses, as a usage error, what the backend cannot do.
pub fn check_capable(caps: Capabilities, backend: &str, want: &Use) -> Result<()> {
    let why = if *want.kind != Kind::MUTEX && !caps.kinds {
        "does not support --shared, --slots or --fair; use a plain lock there, or another backend"
    } else if want.detached && !caps.detached {
        "cannot keep a lease after dlock exits; use `dlock exec`, or `acquire --keepalive-pid`"
    } else {
        return Ok(());
    };
    Err(fail(USAGE, format!("the {backend} backend {why}")))
}

/// Where locks live, for `status` and messages; never carries a password.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    pub backend: &'static str,
    pub location: String,
}

/// Connection settings shared by every backend.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Option<Url>,
    pub prefix: String,
    pub timeout: Duration,
}

/// Opens one kind of backend from its URL.
type Opener = fn(&Url, &Config) -> Result<(Box<dyn Backend>, Location)>;

/// A URL scheme dlock understands.
pub struct Scheme {
    pub name: &'static str,
    /// How its URLs are written, for `dlock urls` and messages.
    pub form: &'static str,
    parts: Parts,
    /// The cargo feature that builds its backend in.
    pub feature: &'static str,
    open: Option<Opener>,
}

/// The opener of a backend that is built in; None (and the feature to build
/// with) when its cargo feature was left out.
macro_rules! opener {
    ($feature:literal, $open:path) => {{
        #[cfg(feature = $feature)]
        let open: Option<Opener> = Some($open);
        #[cfg(not(feature = $feature))]
        let open: Option<Opener> = None;
        ($feature, open)
    }};
}

/// A scheme whose URLs name hosts, on `port` unless they say otherwise
/// (0: none, a socket's path).
const fn hosts(
    name: &'static str,
    port: u16,
    form: &'static str,
    (feature, open): (&'static str, Option<Opener>),
) -> Scheme {
    let parts = Parts::Hosts { default_port: port };
    Scheme {
        name,
        form,
        parts,
        feature,
        open,
    }
}

/// A scheme whose URLs name a file.
const fn file(
    name: &'static str,
    form: &'static str,
    (feature, open): (&'static str, Option<Opener>),
) -> Scheme {
    let parts = Parts::Path;
    Scheme {
        name,
        form,
        parts,
        feature,
        open,
    }
}

/// The URL schemes, in the order `dlock urls` lists them: [`open`]
/// dispatches on them, and `dlock urls` and the "unsupported URL" message
/// are made from them, so a new backend is its folder, its cargo feature
/// and a line here.
#[rustfmt::skip]
pub const SCHEMES: &[Scheme] = &[
    file("sqlite", forms::SQLITE, opener!("sqlite", sqlite::open)),
    hosts("redis", 6379, forms::REDIS, opener!("redis", redis::open)),
    hosts("rediss", 6379, forms::REDISS, opener!("redis-tls", redis::open)),
    hosts("redis+unix", 0, forms::REDIS_UNIX, opener!("redis", redis::open)),
    hosts("redis+sentinel", 26379, forms::SENTINEL, opener!("redis", redis::open)),
    hosts("redis+cluster", 6379, forms::CLUSTER, opener!("redis", redis::open)),
    hosts("redlock", 6379, forms::REDLOCK, opener!("redis", redlock::open)),
    hosts("mysql", 3306, forms::MYSQL, opener!("mysql", mysql::open)),
    hosts("postgres", 5432, forms::POSTGRES, opener!("postgres", postgres::open)),
    hosts("postgresql", 5432, forms::POSTGRESQL, opener!("postgres", postgres::open)),
    hosts("etcd", 2379, forms::ETCD, opener!("etcd", etcd::open)),
    hosts("etcds", 2379, forms::ETCDS, opener!("etcd", etcd::open)),
    hosts("zk", 2181, forms::ZOOKEEPER, opener!("zookeeper", zookeeper::open)),
];

/// Accepted but not listed: the Redis driver's name for `redis+unix`, and
/// ZooKeeper's long name.
const ALIASES: &[(&str, &str)] = &[("unix", "redis+unix"), ("zookeeper", "zk")];

/// The scheme of that name, or of the name it is an alias of.
fn scheme(name: &str) -> Option<&'static Scheme> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, to)| to);
    SCHEMES.iter().find(|s| s.name == name)
}

/// "sqlite://, redis://, … or zk://", with `last` before the final one.
pub fn scheme_list(last: &str) -> String {
    let names: Vec<String> = SCHEMES.iter().map(|s| format!("{}://", s.name)).collect();
    match names.split_last() {
        Some((tail, [])) => tail.clone(),
        Some((tail, rest)) => format!("{}{last}{tail}", rest.join(", ")),
        None => String::new(),
    }
}

/// Parses a backend URL, once: its scheme must be one of [`SCHEMES`].
pub fn parse_url(text: &str) -> Result<Url> {
    let Some((name, _)) = text.split_once("://") else {
        return Err(fail(USAGE, not_a_url(text)));
    };
    let Some(s) = scheme(name) else {
        return Err(fail(
            USAGE,
            format!(
                "unsupported URL scheme '{}' in '{}': use {} (`dlock urls` shows each form)",
                url::shown_loosely(name),
                url::shown_loosely(text),
                scheme_list(" or ")
            ),
        ));
    };
    Url::parse(text, s.parts).map_err(|why| {
        fail(
            USAGE,
            format!(
                "malformed URL '{}': {why}; expected {}",
                url::shown_loosely(text),
                s.form
            ),
        )
    })
}

/// Why a text without "://" is no URL, and what to write instead.
fn not_a_url(text: &str) -> String {
    let shown = url::shown_loosely(text);
    if let Some((scheme, rest)) = text.split_once(':') {
        if self::scheme(scheme).is_some() {
            let rest = rest.trim_start_matches('/');
            return format!(
                "malformed URL '{shown}': write two slashes after '{scheme}:', as in {scheme}://{}",
                url::shown_loosely(rest)
            );
        }
    }
    format!(
        "'{shown}' is not a URL: it needs a scheme, e.g. redis://{shown} (`dlock urls` lists them)"
    )
}

/// Opens the backend named by the URL's scheme; without a URL, the embedded
/// SQLite file, which guards this host only.
pub fn open(cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    crate::names::check_prefix(&cfg.prefix)?;
    let Some(url) = cfg.url.as_ref() else {
        return open_default(cfg);
    };
    let s = scheme(&url.scheme).expect("parse_url accepts only these schemes");
    match s.open {
        Some(open) => open(url, cfg),
        None => Err(fail(USAGE, left_out(s))),
    }
}

#[cfg(feature = "sqlite")]
fn open_default(cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    sqlite::open_default(cfg)
}

/// Without SQLite there is no embedded default: every command needs a URL.
#[cfg(not(feature = "sqlite"))]
fn open_default(_: &Config) -> Result<(Box<dyn Backend>, Location)> {
    Err(fail(
        USAGE,
        "this dlock was built without SQLite, the default backend: give --url or set DLOCK_URL \
         (`dlock urls` lists the forms)",
    ))
}

/// Why a built-in scheme cannot be used: its backend was left out at build time.
pub fn left_out(s: &Scheme) -> String {
    format!(
        "this dlock was built without {}:// support (cargo feature `{}`); \
         rebuild with `cargo build --release --features {}`, or use a build with the default features",
        s.name, s.feature, s.feature
    )
}

impl Scheme {
    /// Whether this build has its backend.
    pub fn built_in(&self) -> bool {
        self.open.is_some()
    }
}

impl Url {
    /// Where this URL's backend is, for `status` and messages.
    pub fn location(&self, backend: &'static str) -> Location {
        Location {
            backend,
            location: self.shown().to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
