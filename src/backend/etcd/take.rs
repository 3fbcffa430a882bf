//! Taking a lock, waiting included: see the module comment of `etcd.rs`
//! for the design. One [`Taking`] is one `acquire`/`exec` call's request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::keys::{self, Entry, Node};
use super::leases::{grant, revoke, Lease};
use super::link::Link;
use super::queue::{self, Behind, Decision};
use super::rpc::{
    Compare, CompareResult, KeyValue, RangeRequest, RequestOp, Response, Txn, TxnResponse,
    WatchCreateRequest,
};
use super::wait::{watch_until, Target};
use crate::backend::{Acquire, Grant, Request};
use crate::cancel::Cancel;

/// A waiter's key lives under a lease this long, kept alive every
/// `kinds::TICKET_REFRESH`: a waiter killed with SIGKILL leaves the queue within it.
pub const WAITER_TTL: i64 = 3;

/// One read of a name's keys.
pub struct View {
    pub nodes: Vec<Node>,
    /// The store's revision at the read: a watch from the next one misses nothing.
    pub rev: i64,
}

pub struct Taking<'a> {
    pub link: Arc<Link>,
    pub prefix: String,
    req: &'a Request<'a>,
    /// Fired by the caller (a stopping signal): the wait returns, leaving the queue.
    cancel: &'a Cancel,
    key: String,
    name_range: String,
    /// The TTL asked for, in whole seconds.
    ttl: i64,
    /// The holder lease, granted before the first try and again after a wait.
    lease: Option<Lease>,
    /// The waiter lease, while this request waits in the queue.
    waiter: Option<i64>,
    /// This request has a key in the queue.
    pub queued: bool,
    /// After a grant: the holder lease and the revision of the granting write.
    pub holding: Option<(i64, i64)>,
}

/// What a request cut short by a failure leaves for the caller's next try
/// with the same request: its leases and its place in the queue.
pub struct Kept {
    pub name: String,
    pub token: String,
    lease: Option<Lease>,
    waiter: Option<i64>,
    queued: bool,
}

impl Kept {
    /// The leases, for a release that gives up on the request.
    pub fn leases(&self) -> impl Iterator<Item = i64> {
        self.waiter.into_iter().chain(self.lease.map(|l| l.id))
    }

    /// No lease and no place: every key is put under a lease, so the request
    /// that kept this holds nothing on the server.
    pub fn holds_nothing(&self) -> bool {
        self.lease.is_none() && self.waiter.is_none() && !self.queued
    }
}

/// What an attempt came to.
pub enum Step {
    Done(Acquire, Instant),
    /// A guarded write lost a race: decide again from this read.
    Again(View),
}

pub fn ttl_secs(d: Duration) -> i64 {
    (d.as_nanos().div_ceil(1_000_000_000) as i64).max(1)
}

/// The nodes of a range read (keys that are not dlock's are skipped).
pub fn nodes_of(prefix: &str, kvs: &[KeyValue]) -> Vec<Node> {
    kvs.iter()
        .filter_map(|kv| {
            keys::node(
                prefix,
                &kv.key,
                &kv.value,
                (kv.create_revision, kv.mod_revision),
                kv.lease,
            )
        })
        .collect()
}

/// The revision a response was answered at.
fn rev_of(r: &TxnResponse) -> i64 {
    r.revision()
}

/// The view in the last range response of a transaction.
fn view_of(prefix: &str, r: &TxnResponse) -> View {
    let mut nodes = Vec::new();
    for op in &r.responses {
        if let Some(Response::Range(g)) = &op.response {
            nodes = nodes_of(prefix, &g.kvs);
        }
    }
    View {
        nodes,
        rev: rev_of(r),
    }
}

/// A read of every key under `range`, in create-revision order: a name's queue.
pub fn by_create(range: impl Into<Vec<u8>>) -> RangeRequest {
    RangeRequest::prefix_by_create(range)
}

