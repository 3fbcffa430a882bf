//! Redlock: one lock over N independent Redis servers (odd N ≥ 3), as the
//! Redis distributed-locks page describes it. Every request goes to all
//! nodes at once with a short per-node timeout and the same token; a lock
//! is granted only when a majority took it within the lease, and for what
//! is left of the lease after the time that took and the clock drift
//! allowed for. A failed attempt is undone on every node; a renewal counts
//! only with a majority, and a node of the majority that answers "not
//! yours" (it lost the key in a restart, go-redsync#186) ends the lease
//! there and then, so that `exec` stops its command.
//!
//! Each node stores what a lone Redis would (the Redis backend's keys and
//! scripts), so `status` reads the same values on every node.
//!
//! Fences: the largest counter over the nodes that granted is not enough,
//! since a later majority may miss the node that had it; so the fence
//! agreed on is written back (`counter = max(counter, fence)`) to a
//! majority before it is handed out. Any later majority shares a node with
//! that one and starts above it. Each node also starts at its clock in µs
//! (the Redis backend's rule), so nodes that lost their data still hand out
//! larger fences while the clocks agree to within the time between grants.
//!
//! Lock kinds (--shared, --slots, --fair) are not offered: their state is a
//! compare-and-set over several keys, which no majority of independent
//! servers can apply atomically.

mod breaks;
mod changes;
mod node;
mod quorum;
mod scripts;
mod waiter;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use redis::Value;

use super::redis::scripts::{key, ACQUIRE_LUA, FORCE_LUA, RELEASE_LUA};
use super::redis::{broken_by, int, lock_info, text, topo, BATON_TTL_MS};
use super::{
    Acquire, Backend, Capabilities, Check, Config, Grant, Kind, Location, LockInfo, Request, Url,
    Waiter,
};
use crate::error::{fail, UNAVAILABLE, USAGE};
use crate::holder::Holder;
use node::{on_all, Node};
use quorum::{majority, majority_ttl, Verdict};
use scripts::{EXTEND_LUA, UNDO_LUA, WRITE_BACK_LUA};

pub use crate::backend::forms::REDLOCK as FORM;

/// The per-node timeout when no lease says better (a release, a status).
const NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest per-node timeout, whatever the lease.
const MIN_NODE_TIMEOUT: Duration = Duration::from_millis(50);

pub struct RedlockBackend {
    nodes: Arc<Vec<Node>>,
    prefix: String,
    /// The bound of every request (--connect-timeout, or less near a deadline).
    timeout: Duration,
}

/// A node that granted an acquisition: the fence it proposes, its clock,
/// and whether the token held the lease there already.
struct Took {
    fence: i64,
    now_us: i64,
    extended: bool,
}

/// Opens `redlock://`.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = RedlockBackend::open(url, cfg)?;
    Ok((Box::new(b), url.location("redlock")))
}

