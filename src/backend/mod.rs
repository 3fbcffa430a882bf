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
pub mod etcd;
pub mod kinds;
#[cfg(test)]
pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod probe;
pub mod redis;
pub mod redlock;
pub mod sql;
pub mod sqlite;
pub mod zookeeper;

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
    /// A backend that waits its own way (a queued node that the server
    /// wakes, say) takes the whole wait here, until `deadline` (None:
    /// forever), and answers Acquired (with the instant the granting request
    /// was sent, which the renewal deadline counts from) or Busy; `None`
    /// leaves it to the shared try/subscribe/retry loop of `lease::acquire`,
    /// as every backend so far does.
    fn acquire_waiting(
        &mut self,
        req: &Request,
        deadline: Option<std::time::Instant>,
    ) -> Option<Result<(Acquire, std::time::Instant)>> {
        let _ = (req, deadline);
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
    pub url: Option<String>,
    pub prefix: String,
    pub timeout: Duration,
}

/// Opens one kind of backend from its URL.
type Opener = fn(&str, &Config) -> Result<(Box<dyn Backend>, Location)>;

/// The URL schemes dlock understands, in the order help text lists them:
/// [`open`] dispatches on them, and `--url`'s help and the "unsupported URL"
/// message are made from them, so a new backend is its folder plus a line here.
const SCHEMES: &[(&str, Opener)] = &[
    ("redis", open_redis),
    ("rediss", open_redis),
    ("redis+unix", open_redis),
    ("redis+sentinel", open_redis),
    ("redis+cluster", open_redis),
    ("redlock", open_redlock),
    ("mysql", open_mysql),
    ("postgres", open_postgres),
    ("postgresql", open_postgres),
    ("etcd", open_etcd),
    ("etcds", open_etcd),
    ("sqlite", open_sqlite),
    ("zk", open_zookeeper),
];

/// Accepted but not listed: the Redis driver's own name for `redis+unix`,
/// and ZooKeeper's long name.
const ALIASES: &[(&str, Opener)] = &[("unix", open_redis), ("zookeeper", open_zookeeper)];

/// "redis://, rediss://, … or sqlite://", with `last` before the final one.
pub fn scheme_list(last: &str) -> String {
    let names: Vec<String> = SCHEMES.iter().map(|(s, _)| format!("{s}://")).collect();
    match names.split_last() {
        Some((tail, [])) => tail.clone(),
        Some((tail, rest)) => format!("{}{last}{tail}", rest.join(", ")),
        None => String::new(),
    }
}

/// The help of `--url`.
pub fn url_help() -> String {
    format!(
        "Backend URL: {} [default: embedded SQLite file]",
        scheme_list(", ")
    )
}

fn open_redis(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = redis::RedisBackend::open(url, cfg)?;
    let loc = Location {
        backend: match url.split_once("://").map(|(s, _)| s) {
            Some("redis+sentinel") => "redis+sentinel",
            Some("redis+cluster") => "redis+cluster",
            _ => "redis",
        },
        location: redact(url),
    };
    Ok((Box::new(b), loc))
}

fn open_redlock(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = redlock::RedlockBackend::open(url, cfg)?;
    let loc = Location {
        backend: "redlock",
        location: redact(url),
    };
    Ok((Box::new(b), loc))
}

fn open_mysql(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = mysql::MysqlBackend::open(url, cfg)?;
    let loc = Location {
        backend: "mysql",
        location: redact(url),
    };
    Ok((Box::new(b), loc))
}

fn open_postgres(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = postgres::PgBackend::open(url, cfg)?;
    let loc = Location {
        backend: "postgres",
        location: redact(url),
    };
    Ok((Box::new(b), loc))
}

fn open_etcd(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let (b, loc) = etcd::EtcdBackend::open(url, cfg)?;
    Ok((Box::new(b), loc))
}

fn open_zookeeper(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = zookeeper::ZkBackend::open(url, cfg)?;
    let loc = Location {
        backend: "zookeeper",
        location: redact(url),
    };
    Ok((Box::new(b), loc))
}

fn open_sqlite(url: &str, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let (b, loc) = sqlite::SqliteBackend::open(Some(url), cfg)?;
    Ok((Box::new(b), loc))
}

