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
use super::wait::Suspect;
use super::wait::{watch_until, Target, Waited};
use crate::backend::{Acquire, Grant, Request};
use crate::cancel::Cancel;

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
    /// The request's one lease, of the TTL asked for: granted before the
    /// first try, its key lives under it while it waits and while it holds,
    /// so a grant after a wait is one write (no lease to grant, no re-put
    /// under another lease, nothing to revoke).
    lease: Option<Lease>,
    /// The key was found gone: its lease may have gone with it (a release
    /// of this token revokes it), so the next use checks it first.
    doubt: bool,
    /// The first try joined the queue; not said yet.
    joined: bool,
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
    queued: bool,
}

impl Kept {
    /// The leases, for a release that gives up on the request.
    pub fn leases(&self) -> impl Iterator<Item = i64> {
        self.lease.map(|l| l.id).into_iter()
    }

    /// No lease and no place: every key is put under a lease, so the request
    /// that kept this holds nothing on the server.
    pub fn holds_nothing(&self) -> bool {
        self.lease.is_none() && !self.queued
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

/// The view in the last range response of a transaction (or of the
/// transaction nested in it), as of the revision the outer one answered at.
fn view_of(prefix: &str, r: &TxnResponse) -> View {
    let mut nodes = Vec::new();
    for op in &r.responses {
        match &op.response {
            Some(Response::Range(g)) => nodes = nodes_of(prefix, &g.kvs),
            Some(Response::Txn(t)) => nodes = view_of(prefix, t).nodes,
            _ => {}
        }
    }
    View {
        nodes,
        rev: rev_of(r),
    }
}

/// Whether the transaction nested in `r` (if any) took its success branch.
fn nested_succeeded(r: &TxnResponse) -> Option<bool> {
    r.responses.iter().find_map(|op| match &op.response {
        Some(Response::Txn(t)) => Some(t.succeeded),
        _ => None,
    })
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
            doubt: false,
            joined: false,
            queued: false,
            holding: None,
        }
    }

    /// Takes over what the same request's last try left (see [`Kept`]).
    pub fn resume(&mut self, kept: Kept) {
        if kept.name == self.req.name && kept.token == self.req.token {
            (self.lease, self.queued) = (kept.lease, kept.queued);
        }
    }

    /// What this request holds for a next try after a failure.
    pub fn keep(&self) -> Kept {
        Kept {
            name: self.req.name.to_string(),
            token: self.req.token.to_string(),
            lease: self.lease,
            queued: self.queued,
        }
    }

