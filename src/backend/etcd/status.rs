//! What `status` shows, and the holder's watch for its own key being broken.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::keys::{self, Node};
use super::link::Link;
use super::rpc::WatchCreateRequest;
use crate::backend::LockInfo;

/// The holder `info` with its time left, asked of its lease.
pub fn with_ttl(link: &Link, nodes: &[Node], mut info: LockInfo) -> LockInfo {
    let lease = nodes
        .iter()
        .find(|n| n.create_rev as u64 == info.fence && n.entry.held)
        .map(|n| n.lease);
    if let Some(id) = lease.filter(|id| *id != 0) {
        let ttl = link
            .call("a lease lookup", |mut c| async move {
                c.lease_time_to_live(id).await
            })
            .ok()
            .and_then(|r| left(r.ttl, r.granted_ttl));
        info.ttl = ttl.unwrap_or_default();
    }
    info
}

/// The holders among `nodes` (one entry each, by name then fence), with the
/// time left on each one's lease; a lease that is gone by now is left out.
pub fn infos(link: &Arc<Link>, nodes: Vec<Node>) -> Result<Vec<LockInfo>> {
    let mut by_name: BTreeMap<String, Vec<Node>> = BTreeMap::new();
    for n in nodes {
        by_name.entry(n.name.clone()).or_default().push(n);
    }
    let mut out = Vec::new();
    let mut leases = Vec::new();
    for (name, nodes) in &by_name {
        for info in keys::state(nodes).infos(name, 0) {
            let lease = nodes
                .iter()
                .find(|n| n.entry.held && n.create_rev as u64 == info.fence)
                .map_or(0, |n| n.lease);
            leases.push(lease);
            out.push(info);
        }
    }
    let ttls = time_left(link, &leases)?;
    let mut kept = Vec::new();
    for (mut info, ttl) in out.into_iter().zip(ttls) {
        if let Some(ttl) = ttl {
            info.ttl = ttl;
            kept.push(info);
        }
    }
    Ok(kept)
}

/// The time left on a lease from etcd's answer: etcd counts whole seconds
/// and rounds what is left down, so a lease granted 2s reads 1 at once and 0
/// for its last second, while it still holds (and its key stays until the
/// leader revokes it, later still). Show the upper end, which the lease can
/// never exceed: what it granted. None for a lease that is gone.
pub(super) fn left(ttl: i64, granted: i64) -> Option<Duration> {
    (ttl >= 0).then(|| Duration::from_secs((ttl + 1).min(granted.max(1)) as u64))
}

/// The time left on each lease, asked all at once; None for one that is gone.
fn time_left(link: &Arc<Link>, leases: &[i64]) -> Result<Vec<Option<Duration>>> {
    let l = Arc::clone(link);
    let ids = leases.to_vec();
    link.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for (i, id) in ids.into_iter().enumerate() {
            let l = Arc::clone(&l);
            set.spawn(async move {
                let r = l
                    .call_async("a lease lookup", |mut c| async move {
                        c.lease_time_to_live(id).await
                    })
                    .await;
                (i, r.map(|r| left(r.ttl, r.granted_ttl)))
            });
        }
        let mut out = vec![None; set.len()];
        while let Some(done) = set.join_next().await {
            let (i, ttl) = done.map_err(|e| anyhow::anyhow!("a lease lookup failed: {e}"))?;
            out[i] = ttl?;
        }
        Ok(out)
    })
}

/// Calls `on_break` once when the holder's key is deleted by anyone but
/// this process after revision `rev`: `release --force`, or its lease
/// running out (which the renewal deadline has then stopped the command for).
/// The watch starts once the command has run a moment (see `notice`): it
/// reads from `rev` on, so no deletion is missed by starting late.
pub fn watch_breaks(
    link: Arc<Link>,
    key: String,
    rev: i64,
    name: String,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    crate::backend::notice::spawn_lazily(move || {
        crate::backend::notice::listening(&name);
        let mut from = rev + 1;
        loop {
            match deleted_after(&link, &key, from) {
                Ok(None) => continue,
                Ok(Some(_)) => break,
                Err(next) => {
                    from = next.max(from);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        on_break(format!(
            "lock '{name}' was broken with --force (or its lease ran out on the server)"
        ));
    });
}

/// Watches `key` from revision `from` for its deletion: Some(revision) when
/// it happened, None when the watch ended without it (read again), Err with
/// the revision to resume from when the member failed.
fn deleted_after(link: &Link, key: &str, from: i64) -> std::result::Result<Option<i64>, i64> {
    link.block_on(async {
        let watch = WatchCreateRequest::key(key, from).deletes_only();
        let mut w = link
            .call_async("a watch", |mut c| {
                let w = watch.clone();
                async move { c.watch(w).await }
            })
            .await
            .map_err(|_| from)?;
        let mut seen = from;
        loop {
            match w.message().await {
                Ok(Some(m)) => {
                    seen = seen.max(m.revision());
                    if let Some(e) = m.events.iter().find(|e| e.is_delete()) {
                        return Ok(Some(e.kv.as_ref().map_or(seen, |kv| kv.mod_revision)));
                    }
                    if m.canceled {
                        return Err(m.compact_revision.max(from));
                    }
                }
                _ => {
                    link.next_member();
                    return Err(from);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_left_show_their_upper_end() {
        let s = Duration::from_secs;
        assert_eq!(left(1, 2), Some(s(2)), "just granted 2s");
        assert_eq!(left(0, 2), Some(s(1)), "its last second");
        assert_eq!(left(0, 1), Some(s(1)));
        assert_eq!(left(30, 30), Some(s(30)), "just renewed");
        assert_eq!(left(12, 30), Some(s(13)));
        assert_eq!(left(-1, 0), None, "gone");
    }
}
