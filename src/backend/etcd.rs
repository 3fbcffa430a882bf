//! etcd backend: every request is a key with a lease of its own, the queue
//! is the keys' create-revision order, and the fence is the holder key's
//! create revision.
//!
//! Layout: a request of token T for lock NAME under prefix P is the key
//! `P/NAME/T` (see `keys.rs`), whose JSON value says whether it holds or
//! waits, its kind, slot and holder. A name's keys sorted by create
//! revision are its queue; the lock kinds' rules (`kinds.rs`) read them as
//! holders and tickets, so that --shared, --slots and the mismatch errors
//! behave as on every backend. On etcd every waiter queues, so waiting is
//! always first come, first served (`--fair` changes nothing).
//!
//! One lease per request: granted first, with the TTL asked for, and the
//! request's key lives under it while it waits and while it holds. Raft
//! writes per acquisition (each lease grant, revoke and put is one): the
//! grant, one transaction that takes a free lock or else joins the queue,
//! for a waiter one put of its grant (Put keeps the create revision, so the
//! place and the fence), and the revoke that releases it: 3 uncontended, 4
//! after a wait, as etcd's own `concurrency.Mutex`.
//!
//! Taking: a request decides from the queue (`queue.rs`) and takes the lock
//! with a write guarded on what it read. A request goes only when no waiter
//! is ahead of it, so grants follow create-revision order and every fence
//! is greater than all earlier ones for the name, across leader changes
//! (revisions are the cluster's, replicated by Raft).
//!
//! Waiting: a waiter watches only the key just ahead of it (a mutex waiter
//! only for its deletion; for the other kinds that waiter's grant may let it
//! go too), or, when only holders are ahead, the deletions under the name;
//! each watch starts at the revision after the read it decided on, so no
//! release is missed, and nothing polls the queue (`wait.rs`). It keeps its
//! lease alive every second and looks up the lease of the waiter just
//! ahead: one that has sent no keep-alive for over 2 s (SIGKILLed, cut off)
//! has its key dropped while it still waits, so the queue moves on long
//! before that lease would run out. A stopping signal cancels the wait (the
//! caller, `lease::acquire`, owns signals and exits): the request leaves the
//! queue and returns Busy. A failure ends the call with an error; the caller
//! backs off and calls again, and the next call takes over the lease and
//! place that this one kept (`take::Kept`).
//!
//! Leases: the lease is a cluster object with an ID, found from the key
//! (`P/NAME/T` carries it), so `renew` and `release --token` work from any
//! process: renew is a keep-alive of that lease, then a linearizable read of
//! the key (a leader cut off from the majority still answers keep-alives in
//! etcd 3.4, not reads), or a new lease for another length; release reads
//! the name and revokes the lease, which deletes the key. etcd counts TTLs
//! in whole seconds and raises short ones to its minimum (2 s by default);
//! the TTL it granted is the lease dlock's renewal deadline counts from.

mod breaks;
mod changes;
mod keys;
mod leases;
mod link;
mod queue;
mod rpc;
mod status;
mod take;
mod url;
mod wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use crate::backend::kinds;
use crate::cancel::Cancel;
use crate::error::{fail, INTERNAL};
use keys::Node;
use link::Link;
use rpc::{Compare, CompareResult, RequestOp, Txn};
use take::{by_create, nodes_of, ttl_secs, Kept, Step, Taking};

pub struct EtcdBackend {
    link: Arc<Link>,
    prefix: String,
    /// The last grant made (or renewed) by this process, so that its
    /// renewals need no lookup and a watch for its breaking can start right
    /// after it.
    mine: Option<Mine>,
    /// What a request cut short by a failure kept for its next try.
    kept: Option<Kept>,
}

struct Mine {
    name: String,
    token: String,
    lease: i64,
    /// The revision of the grant.
    rev: i64,
    /// The TTL of the lease in seconds, as asked and as granted.
    ttls: [i64; 2],
}