    /// The request's lease, recent enough that the grant it backs leaves
    /// the keeper most of it: one older than a third of its TTL (or in
    /// doubt) gets a keep-alive first (no write on the cluster), a new one
    /// if it is gone.
    fn fresh_lease(&mut self) -> Result<Lease> {
        if let Some(mut l) = self.lease {
            let doubt = std::mem::take(&mut self.doubt);
            if !doubt && l.sent.elapsed() < Duration::from_secs(l.granted as u64) / 3 {
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

    /// The first try in one transaction: take the lock if nobody has a key
    /// for the name; else (for a request that may wait) join the queue in
    /// the same write, or read the queue. A key of this token's already
    /// there (a grant being extended) is only read.
    pub fn first_try(&mut self, waiting: bool) -> Result<Step> {
        if self.queued {
            // A try cut short left its key in the queue: it keeps its place.
            return self.read().map(Step::Again);
        }
        let lease = self.fresh_lease()?;
        let key = self.key.as_str();
        let absent = Compare::created(key, CompareResult::Equal, 0);
        let free =
            Compare::created(self.name_range.as_str(), CompareResult::Equal, 0).with_prefix();
        let take = RequestOp::put(key, self.entry(true, 0, lease.granted), lease.id);
        let forget = super::breaks::forget(&self.prefix, self.req);
        let get = RequestOp::range(by_create(self.name_range.as_str()));
        let txn = if waiting {
            let join = RequestOp::put(key, self.entry(false, 0, lease.granted), lease.id);
            let inner = Txn::default()
                .when([free])
                .and_then([take, forget])
                .or_else([join, get.clone()]);
            // Set before sending: an answer cut short may have queued it.
            self.queued = true;
            Txn::default()
                .when([absent])
                .and_then([RequestOp::txn(inner)])
                .or_else([get])
        } else {
            Txn::default()
                .when([absent, free])
                .and_then([take, forget])
                .or_else([get])
        };
        let r = self.txn("an acquire", txn)?;
        match (r.succeeded, nested_succeeded(&r)) {
            (true, None | Some(true)) => Ok(self.granted(&r, rev_of(&r), 0, false)),
            (true, Some(false)) => {
                self.joined = true;
                Ok(Step::Again(view_of(&self.prefix, &r)))
            }
            (false, _) => {
                self.queued = false;
                Ok(Step::Again(view_of(&self.prefix, &r)))
            }
        }
    }

    fn granted(&mut self, r: &TxnResponse, fence: i64, slot: u32, extended: bool) -> Step {
        let lease = self
            .lease
            .expect("a grant is made under the request's lease");
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
                self.abandon();
                return Err(e);
            }
        };
        match decision {
            Decision::Extend => self.extend(&v),
            Decision::Take { slot } => self.take_now(&v, slot),
            Decision::Wait(_) if self.cancel.is_fired() => Ok(self.cancelled()),
            Decision::Wait(behind) => {
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    self.abandon();
                    let info = info.map(|i| super::status::with_ttl(&self.link, &v.nodes, i));
                    return Ok(Step::Done(Acquire::Busy(info), Instant::now()));
                }
                let joining = self.mine(&v).is_none();
                if joining || std::mem::take(&mut self.joined) {
                    // Said when the request joins the queue, as the shared wait loop says it.
                    crate::output::event(
                        crate::output::Level::Debug,
                        "waiting",
                        Some(self.req.name),
                        &format!("lock '{}' is busy; waiting", self.req.name),
                        serde_json::json!({ "holder": info.as_ref().map(|b| &b.holder) }),
                    );
                }
                if joining {
                    if self.queued {
                        // Its key went, and perhaps the lease it was on (a
                        // release of this token revokes it): check it first.
                        self.doubt = true;
                    }
                    return self.enqueue().map(Step::Again);
                }
                self.wait(&behind, &v, deadline)?;
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
        self.abandon();
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
        }
        .and_then([super::breaks::forget(&self.prefix, self.req)]);
        let r = self.txn("an acquire", txn)?;
        if !r.succeeded {
            return Ok(Step::Again(view_of(&self.prefix, &r)));
        }
        let fence = mine.map_or(rev_of(&r), |n| n.create_rev);
        Ok(self.granted(&r, fence, slot, false))
    }

    /// Joins the queue: a key of its own under the request's lease.
    fn enqueue(&mut self) -> Result<View> {
        let lease = self.fresh_lease()?;
        let get = RequestOp::range(by_create(self.name_range.as_str()));
        let txn = Txn::default()
            .when([Compare::created(self.key.as_str(), CompareResult::Equal, 0)])
            .and_then([
                RequestOp::put(
                    self.key.as_str(),
                    self.entry(false, 0, lease.granted),
                    lease.id,
                ),
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

    /// Blocks until something `behind` names changes after the read `v`,
    /// this request's own key goes, the deadline, or the cancel; keeps the
    /// request's lease alive meanwhile. A mutex waiter behind another
    /// waiter wakes only when that one's key goes (its grant changes
    /// nothing for this one), and meanwhile checks that the waiter ahead is
    /// alive: one killed while waiting is dropped from the queue.
    fn wait(&mut self, behind: &Behind, v: &View, deadline: Option<Instant>) -> Result<()> {
        let kind = &self.req.kind;
        let mutex = kind.slots <= 1 && kind.mode == crate::backend::Mode::Exclusive;
        let target = match behind {
            Behind::Waiter(k) => {
                let watch = WatchCreateRequest::key(k.clone(), v.rev + 1);
                Target {
                    watch: if mutex { watch.deletes_only() } else { watch },
                    wanted: vec![k.clone()],
                    deletes_only: mutex,
                    // (A key without a lease is none of dlock's to drop.)
                    suspect: v
                        .nodes
                        .iter()
                        .find(|n| &n.key == k && n.lease != 0)
                        .map(|n| Suspect {
                            key: k.clone(),
                            lease: n.lease,
                            mod_rev: n.mod_rev,
                        }),
                }
            }
            Behind::Holders(ks) => Target {
                watch: WatchCreateRequest::key(self.name_range.as_str(), v.rev + 1)
                    .with_prefix()
                    .deletes_only(),
                wanted: ks
                    .iter()
                    .cloned()
                    .chain([self.key.clone().into_bytes()])
                    .collect(),
                deletes_only: true,
                suspect: None,
            },
        };
        let far = Instant::now() + Duration::from_secs(3600);
        let until = deadline.unwrap_or(far).min(far);
        let link = Arc::clone(&self.link);
        let lease = self.lease.map(|l| l.id);
        let waited = link.block_on(watch_until(&link, target, lease, until, self.cancel))?;
        match (&mut self.lease, waited) {
            // Gone: its key went with it; a new one is granted when next needed.
            (_, Waited::LeaseGone) => self.lease = None,
            // Kept alive: the grant that may follow counts from the last keep-alive.
            (Some(l), Waited::Kept(Some(sent))) => l.sent = sent,
            _ => {}
        }
        Ok(())
    }

    /// Gives up: this request's key goes with its lease (a key without one
    /// went with it already), best effort within one timeout.
    pub fn abandon(&mut self) {
        self.queued = false;
        if let Some(l) = self.lease.take() {
            revoke(&self.link, l.id);
        }
    }
}
