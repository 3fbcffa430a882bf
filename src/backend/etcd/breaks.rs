//! Who broke which lease, for `dlock watch`: `release --force` puts, in the
//! transaction that deletes the broken holders' keys, one record per broken
//! token at `keys::broken` (outside every request's range, so no read of
//! locks or queues meets it), under a lease of its own that ends with the
//! longest time the broken leases had left, [`MIN_TTL`] at least. A watcher
//! that sees a holder's key go early reads the record to tell a break from
//! a release.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::keys;
use super::leases::{self, Lease};
use super::link::Link;
use super::rpc::{RangeRequest, RequestOp};
use crate::backend::LockInfo;

/// The shortest a record lives (s): a watcher asks right after the break,
/// but a poll may come a second late.
pub const MIN_TTL: i64 = 5;

/// A record's value.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    /// "user@host (pid N)" of the breaker.
    by: String,
}

/// The lease a force's records go under, for the leases of `broken`
/// (best effort: without it, the force breaks as before, unrecorded).
pub fn lease_for(link: &Link, broken: &[LockInfo]) -> Option<Lease> {
    let left = broken.iter().map(|i| i.ttl.as_secs()).max().unwrap_or(0);
    let ttl = i64::try_from(left).unwrap_or(i64::MAX).max(MIN_TTL);
    leases::grant(link, ttl).ok()
}

/// The puts that record `by` as the breaker of `broken`, under `lease`.
pub fn puts(
    prefix: &str,
    name: &str,
    broken: &[LockInfo],
    by: &str,
    lease: &Lease,
) -> Vec<RequestOp> {
    let value = serde_json::to_vec(&Record { by: by.to_string() }).unwrap_or_default();
    broken
        .iter()
        .map(|i| {
            RequestOp::put(
                keys::broken(prefix, name, &i.token_id),
                value.clone(),
                lease.id,
            )
        })
        .collect()
}

/// Who broke the lease of token id `id` on `name`, if a record says.
pub fn broken_by(link: &Link, prefix: &str, name: &str, id: &str) -> Result<Option<String>> {
    let key = keys::broken(prefix, name, id);
    let r = link.call("a read", |mut c| {
        let k = key.clone();
        async move { c.range(RangeRequest::key(k)).await }
    })?;
    let record = r
        .kvs
        .first()
        .map(|kv| serde_json::from_slice::<Record>(&kv.value));
    Ok(record.and_then(|r| r.ok()).map(|r| r.by))
}