impl RedlockBackend {
    fn open(m: &Url, cfg: &Config) -> Result<RedlockBackend> {
        let shown = m.shown();
        let bad = |why: String| {
            fail(
                USAGE,
                format!("invalid URL '{shown}': {why}; expected {FORM}"),
            )
        };
        if let Some(k) = m.unknown_param(&[]) {
            return Err(bad(format!("unknown parameter '{k}'")));
        }
        let n = m.hosts.len();
        if n < 3 || n.is_multiple_of(2) {
            return Err(bad(format!(
                "Redlock needs an odd number of servers, at least 3, and this URL names {n}"
            )));
        }
        let mut seen = m.hosts.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != n {
            return Err(bad("a server is named twice".into()));
        }
        if let Some((i, j, at)) = node::same_address(&m.hosts) {
            let spell = |(h, p): &(String, u16)| match h.contains(':') {
                true => format!("[{h}]:{p}"),
                false => format!("{h}:{p}"),
            };
            return Err(bad(format!(
                "'{}' and '{}' are the same server (both reach {at})",
                spell(&m.hosts[i]),
                spell(&m.hosts[j])
            )));
        }
        let db = match m.segments().as_slice() {
            [] => 0,
            [d] => d
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad(format!("'{d}' is not a database number")))?,
            _ => return Err(bad("the path has more than a database number".into())),
        };
        let timeout = cfg.timeout.min(NODE_TIMEOUT);
        let nodes = m
            .hosts
            .iter()
            .map(|(h, p)| {
                let client =
                    topo::client_for(&m.node_url(h, *p, db)).map_err(|e| bad(e.to_string()))?;
                Ok(Node::new(client, format!("{h}:{p}"), shown, timeout))
            })
            .collect::<Result<Vec<Node>>>()?;
        Ok(RedlockBackend {
            nodes: Arc::new(nodes),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
        })
    }

    fn keys(&self, name: &str, whats: &[&str]) -> Vec<String> {
        whats.iter().map(|w| key(&self.prefix, name, w)).collect()
    }

    fn quorum(&self) -> usize {
        majority(self.nodes.len())
    }

    /// A request to every node whose answers count toward a majority: each
    /// node's server is identified first (once per connection), and nodes
    /// that turn out to be one server refuse the whole request.
    fn fan<T: Send>(&self, f: impl Fn(usize, &Node) -> Result<T> + Sync) -> Result<Vec<Result<T>>> {
        // At start-up, before anything is taken (a reconnect is caught
        // after); a node that failed then is not asked twice.
        let mut failed: Vec<Option<anyhow::Error>> = Vec::new();
        if self.nodes.iter().any(|n| !n.identified()) {
            failed = on_all(&self.nodes, |_, n| n.identify())
                .into_iter()
                .map(Result::err)
                .collect();
            node::distinct(&self.nodes)?;
        }
        let failed = std::sync::Mutex::new(failed);
        let replies = on_all(&self.nodes, |i, n| {
            let early = failed.lock().ok().and_then(|mut f| f.get_mut(i)?.take());
            if let Some(e) = early {
                return Err(e);
            }
            n.identify()?;
            f(i, n)
        });
        node::distinct(&self.nodes)?;
        Ok(replies)
    }

    /// Sets every node's timeout for a request about a lease of `lease`: a
    /// twentieth of it (as redsync does), so that a dead node costs little
    /// of the validity.
    fn bound(&self, lease: Option<Duration>) {
        let t = lease.map_or(NODE_TIMEOUT, |l| (l / 20).max(MIN_NODE_TIMEOUT));
        let t = t.min(self.timeout).max(Duration::from_millis(1));
        for n in self.nodes.iter() {
            n.link.set_timeout(t);
        }
    }

    /// Removes the token's lease wherever a failed attempt left it.
    fn undo(&self, name: &str, token: &str) {
        let keys = self.keys(name, &["lease"]);
        let _ = on_all(&self.nodes, |_, n| n.eval(&UNDO_LUA, &keys, &[token]));
    }

    /// Fewer than a majority answered: one line naming the first failure.
    fn too_few(&self, what: &str, answered: usize, errors: &[anyhow::Error]) -> anyhow::Error {
        let first = errors
            .first()
            .map(|e| format!(" ({e:#})"))
            .unwrap_or_default();
        fail(
            UNAVAILABLE,
            format!(
                "{what} reached only {answered} of {} Redis servers{first}; Redlock needs {}",
                self.nodes.len(),
                self.quorum()
            ),
        )
    }

    /// The lock as another token holds it, for a busy answer: its TTL is
    /// how long it keeps a majority, or a random pause after a split vote.
    fn busy(&self, name: &str, others: &[(String, i64, String)]) -> Acquire {
        let info = quorum::strongest(others).map(|(tok, ttls)| {
            let value = &others.iter().find(|(t, _, _)| t == tok).expect("seen").2;
            let ttl =
                majority_ttl(&ttls, self.quorum()).unwrap_or(quorum::backoff().as_millis() as i64);
            lock_info(
                name,
                Some(&Value::Int(ttl)),
                Some(&Value::BulkString(value.clone().into_bytes())),
            )
        });
        Acquire::Busy(info)
    }

    /// After a majority took the lock: agree on the fence and write it back
    /// to a majority, then grant what is left of the lease.
    fn commit(&self, req: &Request, start: Instant, mine: &[Took]) -> Result<Acquire> {
        let q = self.quorum();
        let (mut fence, mut now_us, mut extended) = (0, 0, 0);
        for t in mine {
            now_us = now_us.max(t.now_us);
            extended += usize::from(t.extended);
        }
        // A token that held a majority keeps its fence; else the largest wins.
        let held = extended >= q;
        for t in mine.iter().filter(|t| t.extended || !held) {
            fence = fence.max(t.fence);
        }
        if extended < mine.len() {
            let keys = self.keys(req.name, &["lease", "fence"]);
            let f = fence.to_string();
            let acks = on_all(&self.nodes, |_, n| {
                n.eval(&WRITE_BACK_LUA, &keys, &[req.token, &f])
            });
            let (ok, errors): (Vec<_>, Vec<_>) = acks.into_iter().partition(|r| r.is_ok());
            if ok.len() < q && !held {
                self.undo(req.name, req.token);
                let errors: Vec<anyhow::Error> =
                    errors.into_iter().filter_map(|r| r.err()).collect();
                return Err(self.too_few("the fence", ok.len(), &errors));
            }
        }
        let elapsed = start.elapsed();
        let Some(lease) = quorum::validity(req.lease, elapsed) else {
            if !held {
                self.undo(req.name, req.token);
            }
            return Err(fail(
                UNAVAILABLE,
                format!(
                    "reaching a majority of the Redis servers took {}, which leaves nothing of the {} lease; use a longer --lease",
                    crate::duration::format(elapsed),
                    crate::duration::format(req.lease)
                ),
            ));
        };
        Ok(Acquire::Acquired(Grant {
            fence: fence.max(0) as u64,
            server_now_us: now_us,
            extended: held,
            lease,
            slot: None,
        }))
    }
}