/// Opens `etcd://` or `etcds://`.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let target = url::target(url)?;
    let link = Link::new(&target, url.shown().to_string(), cfg.timeout)?;
    let b = EtcdBackend {
        link: Arc::new(link),
        prefix: cfg.prefix.clone(),
        mine: None,
        kept: None,
    };
    Ok((Box::new(b), url.location("etcd")))
}

impl EtcdBackend {
    fn key(&self, name: &str, token: &str) -> String {
        keys::key(&self.prefix, name, token)
    }

    fn read(&self, range: &str) -> Result<take::View> {
        let (range, prefix) = (range.to_string(), self.prefix.clone());
        self.link.call("a read", move |mut c| {
            let (range, prefix) = (range.clone(), prefix.clone());
            async move {
                let r = c.range(by_create(range)).await?;
                Ok(take::View {
                    nodes: nodes_of(&prefix, &r.kvs),
                    rev: r.revision(),
                })
            }
        })
    }

    /// One acquisition: attempts until granted, or busy at the deadline or
    /// at the caller's cancel. A failure ends it with the error, keeping
    /// the request's leases and place for the caller's next call.
    fn take(
        &mut self,
        req: &Request,
        deadline: Option<Instant>,
        cancel: &Cancel,
    ) -> Result<(Acquire, Instant)> {
        let mut t = Taking::new(Arc::clone(&self.link), &self.prefix, req, cancel);
        if let Some(k) = self.kept.take() {
            t.resume(k);
        }
        let attempt = (|| {
            let waiting = deadline.is_none_or(|d| d > Instant::now());
            let mut step = t.first_try(waiting)?;
            loop {
                match step {
                    Step::Done(a, sent) => return Ok((a, sent)),
                    Step::Again(v) => step = t.decide(v, deadline)?,
                }
            }
        })();
        match &attempt {
            Ok((Acquire::Acquired(g), _)) => {
                if let Some((lease, rev)) = t.holding {
                    self.mine = Some(Mine {
                        name: req.name.into(),
                        token: req.token.into(),
                        lease,
                        rev,
                        ttls: [ttl_secs(req.lease), ttl_secs(g.lease)],
                    });
                }
            }
            Ok(_) => {}
            Err(_) => {
                let kept = t.keep();
                if kept.holds_nothing() {
                    // No lease, so no key: this call left nothing on the server.
                    return attempt.map_err(crate::error::mark_unsent);
                }
                self.kept = Some(kept);
            }
        }
        attempt
    }

    /// The answer for a token that holds nothing on `name` by the kinds'
    /// rules (a renewal's: a release decides from what it deleted).
    fn not_mine(&self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let v = self.read(&keys::of_name(&self.prefix, name))?;
        let mut st = keys::state(&v.nodes);
        let (check, _) = kinds::plan_renew(0, &mut st, name, token, lease);
        Ok(self.refusal(name, token, &v.nodes, check))
    }

    /// A refusal naming the other holder gets that holder's time left, and
    /// one of a token whose lease was broken says who broke it.
    fn refusal(&self, name: &str, token: &str, nodes: &[Node], check: Check) -> Check {
        let check = match check {
            Check::HeldByOther(i) => Check::HeldByOther(status::with_ttl(&self.link, nodes, i)),
            Check::Done => return Check::Done,
            other => other,
        };
        // Best effort: the refusal stands without it.
        let by = breaks::by_token(&self.link, &self.prefix, name, token);
        super::engine::with_breaker(check, by.ok().flatten())
    }

    /// `token`'s key on `name`, read now.
    fn get_mine(&self, name: &str, token: &str) -> Result<Option<Node>> {
        let key = self.key(name, token);
        let prefix = self.prefix.clone();
        self.link.call("a read", move |mut c| {
            let (key, prefix) = (key.clone(), prefix.clone());
            async move {
                let r = c.range(rpc::RangeRequest::key(key)).await?;
                Ok(nodes_of(&prefix, &r.kvs).into_iter().next())
            }
        })
    }

    /// A keep-alive of lease `id`: true while it lives.
    fn keep_alive(&self, id: i64) -> Result<bool> {
        self.link.call("a renewal", move |mut c| async move {
            keep_alive_once(&mut c, id).await
        })
    }

