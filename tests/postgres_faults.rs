//! PostgreSQL backend under faults: the lease table dropped, more waiters
//! than the server takes connections. The postmaster killed, restarted or
//! paused and the holder's session terminated are tests/faults.rs's
//! scenarios, on every backend that has those hooks. Tests that break a
//! server start their own.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::*;

#[test]
fn table_dropped_while_held_is_a_lost_lease() {
    let db = Postgres::shared();
    let ctx = Ctx::new(db.clone());
    let mut a = exec_recorder(&ctx, "1s", "a");
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    db.sql(&format!("DROP TABLE {}_leases", ctx.prefix));
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("lost"), "{err}");
    // The table is back (made by the renewal that found it gone), and free.
    assert!(!ctx.is_held("job"));
    let o = ctx.run(&["exec", "job", "--", "true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Twice as many waiters as the server's default max_connections (100):
/// the ones it refuses back off and come again, and every one runs its
/// section once.
#[test]
fn two_hundred_waiters_against_a_hundred_connections_all_run() {
    let db = Arc::new(Postgres::start());
    assert_eq!(db.sql("SHOW max_connections"), "100");
    let ctx = Ctx::new(db.clone());
    let counter = ctx.path("counter");
    std::fs::write(&counter, "0").unwrap();
    let section = format!(
        "n=$(cat '{c}'); n=$((n+1)); printf %s \"$n\" > '{c}.tmp'; mv '{c}.tmp' '{c}'",
        c = counter.display()
    );
    let n = 200;
    let started = Instant::now();
    let kids: Vec<_> = (0..n)
        .map(|_| {
            spawn(ctx.cmd(&[
                "exec", "--wait", "300s", "counter", "--", "sh", "-c", &section,
            ]))
        })
        .collect();
    let mut failed = Vec::new();
    for mut k in kids {
        let st = wait_child(&mut k, Duration::from_secs(330));
        if !st.success() {
            failed.push(format!("{st:?}: {}", stderr_of(&mut k).trim()));
        }
    }
    eprintln!("postgres: {n} waiters ran in {:?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "{} of {n} waiters failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let got: u32 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, n, "lost updates: sections overlapped");
}
