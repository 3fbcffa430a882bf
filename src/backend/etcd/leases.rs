//! The leases of etcd requests: granted before a holder's or a waiter's
//! key is written, revoked when the request is given up.

use std::time::Instant;

use anyhow::Result;

use super::link::Link;
use super::rpc;
use crate::error::{fail, UNAVAILABLE};

/// A lease granted for a request.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub id: i64,
    /// What etcd granted, in seconds (it may raise a short TTL to its minimum).
    pub granted: i64,
    /// Sent before the grant: the lease runs until at least `sent + granted`.
    pub sent: Instant,
}

/// Grants a lease of `ttl` seconds.
pub fn grant(link: &Link, ttl: i64) -> Result<Lease> {
    let sent = Instant::now();
    // A lease alone holds no key: whatever became of this request, it took
    // no lock, so there is nothing to clean up after it.
    let r = link
        .call(
            "a lease grant",
            |mut c| async move { c.lease_grant(ttl).await },
        )
        .map_err(crate::error::mark_unsent)?;
    if !r.error.is_empty() || r.ttl <= 0 {
        return Err(fail(
            UNAVAILABLE,
            format!("etcd at {} refused a lease: {}", link.shown, r.error),
        ));
    }
    Ok(Lease {
        id: r.id,
        granted: r.ttl,
        sent,
    })
}

/// Revokes a lease and waits for the answer (its keys go with it).
pub fn revoke(link: &Link, id: i64) {
    let _ = link.call(
        "a lease revoke",
        |mut c| async move { c.lease_revoke(id).await },
    );
}

/// Revokes a lease, for a release that must know it happened: a lease
/// already gone (run out, or revoked by another release) is no error.
pub fn revoke_sure(link: &Link, id: i64) -> Result<()> {
    link.call("a release", |mut c| async move {
        match c.lease_revoke(id).await {
            Err(rpc::Error::Status(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    })
}