/// Opens the backend named by the URL's scheme; without a URL, the embedded
/// SQLite file, which guards this host only.
pub fn open(cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    crate::names::check_prefix(&cfg.prefix)?;
    let Some(url) = cfg.url.as_deref() else {
        let (b, loc) = sqlite::SqliteBackend::open(None, cfg)?;
        return Ok((Box::new(b), loc));
    };
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match SCHEMES.iter().chain(ALIASES).find(|(s, _)| *s == scheme) {
        Some((_, open)) => open(url, cfg),
        None => Err(fail(
            USAGE,
            format!(
                "unsupported URL '{}': use {}",
                redact(url),
                scheme_list(" or ")
            ),
        )),
    }
}

/// A host that stands in for libpq's hosts while a URL is parsed.
const NO_HOST: &str = "dlock-no-host.invalid";

/// The URL parsed, and the hosts that [`NO_HOST`] stands in for: libpq's
/// `postgres://user:pw@/db?host=/dir` (no host) and
/// `postgres://user:pw@h1:5432,h2:5432/db` (several) are URLs the url
/// crate refuses.
fn parse_url(url: &str) -> Option<(::url::Url, Option<&str>)> {
    if let Ok(u) = ::url::Url::parse(url) {
        return Some((u, None));
    }
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(end);
    let (user, hosts) = auth.rsplit_once('@')?;
    if !matches!(scheme, "postgres" | "postgresql") {
        return None;
    }
    let u = ::url::Url::parse(&format!("{scheme}://{user}@{NO_HOST}{tail}")).ok()?;
    Some((u, Some(hosts)))
}

/// Schemes whose URLs name several hosts, which `url` cannot parse.
fn multi_host(url: &str) -> Option<redis::multi::Multi> {
    let scheme = url.split_once("://")?.0;
    if !matches!(scheme, "redis+sentinel" | "redis+cluster" | "redlock") {
        return None;
    }
    redis::multi::Multi::parse(url, 6379).ok()
}

/// The URL with any password (in the authority or a `pass`/`password` query
/// parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    if let Some(m) = multi_host(url) {
        return m.redacted();
    }
    match parse_url(url) {
        Some((mut u, stand_in)) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(k.as_ref(), "pass" | "password");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            // Rewritten only when it hides something: rewriting re-encodes it.
            if pairs.iter().any(|(_, v)| v == "***") {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            let shown = u.to_string().replace("%2A%2A%2A", "***");
            match stand_in {
                Some(hosts) => shown.replacen(NO_HOST, hosts, 1),
                None => shown,
            }
        }
        None => match split_hosts(url) {
            // A list of hosts (zk://a:1,b:2/x): only the password goes.
            Some((head, Some(_), tail)) => format!("{head}:***@{tail}"),
            Some(_) => url.to_string(),
            // Unparsable: keep the scheme only, since we cannot tell where a password sits.
            None => match url.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://…"),
                None => "(unparsable URL)".into(),
            },
        },
    }
}

/// A URL whose authority lists several hosts, which the url crate cannot
/// parse, split around its password: ("zk://user", Some("pass"),
/// "host1,host2/path"), or None for other URLs. The Redis schemes with
/// several hosts have a parser of their own (`multi_host`).
fn split_hosts(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if !authority.contains(',') {
        return None;
    }
    let Some(at) = authority.rfind('@') else {
        return Some((url, None, ""));
    };
    let userinfo = &rest[..at];
    let tail = &rest[at + 1..];
    match userinfo.split_once(':') {
        Some((user, pass)) => {
            let head = &url[..scheme.len() + 3 + user.len()];
            Some((head, Some(pass), tail))
        }
        None => Some((url, None, "")),
    }
}

