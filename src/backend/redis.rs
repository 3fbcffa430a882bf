//! Redis backend: one string per lease with a millisecond TTL, changed only
//! by Lua scripts so that every check-and-set is atomic on the server (keys
//! and scripts: see `scripts.rs`).
//!
//! Waking one waiter per release, not all: Redis hands a pushed baton to the
//! client that has been blocked longest, and a baton added while nobody waits
//! stays (until the lease time passes) for the next one, so no release is
//! missed between a waiter's attempt and its BZPOPMIN. A waiter that is killed
//! between taking the baton and trying leaves the others asleep until the
//! holder's TTL, when they wake anyway.
//!
//! Renewals send the script's body (EVAL), so that they cost one round trip
//! even after the server lost its script cache (restart, SCRIPT FLUSH,
//! failover); the other scripts go by hash and fall back to the body once.
//!
//! Plain mutexes keep to those one-script fast paths; the other lock kinds
//! (and a mutex that meets them) go through the engine's loop
//! (`backend::engine`) over the store in `kinds.rs`.

pub(crate) mod changes;
mod kinds;
pub(crate) mod link;
pub(crate) mod misplaced;
mod mutex;
pub(crate) mod scripts;
pub(crate) mod topo;
mod watch;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use redis::Value;

use super::engine;
use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use crate::names::token_id;
use kinds::Keys;
use link::{Link, Route};
use scripts::{key, Lua};

/// How long a baton left by a release waits for a waiter to take it.
pub(crate) const BATON_TTL_MS: &str = "60000";

pub struct RedisBackend {
    link: Arc<Link>,
    prefix: String,
    /// Whether the server's eviction policy was asked about (with the first acquisition).
    policy_checked: AtomicBool,
    /// When a busy attempt of this process last passed a wake-up on, to whom.
    passed: engine::PassOn,
    /// "name\ntoken" of requests that hold a ticket: they skip the fast scripts.
    tickets: HashSet<String>,
}

/// How a script goes to the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    /// Its hash, and its body when the server does not know the hash.
    Hash,
    /// Its body: one round trip whatever the server's script cache holds.
    Body,
}

/// Opens `redis://`, `rediss://`, `redis+unix://`, `redis+sentinel://` or
/// `redis+cluster://`.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let (target, wait_replicas, backend) = match url.scheme.as_str() {
        "redis+sentinel" => {
            let (t, w) = topo::sentinel_target(url)?;
            (t, w, "redis+sentinel")
        }
        "redis+cluster" => {
            let (t, w) = topo::cluster_target(url)?;
            (t, w, "redis+cluster")
        }
        _ => (topo::direct_target(url)?, None, "redis"),
    };
    let mut link = Link::new(target, cfg.timeout, url.shown().to_string());
    link.wait_replicas = wait_replicas;
    link.connect()?;
    let b = RedisBackend {
        link: Arc::new(link),
        prefix: cfg.prefix.clone(),
        policy_checked: AtomicBool::new(false),
        passed: engine::PassOn::default(),
        tickets: HashSet::new(),
    };
    Ok((Box::new(b), url.location(backend)))
}

/// What a process's first request learnt beside its script.
struct Asked {
    /// The `INFO memory` reply.
    memory: Option<Value>,
    /// `INFO cluster` says cluster mode, behind a single-server URL.
    cluster_node: bool,
}

impl RedisBackend {
    fn key(&self, name: &str, what: &str) -> String {
        key(&self.prefix, name, what)
    }

    fn run(&self, lua: &Lua, by: By, keys: &[String], args: &[&str]) -> Result<Vec<Value>> {
        Ok(self.run_with_info(lua, by, keys, args, false)?.0)
    }