    /// Moves `n` to a new lease of `ttl` seconds (a renewal of another length).
    fn relet(&self, n: &Node, ttl: i64) -> Result<bool> {
        let lease = leases::grant(&self.link, ttl)?;
        let mut e = n.entry.clone();
        (e.ask, e.ttl) = (ttl, lease.granted);
        let key = String::from_utf8_lossy(&n.key).into_owned();
        let txn = Txn::default()
            .when([Compare::modified(
                key.as_str(),
                CompareResult::Equal,
                n.mod_rev,
            )])
            .and_then([RequestOp::put(key.as_str(), e.encode(), lease.id)]);
        let r = self.link.call("a renewal", |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })?;
        let old = if r.succeeded { n.lease } else { lease.id };
        leases::revoke(&self.link, old);
        Ok(r.succeeded)
    }
}

/// One keep-alive of lease `id`: true while it lives. (Opening the stream
/// sends one and reads its answer; a lease that is gone is an error there.)
pub(super) async fn keep_alive_once(c: &mut rpc::Client, id: i64) -> Result<bool, rpc::Error> {
    match c.lease_keep_alive(id).await {
        Ok(_) => Ok(true),
        Err(rpc::Error::LeaseGone) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Backend for EtcdBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let no_cancel = Cancel::new();
        self.take(req, Some(Instant::now()), &no_cancel)
            .map(|(a, _)| a)
    }

    fn acquire_waiting(
        &mut self,
        req: &Request,
        deadline: Option<Instant>,
        cancel: &Cancel,
    ) -> Option<Result<(Acquire, Instant)>> {
        Some(self.take(req, deadline, cancel))
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let ttl = ttl_secs(lease);
        let known = self
            .mine
            .as_ref()
            .filter(|m| m.name == name && m.token == token && m.ttls.contains(&ttl))
            .map(|m| m.lease);
        let id = match known {
            Some(id) => Some(id),
            None => match self.get_mine(name, token)? {
                Some(n) if n.entry.held && n.entry.renews_as(ttl) => Some(n.lease),
                Some(n) if n.entry.held => {
                    // Another length: the key moves to a new lease.
                    self.mine = None;
                    if self.relet(&n, ttl)? {
                        return Ok(Check::Done);
                    }
                    None
                }
                _ => None,
            },
        };
        if let Some(id) = id {
            // The keep-alive, then a linearizable read of the key: the read
            // proves that the member that renewed still leads (etcd 3.4 lets
            // a leader cut off from the majority renew until it steps down)
            // and that the key is still this token's.
            if self.keep_alive(id)? {
                let mine = self.get_mine(name, token)?;
                if let Some(n) = mine.filter(|n| n.entry.held && n.lease == id) {
                    let rev = self.mine.as_ref().map_or(n.mod_rev, |m| m.rev);
                    self.mine = Some(Mine {
                        name: name.into(),
                        token: token.into(),
                        lease: id,
                        rev,
                        ttls: [n.entry.ask, n.entry.ttl],
                    });
                    return Ok(Check::Done);
                }
            }
        }
        self.not_mine(name, token, lease)
    }

    /// A read of the name, then the revoke of the token's lease, which
    /// takes its key with it (one write; a request's lease holds no other key).
    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let nodes = self.read(&keys::of_name(&self.prefix, name))?.nodes;
        // The key's lease, and the one a request given up on had kept.
        let mut leases: Vec<i64> = self
            .kept
            .take_if(|k| k.name == name && k.token == token)
            .map(|k| k.leases().collect())
            .unwrap_or_default();
        leases.extend(nodes.iter().filter(|n| n.token == token).map(|n| n.lease));
        leases.sort_unstable();
        leases.dedup();
        for id in leases.into_iter().filter(|id| *id != 0) {
            leases::revoke_sure(&self.link, id)?;
        }
        if nodes.iter().any(|n| n.token == token && n.lease == 0) {
            // Not dlock's way, but a key without a lease goes too.
            let key = self.key(name, token);
            self.link.call("a release", |mut c| {
                let k = key.clone();
                async move { c.delete(k).await }
            })?;
        }
        // The plan decides from the name as it was: what is left, and what went.
        let mut st = keys::state(&nodes);
        let (check, _) = kinds::plan_release(0, &mut st, name, token);
        Ok(self.refusal(name, token, &nodes, check))
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        let range = keys::of_name(&self.prefix, name);
        let by = super::engine::breaker();
        for _ in 0..super::engine::MAX_RACES {
            let v = self.read(&range)?;
            let mut st = keys::state(&v.nodes);
            let (broken, _) = kinds::plan_force(0, &mut st, name, only);
            let victims: Vec<&Node> = v
                .nodes
                .iter()
                .filter(|n| n.entry.held && broken.iter().any(|b| b.fence == n.create_rev as u64))
                .collect();
            if victims.is_empty() {
                return Ok(Vec::new());
            }
            let broken: Vec<LockInfo> = broken
                .into_iter()
                .map(|i| status::with_ttl(&self.link, &v.nodes, i))
                .collect();
            let unchanged: Vec<Compare> = victims
                .iter()
                .map(|n| Compare::modified(n.key.clone(), CompareResult::Equal, n.mod_rev))
                .collect();
            let mut ops: Vec<RequestOp> = victims
                .iter()
                .map(|n| RequestOp::delete(n.key.clone(), false))
                .collect();
            // Who broke them, in the same write: a watcher that sees a key go reads it.
            let lease = breaks::lease_for(&self.link, &broken);
            if let Some(l) = &lease {
                let tokens = victims.iter().map(|n| n.token.as_str());
                ops.extend(breaks::puts(&self.prefix, name, tokens, &by, l));
            }
            let txn = Txn::default().when(unchanged).and_then(ops);
            let r = self.link.call("a forced release", |mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })?;
            if r.succeeded {
                for n in victims {
                    leases::revoke(&self.link, n.lease);
                }
                return Ok(broken);
            }
            if let Some(l) = lease {
                leases::revoke(&self.link, l.id);
            }
        }
        // The give-up of every backend, in its words.
        Err(super::engine::gave_up(name))
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        let mut nodes = Vec::new();
        match names {
            Some(names) => {
                for n in names {
                    nodes.extend(self.read(&keys::of_name(&self.prefix, n))?.nodes);
                }
            }
            None => nodes = self.read(&keys::all(&self.prefix))?.nodes,
        }
        status::infos(&self.link, nodes)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    /// Never asked for: this backend takes every wait in `acquire_waiting`,
    /// where a waiter watches the key ahead of it in the queue.
    fn waiter(&mut self, _name: &str) -> Result<Box<dyn Waiter>> {
        Err(fail(
            INTERNAL,
            "the etcd backend waits in its queue, not on a release notice",
        ))
    }

    fn reconnect(&mut self) -> Result<()> {
        // A failed request has moved on to the next member already.
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.link.set_timeout(timeout);
        Ok(())
    }

    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        let n = changes::subscribe(Arc::clone(&self.link), &self.prefix, names)?;
        Ok(Some(Box::new(n)))
    }

    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        breaks::by_id(&self.link, &self.prefix, name, token_id)
    }

    /// etcd counts a lease's time left in whole seconds.
    fn ttl_grain(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        let Some(rev) = self
            .mine
            .as_ref()
            .filter(|m| m.name == name && m.token == token)
            .map(|m| m.rev)
        else {
            return;
        };
        status::watch_breaks(
            Arc::clone(&self.link),
            self.key(name, token),
            rev,
            name.to_string(),
            on_break,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{code_of, USAGE};

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(400)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(30)), 30);
        assert_eq!(ttl_secs(Duration::from_millis(30_001)), 31);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }

    #[test]
    fn a_bad_url_is_a_usage_error_before_any_connection() {
        let cfg = Config {
            url: None,
            prefix: "dlock".into(),
            timeout: Duration::from_secs(1),
        };
        let url = crate::backend::parse_url("etcd://a?cert=/c.pem").unwrap();
        let e = open(&url, &cfg).err().unwrap();
        assert_eq!(code_of(&e), USAGE);
    }
}
