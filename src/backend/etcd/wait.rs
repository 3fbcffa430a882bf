//! The wait of a queued request: a watch of what it waits behind, from the
//! revision after its last read, with keep-alives of its leases meanwhile.

use std::time::Instant;

use anyhow::Result;

use super::link::Link;
use super::rpc::{self, Event, Keeper, WatchCreateRequest};
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
}

impl Target {
    fn hit(&self, e: &Event) -> bool {
        let key = e.kv.as_ref().map(|kv| &kv.key);
        key.is_some_and(|k| self.wanted.contains(k)) && (!self.deletes_only || e.is_delete())
    }
}

/// The watch of `t` until a hit, a cancelled watch (compaction, or a member
/// that lost its leader: read again), `until`, or the caller's `cancel`,
/// with a keep-alive of the request's `leases` every [`TICKET_REFRESH`];
/// returns the lease it found gone, if any.
pub async fn watch_until(
    link: &Link,
    t: Target,
    leases: &[i64],
    until: Instant,
    cancel: &Cancel,
) -> Result<Option<i64>> {
    let mut watch = link
        .call_async("a watch", |mut c| {
            let w = t.watch.clone();
            async move { c.watch(w).await }
        })
        .await?;
    let mut keepers = Vec::new();
    for id in leases {
        match open_keeper(link, *id).await? {
            Some(k) => keepers.push(k),
            None => return Ok(Some(*id)),
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
                    return Ok(None);
                }
            }
            _ = tick.tick() => {
                for k in keepers.iter_mut() {
                    if !keep_waiting(link, k).await? {
                        return Ok(Some(k.id()));
                    }
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return Ok(None),
            _ = cancel.fired() => return Ok(None),
        }
    }
}

/// Opens the waiter lease's keep-alive stream, which sends the first
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
/// the queue anew, or gets a new holder lease.
async fn keep_waiting(link: &Link, k: &mut Keeper) -> Result<bool> {
    let alive = tokio::time::timeout(link.timeout(), k.keep_alive()).await;
    match alive {
        Ok(Ok(Some(r))) => Ok(r.ttl > 0),
        Ok(Ok(None)) => Ok(false),
        Ok(Err(e)) => Err(lost_watch(link, &e)),
        Err(_) => Err(lost_watch_end(link)),
    }
}
