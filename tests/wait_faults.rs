//! Waiting and releasing when the server misbehaves: a reply that comes too
//! late, a server restarted under a waiter, a server out of connections, a
//! server that stops answering as the job ends. Each case starts its own
//! servers, since it breaks them.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A waiter whose server goes away and comes back while the lock is held:
/// it keeps waiting and takes the lock once it is free.
fn waiter_survives_a_restart(ctx: &Ctx, kill: impl FnOnce(), start: impl FnOnce()) {
    let started = ctx.path("started");
    let stop = ctx.path("stop");
    let job = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
        started.display(),
        stop.display()
    );
    let mut holder = spawn(ctx.cmd(&["exec", "--lease", "3s", "job", "--", "sh", "-c", &job]));
    wait_for_file(&started, Duration::from_secs(20));
    let mut waiter = spawn(ctx.cmd(&[
        "-v", "exec", "--wait", "40s", "job", "--", "sh", "-c", "echo ran",
    ]));
    let mut lines = Lines::of(&mut waiter);
    lines.expect("waiting", Duration::from_secs(20));
    kill();
    // Not gone with exit 69: it says it keeps waiting.
    lines.expect("still waiting", Duration::from_secs(20));
    std::fs::write(&stop, "").unwrap();
    let st = wait_child(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "the holder's job ended normally");
    start();
    let st = wait_child(&mut waiter, Duration::from_secs(40));
    let rest = lines.rest();
    eprintln!("waiter through a restart:\n{}", lines.seen.join("\n"));
    assert_eq!(st.code(), Some(0), "{rest}");
    let mut out = String::new();
    use std::io::Read;
    waiter
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "ran", "{rest}");
}

#[test]
fn redis_waiter_survives_a_server_restart() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    waiter_survives_a_restart(&ctx, || r.stop(), || r.restart_empty());
}

#[test]
fn mysql_waiter_survives_a_server_restart() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    waiter_survives_a_restart(&ctx, || db.kill(), || db.restart());
}

/// Twice as many waiters as the server takes connections: the ones it
/// refuses back off and come again, and every one runs its section once.
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

/// The server stops answering while a short job runs: dlock gives up
/// releasing after one --connect-timeout, in one line, and exits.
fn release_at_exit_takes_at_most_one_timeout(
    ctx: &Ctx,
    pause: impl FnOnce(),
    resume: impl FnOnce(),
) {
    let go = Fifo::new(ctx.dir.path(), "go");
    let started = ctx.path("started");
    let job = format!(
        "touch '{}'; read x < '{}'",
        started.display(),
        go.path.display()
    );
    let mut holder = spawn(ctx.cmd(&[
        "--connect-timeout",
        "2s",
        "exec",
        "--lease",
        "30s",
        "job",
        "--",
        "sh",
        "-c",
        &job,
    ]));
    wait_for_file(&started, Duration::from_secs(20));
    pause();
    let t0 = Instant::now();
    go.write_line("go");
    let st = wait_child(&mut holder, Duration::from_secs(30));
    let took = t0.elapsed();
    resume();
    let mut err = String::new();
    use std::io::Read;
    holder
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("release against a paused server: dlock exited {took:?} after the job (timeout 2s)");
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        took < Duration::from_millis(3000),
        "exit took {took:?}, more than 1.5x the 2s timeout: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("could not release 'job'"), "{err}");
}

#[test]
fn redis_release_at_exit_takes_at_most_one_timeout() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    release_at_exit_takes_at_most_one_timeout(&ctx, || r.pause(), || r.resume());
}

#[test]
fn mysql_release_at_exit_takes_at_most_one_timeout() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    release_at_exit_takes_at_most_one_timeout(&ctx, || db.pause(), || db.resume());
}
