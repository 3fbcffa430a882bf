//! PostgreSQL backend under faults: the postmaster killed, the holder's
//! session terminated, the lease table dropped, more waiters than the
//! server takes connections; plus what is specific to this backend (its
//! table and schema, waiting server-side, TLS, one-line errors). Tests that
//! kill or pause a server start their own.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mariadb::{read_i64, recorder};
use common::postgres::{wake_key, Postgres, USER};
use common::*;

/// The stored expiry of `name` under the test's prefix, by the server's clock.
fn expires_us(db: &Postgres, ctx: &Ctx, name: &str) -> i64 {
    db.sql(&format!(
        "SELECT expires_us FROM {}_leases WHERE name = '{name}'",
        ctx.prefix
    ))
    .parse()
    .unwrap()
}

/// The server process holding advisory lock `key`, if any.
fn wake_holder(db: &Postgres, key: i64) -> String {
    let k = key as u64;
    db.sql(&format!(
        "SELECT coalesce(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory' \
         AND granted AND classid = {} AND objid = {} AND objsubid = 1",
        k >> 32,
        k & 0xffff_ffff
    ))
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn exec_recorder(ctx: &Ctx, lease: &str, tag: &str) -> std::process::Child {
    spawn(ctx.cmd(&[
        "exec",
        "--lease",
        lease,
        "job",
        "--",
        "sh",
        "-c",
        &recorder(ctx, tag),
    ]))
}

#[test]
fn postmaster_killed_during_exec_stops_the_command_before_its_lease_ends() {
    let db = Arc::new(Postgres::start());
    let ctx = Ctx::new(db.clone());
    let mut a = exec_recorder(&ctx, "3s", "a");
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    db.kill();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("lost"), "{err}");
    let a_end = read_i64(&ctx.path("a.end"));

    db.restart();
    // Nothing renewed the lease after the kill, so this is when it ended.
    let expiry = expires_us(&db, &ctx, "job");
    assert!(
        a_end < expiry,
        "the command ran until {a_end}, past the lease's end at {expiry}"
    );
    eprintln!(
        "postgres: command stopped {} ms before the server-side end of its 3s lease",
        (expiry - a_end) / 1000
    );
    // The next holder gets the lock once it expired, and never overlaps.
    std::fs::write(ctx.path("b.stop"), "").unwrap();
    let o = ctx.run(&[
        "exec",
        "--wait",
        "20s",
        "job",
        "--",
        "sh",
        "-c",
        &recorder(&ctx, "b"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let b_start = read_i64(&ctx.path("b.start"));
    assert!(
        b_start > a_end,
        "b started at {b_start}, a ended at {a_end}"
    );
    assert!(read_i64(&ctx.path("b.fence")) > read_i64(&ctx.path("a.fence")));
}

#[test]
fn terminated_session_is_replaced_and_renewals_go_on() {
    let db = Arc::new(Postgres::start());
    let ctx = Ctx::new(db.clone());
    let mut a = exec_recorder(&ctx, "2s", "a");
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    let key = wake_key(&ctx, "job");
    let first = wake_holder(&db, key);
    assert_ne!(first, "0", "the live holder keeps its wake lock");
    let killed = db.sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{USER}'"
    ));
    assert_eq!(killed, "1", "one session: the holder's");
    let before = expires_us(&db, &ctx, "job");
    wait_until(
        "a renewal on a new session",
        Duration::from_secs(10),
        || {
            std::thread::sleep(Duration::from_millis(20));
            expires_us(&db, &ctx, "job") > before
        },
    );
    wait_until("the wake lock taken again", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(20));
        let now = wake_holder(&db, key);
        now != "0" && now != first
    });
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(0), "the command ran to its end: {err}");
}

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