impl<'a> Taking<'a> {
    pub fn new(
        link: Arc<Link>,
        prefix: &str,
        req: &'a Request<'a>,
        cancel: &'a Cancel,
    ) -> Taking<'a> {
        Taking {
            link,
            prefix: prefix.to_string(),
            req,
            cancel,
            key: keys::key(prefix, req.name, req.token),
            name_range: keys::of_name(prefix, req.name),
            ttl: ttl_secs(req.lease),
            lease: None,
            waiter: None,
            queued: false,
            holding: None,
        }
    }

    /// Takes over what the same request's last try left (see [`Kept`]).
    pub fn resume(&mut self, kept: Kept) {
        if kept.name == self.req.name && kept.token == self.req.token {
            (self.lease, self.waiter, self.queued) = (kept.lease, kept.waiter, kept.queued);
        }
    }

    /// What this request holds for a next try after a failure.
    pub fn keep(&self) -> Kept {
        Kept {
            name: self.req.name.to_string(),
            token: self.req.token.to_string(),
            lease: self.lease,
            waiter: self.waiter,
            queued: self.queued,
        }
    }

    /// A holder lease recent enough that the grant it backs leaves the
    /// keeper most of it: one older than a third of its TTL gets a
    /// keep-alive first (no write on the cluster), a new one if it is gone.
    fn fresh_lease(&mut self) -> Result<Lease> {
        if let Some(mut l) = self.lease {
            if l.sent.elapsed() < Duration::from_secs(l.granted as u64) / 3 {
                return Ok(l);
            }
            let sent = Instant::now();
            let id = l.id;
            let alive = self.link.call("a keep-alive", move |mut c| async move {
                super::keep_alive_once(&mut c, id).await
            })?;
            if alive {
                l.sent = sent;
                self.lease = Some(l);
                return Ok(l);
            }
            self.lease = None;
        }
        let l = grant(&self.link, self.ttl)?;
        self.lease = Some(l);
        Ok(l)
    }

    fn mine<'v>(&self, v: &'v View) -> Option<&'v Node> {
        v.nodes.iter().find(|n| n.token == self.req.token)
    }

    /// The value of this request's key; a holder's records its lease's TTLs.
    fn entry(&self, held: bool, slot: u32, granted: i64) -> Vec<u8> {
        let ttls = (self.ttl, granted);
        Entry::new(held, &self.req.kind, slot, self.req.holder, ttls).encode()
    }

    fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.link.call(what, |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
    }

    /// The free-lock fast path in one transaction: take it if nobody is
    /// queued for the name, else read the queue.
    pub fn first_try(&mut self) -> Result<Step> {
        let lease = self.fresh_lease()?;
        let txn = Txn::default()
            .when([
                Compare::created(self.key.as_str(), CompareResult::Equal, 0),
                Compare::created(self.name_range.as_str(), CompareResult::Equal, 0).with_prefix(),
            ])
            .and_then([RequestOp::put(
                self.key.as_str(),
                self.entry(true, 0, lease.granted),
                lease.id,
            )])
            .or_else([RequestOp::range(by_create(self.name_range.as_str()))]);
        let r = self.txn("an acquire", txn)?;
        if r.succeeded {
            return Ok(self.granted(&r, rev_of(&r), 0, false));
        }
        Ok(Step::Again(view_of(&self.prefix, &r)))
    }

    fn granted(&mut self, r: &TxnResponse, fence: i64, slot: u32, extended: bool) -> Step {
        let lease = self.lease.expect("a grant is made under the holder lease");
        // The waiter lease has no key left and runs out within seconds: no
        // revoke (a write on the cluster) for it.
        self.waiter = None;
        self.queued = false;
        self.holding = Some((lease.id, rev_of(r)));
        let g = Grant {
            fence: fence.max(0) as u64,
            server_now_us: keys::now_us(),
            extended,
            lease: Duration::from_secs(lease.granted as u64),
            slot: (self.req.kind.slots > 1).then_some(slot),
        };
        Step::Done(Acquire::Acquired(g), lease.sent)
    }

    /// Decides once from `v` and acts: grant, extend, or wait for the next
    /// change (until `deadline`, or until the caller cancels the wait).
    pub fn decide(&mut self, v: View, deadline: Option<Instant>) -> Result<Step> {
        let (decision, info) = match queue::decide(&v.nodes, self.req) {
            Ok(d) => d,
            Err(e) => {
                self.abandon(false);
                return Err(e);
            }
        };
        match decision {
            Decision::Extend => self.extend(&v),
            Decision::Take { slot } => self.take_now(&v, slot),
            Decision::Wait(_) if self.cancel.is_fired() => Ok(self.cancelled()),
            Decision::Wait(behind) => {
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    self.abandon(false);
                    let info = info.map(|i| super::status::with_ttl(&self.link, &v.nodes, i));
                    return Ok(Step::Done(Acquire::Busy(info), Instant::now()));
                }
                if self.mine(&v).is_none() {
                    if self.queued {
                        // Its key went, and so, most likely, did the lease it was on
                        // (a release of this token revokes it): join with a new one.
                        self.waiter = None;
                    }
                    // Said when the request joins the queue, as the shared wait loop says it.
                    crate::output::event(
                        crate::output::Level::Debug,
                        "waiting",
                        Some(self.req.name),
                        &format!("lock '{}' is busy; waiting", self.req.name),
                        serde_json::json!({ "holder": info.as_ref().map(|b| &b.holder) }),
                    );
                    return self.enqueue().map(Step::Again);
                }
                self.wait(&behind, v.rev, deadline)?;
                if self.cancel.is_fired() {
                    return Ok(self.cancelled());
                }
                self.read().map(Step::Again)
            }
        }
    }

    /// The caller cancelled the wait (dlock is about to exit on a signal):
    /// leave the queue at once, each request within a short timeout as
    /// the exit is waiting, and answer Busy.
    fn cancelled(&mut self) -> Step {
        self.link
            .set_timeout(self.link.timeout().min(Duration::from_secs(2)));
        self.abandon(false);
        Step::Done(Acquire::Busy(None), Instant::now())
    }

    /// The token holds the lock already: the key moves to the new lease
    /// (Put keeps its create revision, so the fence stays).
    fn extend(&mut self, v: &View) -> Result<Step> {
        let Some(n) = self.mine(v).cloned() else {
            return self.read().map(Step::Again);
        };
        let lease = self.fresh_lease()?;
        let mut e = n.entry.clone();
        (e.ask, e.ttl) = (self.ttl, lease.granted);
        let txn = self.put_if_unchanged(&n, e.encode(), lease.id);
        let r = self.txn("an acquire", txn)?;
        if !r.succeeded {
            return Ok(Step::Again(view_of(&self.prefix, &r)));
        }
        if n.lease != lease.id && n.lease != 0 {
            revoke(&self.link, n.lease);
        }
        Ok(self.granted(&r, n.create_rev, e.slot, true))
    }

    fn put_if_unchanged(&self, n: &Node, value: Vec<u8>, lease: i64) -> Txn {
        Txn::default()
            .when([Compare::modified(
                self.key.as_str(),
                CompareResult::Equal,
                n.mod_rev,
            )])
            .and_then([RequestOp::put(self.key.as_str(), value, lease)])
            .or_else([RequestOp::range(by_create(self.name_range.as_str()))])
    }

    /// Takes the lock: the waiting key becomes the holder's under the
    /// holder lease, or a new key is put if nothing changed since `v`.
    fn take_now(&mut self, v: &View, slot: u32) -> Result<Step> {
        let lease = self.fresh_lease()?;
        let value = self.entry(true, slot, lease.granted);
        let mine = self.mine(v).cloned();
        let txn = match &mine {
            Some(n) => self.put_if_unchanged(n, value, lease.id),
            None => Txn::default()
                .when([
                    Compare::created(self.key.as_str(), CompareResult::Equal, 0),
                    Compare::modified(self.name_range.as_str(), CompareResult::Less, v.rev + 1)
                        .with_prefix(),
                ])
                .and_then([RequestOp::put(self.key.as_str(), value, lease.id)])
                .or_else([RequestOp::range(by_create(self.name_range.as_str()))]),
        };
        let r = self.txn("an acquire", txn)?;
        if !r.succeeded {
            return Ok(Step::Again(view_of(&self.prefix, &r)));
        }
        let fence = mine.map_or(rev_of(&r), |n| n.create_rev);
        Ok(self.granted(&r, fence, slot, false))
    }

    /// Joins the queue: a key of its own under a short waiter lease.
    fn enqueue(&mut self) -> Result<View> {
        let w = match self.waiter {
            Some(w) => w,
            None => {
                let l = grant(&self.link, WAITER_TTL)?;
                self.waiter = Some(l.id);
                l.id
            }
        };
        let get = RequestOp::range(by_create(self.name_range.as_str()));
        let txn = Txn::default()
            .when([Compare::created(self.key.as_str(), CompareResult::Equal, 0)])
            .and_then([
                RequestOp::put(self.key.as_str(), self.entry(false, 0, 0), w),
                get.clone(),
            ])
            .or_else([get]);
        self.queued = true;
        let r = self.txn("joining the queue", txn)?;
        Ok(view_of(&self.prefix, &r))
    }

    pub fn read(&self) -> Result<View> {
        let (range, prefix) = (self.name_range.clone(), self.prefix.clone());
        self.link.call("a read", move |mut c| {
            let (range, prefix) = (range.clone(), prefix.clone());
            async move {
                let r = c.range(by_create(range)).await?;
                Ok(View {
                    nodes: nodes_of(&prefix, &r.kvs),
                    rev: r.revision(),
                })
            }
        })
    }

    /// Blocks until something `behind` names changes after revision `rev`,
    /// this request's own key goes, the deadline, or the cancel; keeps the
    /// waiter lease alive meanwhile.
    fn wait(&mut self, behind: &Behind, rev: i64, deadline: Option<Instant>) -> Result<()> {
        let target = match behind {
            Behind::Waiter(k) => Target {
                watch: WatchCreateRequest::key(k.clone(), rev + 1),
                wanted: vec![k.clone()],
                deletes_only: false,
            },
            Behind::Holders(ks) => Target {
                watch: WatchCreateRequest::key(self.name_range.as_str(), rev + 1)
                    .with_prefix()
                    .deletes_only(),
                wanted: ks
                    .iter()
                    .cloned()
                    .chain([self.key.clone().into_bytes()])
                    .collect(),
                deletes_only: true,
            },
        };
        let far = Instant::now() + Duration::from_secs(3600);
        let until = deadline.unwrap_or(far).min(far);
        let link = Arc::clone(&self.link);
        // The holder lease, granted before the first try, lives on through
        // the wait too, so that the grant needs no new one.
        let leases: Vec<i64> = self
            .waiter
            .into_iter()
            .chain(self.lease.map(|l| l.id))
            .collect();
        let gone = link.block_on(watch_until(&link, target, &leases, until, self.cancel))?;
        // A lease found gone is replaced when next needed (the waiter's key went with its lease).
        if gone.is_some() && gone == self.waiter {
            self.waiter = None;
        }
        if gone.is_some() && gone == self.lease.map(|l| l.id) {
            self.lease = None;
        }
        Ok(())
    }

    /// Gives up: this request's waiting key (with `all`, whatever key it
    /// has: a grant whose answer was cut short) and its leases go, best
    /// effort within one timeout each.
    pub fn abandon(&mut self, all: bool) {
        if self.queued || all {
            let key = self.key.clone();
            let _ = self.link.call("a cleanup", |mut c| {
                let k = key.clone();
                async move { c.delete(k).await }
            });
        }
        self.queued = false;
        for id in [self.waiter.take(), self.lease.take().map(|l| l.id)]
            .into_iter()
            .flatten()
        {
            revoke(&self.link, id);
        }
    }
}
