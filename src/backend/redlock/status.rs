//! What `status` says of Redlock locks: a holder is one whose token holds
//! a majority of the nodes, for as long as it keeps that majority.

use anyhow::Result;
use redis::Value;

use super::node::Node;
use super::quorum::majority_ttl;
use super::{token_of, RedlockBackend};
use crate::backend::redis::link::Route;
use crate::backend::redis::{int, lock_info, text};
use crate::backend::LockInfo;

/// Every key matching `pattern` on one node.
pub fn scan(n: &Node, pattern: &str) -> Result<Vec<String>> {
    n.link.scan(Route::Key(pattern), pattern)
}

/// The names with a lease on any node.
pub fn names(b: &RedlockBackend) -> Result<Vec<String>> {
    let pattern = crate::backend::redis::scripts::held_pattern(&b.prefix);
    let found = b.fan(|_, n| scan(n, &pattern))?;
    let mut names = Vec::new();
    let mut errors = Vec::new();
    for r in found {
        match r {
            Ok(keys) => names.extend(
                keys.iter()
                    .filter_map(|k| crate::backend::redis::scripts::name_of(&b.prefix, k)),
            ),
            Err(e) => errors.push(e),
        }
    }
    let answered = b.nodes.len() - errors.len();
    if answered < b.quorum() {
        return Err(b.too_few("the status", answered, &errors));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The holders of `names`: each node's leases read in one round trip, all
/// nodes at once, then one holder per name that a majority agrees on.
pub fn of(b: &RedlockBackend, names: &[String]) -> Result<Vec<LockInfo>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = names
        .iter()
        .map(|n| b.keys(n, &["lease"]).remove(0))
        .collect();
    let read = b.fan(|_, n| {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
        }
        n.link
            .with_con(Route::Key(&keys[0]), |con| pipe.query::<Vec<Value>>(con))
    })?;
    let mut errors = Vec::new();
    let mut per_node = Vec::new();
    for r in read {
        match r {
            Ok(v) => per_node.push(v),
            Err(e) => errors.push(e),
        }
    }
    if per_node.len() < b.quorum() {
        return Err(b.too_few("the status", per_node.len(), &errors));
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let seen: Vec<(String, i64, String)> = per_node
            .iter()
            .filter_map(|v| {
                let value = v.get(2 * i).map(text).filter(|s| !s.is_empty())?;
                let ttl = int(v.get(2 * i + 1)).unwrap_or(0);
                Some((token_of(&value), ttl, value))
            })
            .collect();
        let Some((tok, ttls)) = super::quorum::strongest(&seen) else {
            continue;
        };
        let Some(ttl) = majority_ttl(&ttls, b.quorum()) else {
            continue;
        };
        // The fence written back is the largest any of its nodes has.
        let best = seen
            .iter()
            .filter(|(t, _, _)| t == tok)
            .map(|(_, _, v)| {
                lock_info(name, None, Some(&Value::BulkString(v.clone().into_bytes())))
            })
            .max_by_key(|i| i.fence);
        if let Some(mut info) = best {
            info.ttl = std::time::Duration::from_millis(ttl.max(0) as u64);
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
