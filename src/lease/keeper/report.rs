//! What the renewal loop says: renewals after failures, failures, and why
//! a lease counts as lost.

use std::time::Duration;

use serde_json::json;

use crate::backend::Check;
use crate::output::{self, Level};

/// A renewal went through; after failures that is news, else a detail.
pub fn log_renewed(name: &str, lease: Duration, failures: u32) {
    let level = if failures > 0 {
        Level::Info
    } else {
        Level::Debug
    };
    output::event(
        level,
        "renewed",
        Some(name),
        &format!("renewed '{name}'"),
        json!({ "lease_ms": lease.as_millis() as u64, "failures": failures }),
    );
}

pub fn log_failure(name: &str, msg: &str, attempt: u32, level: Level) {
    output::event(
        level,
        "renewal_failed",
        Some(name),
        msg,
        json!({ "attempt": attempt }),
    );
}

/// Why a renewal found the lease gone, in words for the operator.
pub fn lost_reason(name: &str, check: &Check) -> String {
    let held = |o: &crate::backend::LockInfo| {
        format!(
            "{}:{} ({}) with fence {}",
            o.holder.host, o.holder.pid, o.holder.user, o.fence
        )
    };
    match check {
        Check::Broken(b) => match &b.now {
            Some(o) => format!(
                "lock '{name}' was broken with --force by {} and is now held by {}",
                b.by,
                held(o)
            ),
            None => format!("lock '{name}' was broken with --force by {}", b.by),
        },
        Check::HeldByOther(o) => format!(
            "lock '{name}' is now held by {} (the lease expired or was broken with --force)",
            held(o)
        ),
        _ => format!(
            "the server no longer has the lease on '{name}' (it expired, was broken with --force, or the server lost its data)"
        ),
    }
}
