//! Waiting when the server misbehaves: a reply that comes too late, a server
//! out of connections. (A server restarted under a waiter, or that stops
//! answering as the job ends: tests/faults.rs, on every backend that can.)
//! Each case starts its own servers, since it breaks them.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::mariadb::MariaDb;
use common::proxy::LateReply;
use common::*;

/// `dlock ARGS` through `url` under the test's prefix.
fn via(ctx: &Ctx, url: &str, args: &[&str]) -> Command {
    let mut c = dlock(url);
    c.env("DLOCK_PREFIX", &ctx.prefix).args(args);
    c
}

/// An acquire whose reply comes after --connect-timeout, with no --wait:
/// dlock fails (69), and the lock the server granted to that request is
/// released, not left held under a token nobody knows.
fn late_reply_without_wait_leaves_the_lock_free(ctx: &Ctx, proxy_url: &str, proxy: &LateReply) {
    let o = run(via(
        ctx,
        proxy_url,
        &["--connect-timeout", "1s", "acquire", "--json", "late0"],
    ));
    assert!(proxy.fired.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    let st = ctx.status_json(&["late0"]);
    assert_eq!(
        st["locks"][0]["held"], false,
        "the lock stayed held under an unknown token: {st}"
    );
}

/// The same with --wait: dlock tries again with the same token, finds the
/// lock its first request took and reports it as a new acquisition with the
/// fence the server holds.
fn late_reply_with_wait_reports_the_grant(ctx: &Ctx, proxy_url: &str, proxy: &LateReply) {
    let o = run(via(
        ctx,
        proxy_url,
        &[
            "--connect-timeout",
            "1s",
            "acquire",
            "--json",
            "--wait",
            "10s",
            "late1",
        ],
    ));
    assert!(proxy.fired.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let st = ctx.status_json(&["late1"]);
    let lock = &st["locks"][0];
    assert_eq!(lock["held"], true, "{st}");
    let token = got["token"].as_str().unwrap();
    assert_eq!(
        lock["token_id"].as_str().unwrap(),
        &token[..8],
        "{st} {got}"
    );
    assert_eq!(lock["fence"], got["fence"], "{st} {got}");
    assert_eq!(
        got["extended"], false,
        "a fresh token was reported as extended: {got}"
    );
    let r = ctx.run(&["release", "late1", "--token", token]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
}

const LATE: Duration = Duration::from_secs(3);

#[cfg(feature = "redis")]
#[test]
fn redis_late_acquire_reply_without_wait_leaves_the_lock_free() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    // Load the script first, so that the held-back request is the one that takes the lock.
    let t = ctx.acquire("warm", "10s");
    assert_eq!(code(&ctx.run(&["release", "warm", "--token", &t])), 0);
    let p = LateReply::start(r.port, b"{late0}:lease", LATE);
    let url = format!("redis://127.0.0.1:{}/0", p.port);
    late_reply_without_wait_leaves_the_lock_free(&ctx, &url, &p);
}

#[cfg(feature = "redis")]
#[test]
fn redis_late_acquire_reply_with_wait_is_found_again() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let t = ctx.acquire("warm", "10s");
    assert_eq!(code(&ctx.run(&["release", "warm", "--token", &t])), 0);
    let p = LateReply::start(r.port, b"{late1}:lease", LATE);
    let url = format!("redis://127.0.0.1:{}/0", p.port);
    late_reply_with_wait_reports_the_grant(&ctx, &url, &p);
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_late_acquire_reply_with_and_without_wait() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    // The row of a new name is created by an INSERT: the request that takes the lock.
    let p = LateReply::start(db.port, b"INSERT IGNORE", LATE);
    let url = db
        .url()
        .replace(&format!(":{}/", db.port), &format!(":{}/", p.port));
    late_reply_without_wait_leaves_the_lock_free(&ctx, &url, &p);
    let p = LateReply::start(db.port, b"INSERT IGNORE", LATE);
    let url = db
        .url()
        .replace(&format!(":{}/", db.port), &format!(":{}/", p.port));
    late_reply_with_wait_reports_the_grant(&ctx, &url, &p);
}

/// Twice as many waiters as the server takes connections: the ones it
/// refuses back off and come again, and every one runs its section once.
#[cfg(feature = "mysql")]
#[test]
fn mysql_more_waiters_than_connections_all_run() {
    let db = Arc::new(MariaDb::start_with(&["--max-connections=20"]));
    let ctx = Ctx::new(db.clone());
    let counter = ctx.path("counter");
    std::fs::write(&counter, "0").unwrap();
    let section = format!(
        "n=$(cat '{c}'); n=$((n+1)); printf %s \"$n\" > '{c}.tmp'; mv '{c}.tmp' '{c}'",
        c = counter.display()
    );
    let n = 40;
    let kids: Vec<_> = (0..n)
        .map(|_| {
            spawn(ctx.cmd(&[
                "exec", "--wait", "60s", "counter", "--", "sh", "-c", &section,
            ]))
        })
        .collect();
    let mut failed = Vec::new();
    for mut k in kids {
        let st = wait_child(&mut k, Duration::from_secs(90));
        if !st.success() {
            let mut err = String::new();
            use std::io::Read;
            k.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            failed.push(format!("{st:?}: {}", err.trim()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} waiters failed: {failed:?}",
        failed.len()
    );
    let got: u32 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, n, "lost updates: sections overlapped");
}