    /// Runs a script; with `info` (a process's first request), pipelines
    /// `INFO memory` and, behind a single-server URL, `INFO cluster` after it
    /// (no extra round trip) and returns what they say too. A script that
    /// writes a lease waits for the replicas the URL asks for (`WAIT`,
    /// pipelined too).
    fn run_with_info(
        &self,
        lua: &Lua,
        by: By,
        keys: &[String],
        args: &[&str],
        info: bool,
    ) -> Result<(Vec<Value>, Asked)> {
        let ask_cluster = info && !self.link.is_cluster();
        // A cluster node may not have seen a script yet: send bodies there.
        let by = if self.link.is_cluster() { By::Body } else { by };
        let wait = self.link.wait_replicas.filter(|_| lua.writes);
        let wait_ms = (self.link.timeout() / 2).as_millis().max(1);
        let call = |body: bool| {
            let mut pipe = redis::pipe();
            // Errors come back as values: a refused INFO must not fail the script.
            pipe.ignore_errors();
            if body {
                pipe.cmd("EVAL").arg(&lua.body);
            } else {
                pipe.cmd("EVALSHA").arg(&lua.sha);
            }
            pipe.arg(keys.len()).arg(keys).arg(args);
            if let Some(n) = wait {
                pipe.cmd("WAIT").arg(n).arg(wait_ms as u64);
            }
            if info {
                pipe.cmd("INFO").arg("memory");
            }
            if ask_cluster {
                pipe.cmd("INFO").arg("cluster");
            }
            self.link.with_con(Route::Key(&keys[0]), |con| {
                let replies = pipe.query::<Vec<Value>>(con)?;
                // A cluster's redirection is the link's to follow.
                // So is a refusal that may show a server of the wrong kind.
                match replies.first() {
                    Some(Value::ServerError(e))
                        if matches!(e.code(), "MOVED" | "ASK" | "CROSSSLOT")
                            || (e.code() == "CLUSTERDOWN" && !self.link.is_cluster())
                            || e.details()
                                .is_some_and(|d| d.starts_with("unknown command")) =>
                    {
                        Err(e.clone().into())
                    }
                    _ => Ok(replies),
                }
            })
        };
        let mut replies = call(by == By::Body)?;
        let unknown =
            matches!(replies.first(), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT");
        if by == By::Hash && unknown {
            replies = call(true)?;
        }
        let mut replies = replies.into_iter();
        let first = replies.next();
        let acked = if wait.is_some() { replies.next() } else { None };
        let asked = Asked {
            memory: replies.next(),
            cluster_node: replies
                .next()
                .is_some_and(|v| misplaced::cluster_enabled(&text(&v))),
        };
        match first {
            Some(Value::Array(items)) => {
                if let Some(n) = wait {
                    self.check_replicated(&items, acked.as_ref(), n, wait_ms)?;
                }
                Ok((items, asked))
            }
            Some(Value::ServerError(e)) => Err(self.link.request_error(&e.into())),
            other => Err(fail(
                INTERNAL,
                format!(
                    "unexpected reply from {}: {} where a script's list was due",
                    self.link.shown,
                    misplaced::shape(other.as_ref())
                ),
            )),
        }
    }

    /// Acts on what the first request asked beside its script: warns of a
    /// server that may evict leases, and refuses a Cluster node behind a
    /// single-server URL (which would serve only the names whose slots it
    /// owns, and fail the others).
    fn heed(&self, asked: &Asked) -> Result<()> {
        if let Some(info) = &asked.memory {
            watch::warn_if_evicting(info, &self.link.shown);
        }
        match asked.cluster_node {
            true => Err(self.link.cluster_node_error()),
            false => Ok(()),
        }
    }

    /// A lease written (the script's first field is 1) but acknowledged by
    /// fewer replicas than asked is not granted: a failover now could lose
    /// it. The caller treats that like any failed request (an acquisition is
    /// tried again or released, a renewal retried until its deadline).
    fn check_replicated(
        &self,
        items: &[Value],
        acked: Option<&Value>,
        n: u32,
        ms: u128,
    ) -> Result<()> {
        if int(items.first()) != Some(1) {
            return Ok(());
        }
        let got = int(acked).unwrap_or(0);
        if got >= i64::from(n) {
            return Ok(());
        }
        Err(fail(
            UNAVAILABLE,
            format!(
                "{} applied the write, but only {got} of the {n} replicas asked for (wait_replicas) acknowledged it within {ms}ms",
                self.link.shown
            ),
        ))
    }

    /// The engine's store for one request.
    fn keys(&self, by: By, ask: bool, queued: bool) -> Keys<'_> {
        Keys {
            b: self,
            by,
            ask,
            queued,
        }
    }
}

