//! Who broke which lease: `release --force` puts, in the transaction that
//! deletes the broken holders' keys, one record per broken token at
//! `keys::broken` (outside every request's range, so no read of locks or
//! queues meets it), under a lease of its own that ends with the longest
//! time the broken leases had left, [`MIN_TTL`] at least. A renewal or
//! release refused reads its token's record to say who broke it; a watcher
//! that sees a holder's key go early reads the records of its token id to
//! tell a break from a release.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::keys;
use super::leases::{self, Lease};
use super::link::Link;
use super::rpc::{RangeRequest, RequestOp};
use crate::backend::{LockInfo, Request};

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

/// The puts that record `by` as the breaker of `tokens`, under `lease`.
pub fn puts<'a>(
    prefix: &str,
    name: &str,
    tokens: impl Iterator<Item = &'a str>,
    by: &str,
    lease: &Lease,
) -> Vec<RequestOp> {
    let value = serde_json::to_vec(&Record { by: by.to_string() }).unwrap_or_default();
    tokens
        .map(|t| RequestOp::put(keys::broken(prefix, name, t), value.clone(), lease.id))
        .collect()
}

/// The delete, with a grant to `req`, of its token's record: a `--token`
/// reused after its lease was broken holds again, and its next release is
/// no break.
pub fn forget(prefix: &str, req: &Request) -> RequestOp {
    RequestOp::delete(keys::broken(prefix, req.name, req.token), false)
}

/// Who broke `token`'s lease on `name`, if its record says.
pub fn by_token(link: &Link, prefix: &str, name: &str, token: &str) -> Result<Option<String>> {
    first(link, RangeRequest::key(keys::broken(prefix, name, token)))
}

/// Who broke the lease of token id `id` on `name` (a watcher knows no
/// more), if a record of a token with that id says.
pub fn by_id(link: &Link, prefix: &str, name: &str, id: &str) -> Result<Option<String>> {
    first(
        link,
        RangeRequest::prefix_by_create(keys::broken(prefix, name, id)),
    )
}

fn first(link: &Link, range: RangeRequest) -> Result<Option<String>> {
    let r = link.call("a read", |mut c| {
        let range = range.clone();
        async move { c.range(range).await }
    })?;
    let record = r
        .kvs
        .first()
        .map(|kv| serde_json::from_slice::<Record>(&kv.value));
    Ok(record.and_then(|r| r.ok()).map(|r| r.by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_puts_of_the_breaker_under_their_lease() {
        let lease = Lease {
            id: 77,
            granted: 5,
            sent: std::time::Instant::now(),
        };
        let ops = puts(
            "p",
            "n",
            ["tok-a", "b/c"].into_iter(),
            "me@vm (pid 1)",
            &lease,
        );
        assert_eq!(ops.len(), 2);
        let want = RequestOp::put(
            keys::broken("p", "n", "b/c"),
            br#"{"by":"me@vm (pid 1)"}"#.to_vec(),
            77,
        );
        assert_eq!(format!("{:?}", ops[1]), format!("{want:?}"));
    }
}
