//! The wait of a queued request: a watch of what it waits behind, from the
//! revision after its last read, with keep-alives of its lease meanwhile.

use std::time::Instant;

use anyhow::Result;

use super::link::Link;
use super::rpc::{
    self, Compare, CompareResult, Event, Keeper, RangeRequest, RequestOp, Txn, WatchCreateRequest,
};
use crate::backend::kinds::TICKET_REFRESH;
use crate::cancel::Cancel;
use crate::error::{fail, UNAVAILABLE};

fn lost_watch(link: &Link, e: &rpc::Error) -> anyhow::Error {
    link.next_member();
    fail(
        UNAVAILABLE,
        format!(
            "etcd at {} broke off a wait: {}",
            link.shown,
            super::link::describe(e)
        ),
    )
}

fn lost_watch_end(link: &Link) -> anyhow::Error {
    link.next_member();
    fail(
        UNAVAILABLE,
        format!("etcd at {} stopped answering during a wait", link.shown),
    )
}

/// What a waiter watches: a key or the name's range, from a revision, and
/// which keys' events end the wait.
pub struct Target {
    pub watch: WatchCreateRequest,
    pub wanted: Vec<Vec<u8>>,
    pub deletes_only: bool,
    /// The waiter just ahead, checked for life every [`TICKET_REFRESH`].
    pub suspect: Option<Suspect>,
}

/// A waiting key ahead, as read: its lease, and its revision while it waits.
pub struct Suspect {
    pub key: Vec<u8>,
    pub lease: i64,
    pub mod_rev: i64,
}

impl Target {
    fn hit(&self, e: &Event) -> bool {
        let key = e.kv.as_ref().map(|kv| &kv.key);
        key.is_some_and(|k| self.wanted.contains(k)) && (!self.deletes_only || e.is_delete())
    }
}

/// How a wait ended.
pub enum Waited {
    /// Something to read again for (or the deadline, or the cancel); the
    /// last keep-alive of the lease was sent then, if there was one.
    Kept(Option<Instant>),
    /// The request's lease is gone (a release of this token, or too long
    /// unreachable), and its key with it.
    LeaseGone,
}

/// Missed keep-alives after which a waiter is taken for dead: a live one
/// sends one every [`TICKET_REFRESH`]. etcd counts a lease's time left in
/// whole seconds, rounded down: a lease whose time left reads this much
/// below its TTL has had none for over 2 s.
const DEAD_AFTER: i64 = 3;

/// The watch of `t` until a hit, a cancelled watch (compaction, or a member
/// that lost its leader: read again), `until`, or the caller's `cancel`,
/// with a keep-alive of the request's `lease` every [`TICKET_REFRESH`].
pub async fn watch_until(
    link: &Link,
    t: Target,
    lease: Option<i64>,
    until: Instant,
    cancel: &Cancel,
) -> Result<Waited> {
    let mut watch = link
        .call_async("a watch", |mut c| {
            let w = t.watch.clone();
            async move { c.watch(w).await }
        })
        .await?;
    let mut keeper = None;
    let mut sent = None;
    if let Some(id) = lease {
        let at = Instant::now();
        match open_keeper(link, id).await? {
            Some(k) => (keeper, sent) = (Some(k), Some(at)),
            None => return Ok(Waited::LeaseGone),
        }
    }
    let mut tick = tokio::time::interval(TICKET_REFRESH);
    tick.tick().await;
    loop {
        tokio::select! {
            m = watch.message() => {
                let Some(m) = m.map_err(|e| lost_watch(link, &e))? else {
                    return Err(lost_watch_end(link));
                };
                if m.canceled || m.events.iter().any(|e| t.hit(e)) {
                    return Ok(Waited::Kept(sent));
                }
            }
            _ = tick.tick() => {
                if let Some(k) = keeper.as_mut() {
                    let at = Instant::now();
                    if !keep_waiting(link, k).await? {
                        return Ok(Waited::LeaseGone);
                    }
                    sent = Some(at);
                }
                if let Some(s) = &t.suspect {
                    if dropped_if_dead(link, s).await? {
                        return Ok(Waited::Kept(sent));
                    }
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return Ok(Waited::Kept(sent)),
            _ = cancel.fired() => return Ok(Waited::Kept(sent)),
        }
    }
}

/// Drops the waiter ahead if it has sent no keep-alive for over 2 s (it
/// was killed, or is cut off): its key goes if it still waits, so that the
/// queue moves on well before its lease would run out. True when the key
/// went or changed (read again); a live one whose key was dropped finds it
/// gone at its next read and joins the queue again.
async fn dropped_if_dead(link: &Link, s: &Suspect) -> Result<bool> {
    let id = s.lease;
    let r = link
        .call_async("a lease lookup", |mut c| async move {
            c.lease_time_to_live(id).await
        })
        .await?;
    if r.ttl >= 0 && r.ttl > r.granted_ttl - DEAD_AFTER {
        return Ok(false);
    }
    // Dropped only while it still waits: the put of its grant changes its
    // revision (and its lease may then run down unkept: holders need not
    // renew often).
    let key = s.key.clone();
    let unchanged = Compare::modified(key.clone(), CompareResult::Equal, s.mod_rev);
    let txn = Txn::default()
        .when([unchanged])
        .and_then([RequestOp::delete(key.clone(), false)]);
    let read = link
        .call_async("a read", |mut c| {
            let k = key.clone();
            async move { c.range(RangeRequest::key(k)).await }
        })
        .await?;
    if read
        .kvs
        .first()
        .is_some_and(|kv| kv.mod_revision == s.mod_rev)
    {
        link.call_async("dropping a dead waiter", |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await?;
    }
    Ok(true)
}

/// Opens the lease's keep-alive stream, which sends the first
/// keep-alive and reads its answer; None when the lease is gone.
async fn open_keeper(link: &Link, id: i64) -> Result<Option<Keeper>> {
    link.call_async("a keep-alive", |mut c| async move {
        match c.lease_keep_alive(id).await {
            Ok(k) => Ok(Some(k)),
            Err(rpc::Error::LeaseGone) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await
}

/// One more keep-alive of a lease: false when it is gone (a release of
/// this token, or too long unreachable), so the waiter reads again and joins
/// the queue anew with a new lease.
async fn keep_waiting(link: &Link, k: &mut Keeper) -> Result<bool> {
    let alive = tokio::time::timeout(link.timeout(), k.keep_alive()).await;
    match alive {
        Ok(Ok(Some(r))) => Ok(r.ttl > 0),
        Ok(Ok(None)) => Ok(false),
        Ok(Err(e)) => Err(lost_watch(link, &e)),
        Err(_) => Err(lost_watch_end(link)),
    }
}
