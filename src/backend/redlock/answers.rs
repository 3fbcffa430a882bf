//! What the nodes' answers to a renewal say beyond a majority: nodes to
//! give the lease back to, and whose the lock is when it is not ours.

use redis::Value;

use super::node::on_all;
use super::quorum::{self, majority_ttl};
use super::scripts::HEAL_LUA;
use super::RedlockBackend;
use crate::backend::redis::lock_info;
use crate::backend::{Broken, Check};

impl RedlockBackend {
    /// Gives the lease back to nodes that answered they have none, while
    /// the token holds a majority (best effort: the next renewal tries again).
    pub(super) fn heal(&self, name: &str, value: &str, ms: &str, missing: &[usize]) {
        let keys = self.keys(name, &["lease", "fence"]);
        let fence = value.split('\n').nth(1).unwrap_or("0");
        let _ = on_all(&self.nodes, |i, n| {
            if missing.contains(&i) {
                n.eval(&HEAL_LUA, &keys, &[value, ms, fence]).map(|_| ())
            } else {
                Ok(())
            }
        });
    }

    /// Why a token's renew or release found no majority: broken, held by
    /// another token (that has a majority), or simply not held.
    pub(super) fn not_ours(
        &self,
        name: &str,
        by: Option<String>,
        others: &[(String, i64, String)],
    ) -> Check {
        let now = quorum::strongest(others).and_then(|(tok, ttls)| {
            let ttl = majority_ttl(&ttls, self.quorum())?;
            let value = &others.iter().find(|(t, _, _)| t == tok)?.2;
            Some(lock_info(
                name,
                Some(&Value::Int(ttl)),
                Some(&Value::BulkString(value.clone().into_bytes())),
            ))
        });
        match (by, now) {
            (Some(by), now) => Check::Broken(Broken { by, now }),
            (None, Some(info)) => Check::HeldByOther(info),
            (None, None) => Check::NotHeld,
        }
    }
}