/// The token of a lease value (its first line).
fn token_of(value: &str) -> String {
    value.split('\n').next().unwrap_or_default().to_string()
}

impl Backend for RedlockBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        if req.kind != Kind::MUTEX {
            return Err(fail(
                USAGE,
                "the redlock backend does not support --shared, --slots or --fair",
            ));
        }
        self.bound(Some(req.lease));
        let keys = self.keys(req.name, &["lease", "fence", "state"]);
        let ms = req.lease.as_millis().max(1).to_string();
        let h = req.holder;
        let about = format!(
            "{}\n{}\n{}\n{}\n{}",
            h.host, h.pid, h.user, req.name, h.command
        );
        let start = Instant::now();
        let replies = self
            .fan(|_, n| n.eval(&ACQUIRE_LUA, &keys, &[req.token, &ms, &about]))
            .inspect_err(|_| self.undo(req.name, req.token))?;
        let (mut mine, mut others, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for r in replies {
            match r {
                Ok(items) if int(items.first()) == Some(1) => mine.push(Took {
                    fence: int(items.get(1)).unwrap_or(0),
                    now_us: int(items.get(2)).unwrap_or(0),
                    extended: int(items.get(3)) == Some(1),
                }),
                Ok(items) => {
                    let value = items.get(2).map(text).unwrap_or_default();
                    let ttl = int(items.get(1)).unwrap_or(0);
                    others.push((token_of(&value), ttl, value));
                }
                Err(e) => errors.push(e),
            }
        }
        let q = self.quorum();
        if mine.len() >= q {
            return self.commit(req, start, &mine);
        }
        if !mine.is_empty() || !errors.is_empty() {
            self.undo(req.name, req.token);
        }
        if mine.len() + errors.len() >= q {
            return Err(self.too_few("the acquisition", mine.len() + others.len(), &errors));
        }
        Ok(self.busy(req.name, &others))
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        self.bound(Some(lease));
        let keys = self.keys(name, &["lease", "broken"]);
        let ms = lease.as_millis().max(1).to_string();
        let replies = self.fan(|_, n| n.eval(&EXTEND_LUA, &keys, &[token, &ms]))?;
        let (mut value, mut by, mut missing) = (None, None, Vec::new());
        let (mut extended, mut errors, mut others) = (0, Vec::new(), Vec::new());
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                Ok(items) => match int(items.first()) {
                    Some(1) => {
                        extended += 1;
                        value = items.get(1).map(text);
                    }
                    Some(2) => {
                        let v = items.get(2).map(text).unwrap_or_default();
                        others.push((token_of(&v), int(items.get(1)).unwrap_or(0), v));
                        by = by.or(broken_by(items.get(3)));
                    }
                    _ => match broken_by(items.get(1)) {
                        Some(b) => by = Some(b),
                        None => missing.push(i),
                    },
                },
                Err(e) => errors.push(e),
            }
        }
        let refused = self.nodes.len() - extended - errors.len();
        match quorum::verdict(extended, errors.len(), refused, self.nodes.len()) {
            Verdict::Held => {
                if let Some(v) = value.filter(|_| !missing.is_empty()) {
                    self.heal(name, &v, &ms, &missing);
                }
                Ok(Check::Done)
            }
            Verdict::Unsure => Err(self.too_few("the renewal", extended + refused, &errors)),
            Verdict::Lost => Ok(self.not_ours(name, by, &others)),
        }
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        self.bound(None);
        let keys = self.keys(name, &["lease", "wake", "broken", "state"]);
        let replies = self.fan(|_, n| n.eval(&RELEASE_LUA, &keys, &[token, BATON_TTL_MS]))?;
        let (mut released, mut by, mut others, mut errors) = (0, None, Vec::new(), Vec::new());
        for r in replies {
            match r {
                Ok(items) => match int(items.first()) {
                    Some(1) => released += 1,
                    Some(2) => {
                        let v = items.get(2).map(text).unwrap_or_default();
                        others.push((token_of(&v), int(items.get(1)).unwrap_or(0), v));
                        by = by.or(broken_by(items.get(3)));
                    }
                    _ => by = by.or(broken_by(items.get(1))),
                },
                Err(e) => errors.push(e),
            }
        }
        if released > 0 {
            return Ok(Check::Done);
        }
        // Nothing released, and too few answered to say it is not held.
        if self.nodes.len() - errors.len() < self.quorum() {
            return Err(self.too_few("the release", self.nodes.len() - errors.len(), &errors));
        }
        Ok(self.not_ours(name, by, &others))
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        let id = only.unwrap_or_default();
        let chars = id.chars().count();
        if only.is_some() && (chars == 0 || chars > 8) {
            return Ok(Vec::new());
        }
        self.bound(None);
        let keys = self.keys(name, &["lease", "wake", "broken", "state"]);
        let me = Holder::new(std::process::id(), String::new());
        let by = format!("{}@{} (pid {})", me.user, me.host, me.pid);
        let full = if chars == 8 { "1" } else { "0" };
        let args = [BATON_TTL_MS, by.as_str(), keys[2].as_str(), id, full];
        let replies = self.fan(|_, n| n.eval(&FORCE_LUA, &keys, &args))?;
        let mut broken: Vec<LockInfo> = Vec::new();
        let mut errors = Vec::new();
        for r in replies {
            match r {
                Ok(items) if int(items.first()) == Some(1) => {
                    let i = lock_info(name, items.get(1), items.get(2));
                    match broken.iter_mut().find(|b| b.token_id == i.token_id) {
                        Some(b) => b.fence = b.fence.max(i.fence),
                        None => broken.push(i),
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        if broken.is_empty() && self.nodes.len() - errors.len() < self.quorum() {
            return Err(self.too_few("the release", self.nodes.len() - errors.len(), &errors));
        }
        Ok(broken)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        self.bound(None);
        let names = match names {
            Some(n) => n.to_vec(),
            None => status::names(self)?,
        };
        status::of(self, &names)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::MUTEX
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        let baton = key(&self.prefix, name, "wake");
        let t = self.timeout.min(NODE_TIMEOUT);
        Ok(Box::new(waiter::NodeBatons::start(
            Arc::clone(&self.nodes),
            baton,
            t,
        )))
    }

    fn reconnect(&mut self) -> Result<()> {
        for n in self.nodes.iter() {
            n.link.disconnect();
        }
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout.max(Duration::from_millis(1));
        Ok(())
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        breaks::watch(self, name, token, on_break);
    }

    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        Ok(Some(Box::new(changes::subscribe(self, names)?)))
    }

    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        Ok(changes::broken_by(self, name, token_id))
    }
}

mod answers;
mod status;