impl Backend for RedisBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        // The first acquisition of a process also asks whether the server may
        // evict keys, in the same round trip.
        let ask = !self.policy_checked.swap(true, Ordering::Relaxed);
        // A mutex request that holds a ticket must refresh it: only the engine can.
        let ticket = kinds::ticket_key(req.name, req.token);
        let queued = self.tickets.contains(&ticket);
        // A busy attempt that owes a wake-up to a waiter ahead of it passes
        // it on, damped (see `engine::PassOn`).
        let (out, fx) = engine::acquire(&mut self.keys(By::Hash, ask, queued), req, &self.passed)?;
        if !matches!(out, Acquire::Acquired(_)) && fx.wake {
            self.passed.pass(fx.owed);
        }
        if matches!(out, Acquire::Queued(_)) {
            self.tickets.insert(ticket);
        } else {
            self.tickets.remove(&ticket);
        }
        Ok(out)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let mut keys = self.keys(By::Body, false, false);
        Ok(engine::renew(&mut keys, name, token, lease)?.0)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        self.tickets.remove(&kinds::ticket_key(name, token));
        let mut keys = self.keys(By::Hash, false, false);
        Ok(engine::release(&mut keys, name, token)?.0)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        let mut keys = self.keys(By::Hash, false, false);
        Ok(engine::force(&mut keys, name, only)?.0)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        match names {
            Some(names) => self.status_of(names),
            None => {
                let names = self.scan_held_names()?;
                self.status_of(&names)
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        Ok(Box::new(RedisWaiter {
            link: Arc::clone(&self.link),
            baton: self.key(name, "wake"),
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.link.disconnect();
        self.link.connect()
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.link.set_timeout(timeout.max(Duration::from_millis(1)));
        Ok(())
    }

    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        let n = changes::subscribe(Arc::clone(&self.link), &self.prefix, names)?;
        Ok(Some(Box::new(n)))
    }

    /// The break record (`P:{NAME}:broken`) names one breaker per lock:
    /// the last lease broken.
    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        let k = self.key(name, "broken");
        let line: Option<String> = self
            .link
            .with_con(Route::Key(&k), |c| redis::cmd("GET").arg(&k).query(c))?;
        let by = line.and_then(|l| {
            let (token, by) = l.split_once('\n')?;
            (crate::names::token_id(token) == token_id).then(|| by.to_string())
        });
        Ok(by)
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        watch::listen(
            Arc::clone(&self.link),
            self.link.timeout(),
            self.key(name, "broken"),
            token.to_string(),
            name.to_string(),
            on_break,
        );
    }
}

impl RedisBackend {
    /// The names under the prefix that have a lease or a state key, on
    /// the server or on every primary of a cluster.
    fn scan_held_names(&mut self) -> Result<Vec<String>> {
        let pattern = scripts::held_pattern(&self.prefix);
        let mut keys = Vec::new();
        if self.link.is_cluster() {
            for node in self.link.primaries()? {
                keys.extend(self.link.scan(Route::Node(&node), &pattern)?);
            }
        } else {
            self.link.refuse_cluster_node(&pattern)?;
            keys = self.link.scan(Route::Key(&pattern), &pattern)?;
        }
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| scripts::name_of(&self.prefix, k))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Waits for the baton: the persistent wake-up means a waiter needs no
/// subscription before its last attempt.
struct RedisWaiter {
    link: Arc<Link>,
    baton: String,
}

impl Waiter for RedisWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        // BZPOPMIN takes seconds with decimals; 0 would mean forever.
        let secs = timeout.as_secs_f64().max(0.001);
        let slack = self.link.timeout();
        let r = self.link.with_con(Route::Key(&self.baton), |con| {
            con.set_read_timeout(Some(timeout + slack))?;
            let r = redis::cmd("BZPOPMIN")
                .arg(&self.baton)
                .arg(format!("{secs:.3}"))
                .query::<Value>(con);
            con.set_read_timeout(Some(slack))?;
            r
        });
        r.map(|_| ())
            .map_err(|e| fail(UNAVAILABLE, format!("{e:#} while waiting")))
    }

    fn keeps_wakeups(&self) -> bool {
        true
    }
}

pub(crate) fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Who broke the token's lease, from a script's reply (nil when nobody did).
pub(crate) fn broken_by(by: Option<&Value>) -> Option<String> {
    by.map(text).filter(|b| !b.is_empty())
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Builds a LockInfo from a PTTL reply and a lease value (see `scripts.rs`).
pub(crate) fn lock_info(name: &str, ttl: Option<&Value>, lease: Option<&Value>) -> LockInfo {
    let v = kinds::parse_lease(&lease.map(text).unwrap_or_default());
    LockInfo {
        name: if v.name.is_empty() {
            name.to_string()
        } else {
            v.name
        },
        holder: v.holder,
        token_id: token_id(&v.token),
        fence: v.fence.max(0) as u64,
        acquired_at_us: v.acquired_us,
        ttl: Duration::from_millis(int(ttl).unwrap_or(0).max(0) as u64),
        mode: super::Mode::Exclusive,
        slots: 1,
        slot: None,
        queued: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_keep_newlines_in_the_command() {
        let v = Value::BulkString(
            b"0123abcd\n42\n1700000000000001\nvm\n7\nroot\njob\nsh -c 'a\nb'".to_vec(),
        );
        let i = lock_info("fallback", Some(&Value::Int(1500)), Some(&v));
        assert_eq!(i.name, "job");
        assert_eq!(i.fence, 42);
        assert_eq!(i.acquired_at_us, 1_700_000_000_000_001);
        assert_eq!((i.holder.host.as_str(), i.holder.pid), ("vm", 7));
        assert_eq!(i.holder.command, "sh -c 'a\nb'");
        assert_eq!(i.ttl, Duration::from_millis(1500));
        assert_eq!(lock_info("x", None, None).name, "x");
    }
}