/// The secrets in a URL, so that final error lines can be scrubbed of them
/// even when a driver echoes one back.
pub fn secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = multi_host(url) {
        out = m.secrets();
    } else if let Some((u, _)) = parse_url(url) {
        if let Some(p) = u.password() {
            out.push(p.to_string());
            if let Ok(d) = ::url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .ok_or(())
            {
                out.push(d);
            }
        }
        for (k, v) in u.query_pairs() {
            if matches!(k.as_ref(), "pass" | "password") {
                out.push(v.into_owned());
            }
        }
    }
    if let Some((_, Some(p), _)) = split_hosts(url) {
        out.push(p.to_string());
        if let Some((_, d)) = ::url::form_urlencoded::parse(format!("p={p}").as_bytes()).next() {
            out.push(d.into_owned());
        }
    }
    out.retain(|s| s.len() >= 3);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_list_reads_as_before() {
        assert_eq!(
            scheme_list(" or "),
            "redis://, rediss://, redis+unix://, redis+sentinel://, redis+cluster://, redlock://, mysql://, postgres://, postgresql://, etcd://, etcds://, sqlite:// or zk://"
        );
        assert!(url_help().starts_with("Backend URL: redis://, rediss://"));
    }

    #[test]
    fn what_a_backend_cannot_do_is_a_usage_error() {
        let sem = Kind {
            slots: 3,
            ..Kind::MUTEX
        };
        let plain = Use {
            kind: &Kind::MUTEX,
            detached: true,
        };
        check_capable(Capabilities::MUTEX, "x", &plain).unwrap();
        let e = check_capable(
            Capabilities::MUTEX,
            "x",
            &Use {
                kind: &sem,
                detached: false,
            },
        )
        .unwrap_err();
        assert_eq!(crate::error::code_of(&e), USAGE);
        assert!(e
            .to_string()
            .contains("the x backend does not support --shared"));
        check_capable(
            Capabilities::ALL,
            "x",
            &Use {
                kind: &sem,
                detached: true,
            },
        )
        .unwrap();
        let session = Capabilities {
            detached: false,
            ..Capabilities::ALL
        };
        let e = check_capable(session, "zk", &plain).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot keep a lease after dlock exits"),
            "{e}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let r = redact("redis+unix:///run/redis.sock?db=1&pass=s3cret");
        assert!(!r.contains("s3cret") && r.contains("db=1"), "{r}");
        let r = redact("mysql://root:p%40ss@db/locks");
        assert!(!r.contains("p%40ss") && !r.contains("p@ss"), "{r}");
        assert_eq!(redact("redis://:pw:with@junk@@"), "redis://…");
        assert_eq!(
            redact("redis+sentinel://:s3cret@a:1,b:2/svc?sentinel_password=x9y"),
            "redis+sentinel://:***@a:1,b:2/svc?sentinel_password=***"
        );
        let s = secrets("redlock://u:p%40w@a,b,c");
        assert!(s.contains(&"p@w".to_string()), "{s:?}");
        assert_eq!(redact("zk://u:s3cret@a:1,b:2/ch"), "zk://u:***@a:1,b:2/ch");
        assert_eq!(redact("zk://a:1,b:2/ch"), "zk://a:1,b:2/ch");
        assert_eq!(redact("zk://u:pw@a:1/ch"), "zk://u:***@a:1/ch");
        // A list of etcd members keeps its hosts, and a CA path stays readable.
        assert_eq!(
            redact("etcd://root:s%40cret@h1:2379,h2:2379/?cacert=/ca.pem"),
            "etcd://root:***@h1:2379,h2:2379/?cacert=/ca.pem"
        );
        assert_eq!(redact("etcd://h1:2379,h2:2379"), "etcd://h1:2379,h2:2379");
        assert_eq!(
            redact("etcds://u:pw@h1:2379?cacert=/etc/ca.pem"),
            "etcds://u:***@h1:2379?cacert=/etc/ca.pem"
        );
    }

    #[test]
    fn lists_secrets_decoded_and_encoded() {
        let s = secrets("mysql://root:p%40ss@db/locks");
        assert!(
            s.contains(&"p%40ss".to_string()) && s.contains(&"p@ss".to_string()),
            "{s:?}"
        );
        let s = secrets("zk://u:p%40ss@a:1,b:2");
        assert!(s.contains(&"p@ss".to_string()), "{s:?}");
        let s = secrets("etcd://root:s%40cret@h1:2379,h2:2379");
        assert!(s.contains(&"s@cret".to_string()), "{s:?}");
    }
}
