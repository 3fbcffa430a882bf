//! ZooKeeper under faults: hand-offs between processes, dead waiters, a
//! leader or a majority of the ensemble lost during `exec`, a holder cut off
//! from the ensemble, and an ensemble that lost its data. The ensemble tests
//! start three servers of their own (tick 500 ms) and run one at a time, so
//! that the timings they print are not two ensembles' elections fighting for
//! the CPU.

use crate::common;

use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::proxy::Cuttable;
use common::zookeeper::ZooKeeper;
use common::*;

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn ensemble() -> (Arc<ZooKeeper>, Ctx) {
    let zk = Arc::new(ZooKeeper::ensemble(3));
    let ctx = Ctx::new(zk.clone());
    (zk, ctx)
}

/// Starts `dlock -v ARGS` with stderr captured.
fn dlock_v(ctx: &Ctx, args: &[&str]) -> (Child, Lines) {
    let mut a = vec!["-v"];
    a.extend_from_slice(args);
    let mut child = spawn(ctx.cmd(&a));
    let lines = Lines::of(&mut child);
    (child, lines)
}

/// `dlock -v exec ARGS -- sh -c SCRIPT`, with stderr captured.
fn exec_sh(ctx: &Ctx, args: &[&str], script: &str) -> (Child, Lines) {
    let mut a = vec!["exec"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--", "sh", "-c", script]);
    dlock_v(ctx, &a)
}

/// Wall-clock nanoseconds, comparable with `date +%s%N` in a child.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A `date +%s%N` that a child wrote to `path`.
fn stamp(path: &std::path::Path) -> u128 {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.trim().parse().unwrap()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

#[test]
fn a_waiter_gets_the_lock_within_milliseconds_of_a_release() {
    let ctx = Ctx::new(ZooKeeper::shared());
    let tok = ctx.acquire("h", "60s");
    let got = ctx.path("got");
    let script = format!("date +%s%N > '{}'", got.display());
    let (mut w, mut lines) = exec_sh(&ctx, &["--wait", "30s", "h"], &script);
    lines.expect("queued for lock 'h'", Duration::from_secs(10));
    let released = now_ns();
    assert_eq!(code(&ctx.run(&["release", "h", "--token", &tok])), 0);
    assert!(wait_child(&mut w, Duration::from_secs(30)).success());
    let handoff = ms(stamp(&got) - released);
    eprintln!(
        "hand-off: the waiter's command started {handoff:.1} ms after `dlock release` was started"
    );
    // A session timeout is 4 s: a waiter woken by anything but the release would be far later.
    assert!(handoff < 1000.0, "hand-off took {handoff:.1} ms");
}

/// `release --force` stops an `exec` holder at once (it watches its lock's
/// node), naming who broke the lock.
#[test]
fn a_forced_release_stops_the_exec_holder_at_once() {
    let ctx = Ctx::new(ZooKeeper::shared());
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!("echo go > '{}'; sleep 120 & wait", ready.path.display());
    let (mut holder, mut lines) = exec_sh(&ctx, &["--lease", "60s", "fr"], &script);
    ready.read_line(Duration::from_secs(30));
    let forced = Instant::now();
    assert_eq!(code(&ctx.run(&["release", "fr", "--force"])), 0);
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let after = forced.elapsed();
    let err = lines.rest();
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("was broken with --force by "), "{err}");
    eprintln!("a forced release stopped the holder's dlock {after:?} later (lease 60 s)");
    // Without the watch, the next renewal (20 s) would have been the first to notice.
    assert!(after < Duration::from_secs(10), "{after:?}");
}

/// A token whose lease was broken hears who broke it when it renews or releases.
#[test]
fn a_broken_token_is_told_who_broke_it() {
    let ctx = Ctx::new(ZooKeeper::shared());
    let tok = ctx.acquire("bk", "60s");
    assert_eq!(code(&ctx.run(&["release", "bk", "--force"])), 0);
    let o = ctx.run(&["renew", "bk", "--token", &tok, "--lease", "60s"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was broken with --force by "),
        "{}",
        stderr(&o)
    );
    let other = ctx.acquire("bk", "60s");
    let o = ctx.run(&["release", "bk", "--token", &tok]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("is now held by"), "{}", stderr(&o));
    assert_eq!(code(&ctx.run(&["release", "bk", "--token", &other])), 0);
}

/// `zk://user:pass@…` authenticates with the digest scheme and keeps
/// dlock's nodes to that user; no password is ever printed.
#[test]
fn digest_credentials_keep_the_nodes_to_their_user() {
    let zk = ZooKeeper::shared();
    let ctx = Ctx::new(zk.clone());
    let url = |cred: &str| format!("zk://{cred}@127.0.0.1:{}", zk.port(0));
    let as_user = |cred: &str, args: &[&str]| {
        let mut c = ctx.cmd(args);
        c.env("DLOCK_URL", url(cred));
        run(c)
    };
    let o = as_user("alice:s3cret-pw", &["acquire", "auth"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let tok = stdout(&o).trim().to_string();
    let o = as_user("alice:s3cret-pw", &["status", "--json"]);
    let loc = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["location"].clone();
    assert_eq!(loc, format!("zk://alice:***@127.0.0.1:{}", zk.port(0)));
    for cred in ["bob:other-pw", "alice:wrong-pw"] {
        let o = as_user(cred, &["acquire", "auth"]);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{err}");
        assert!(err.contains("not authorized"), "{err}");
        assert!(!err.contains("-pw") && err.contains(":***@"), "{err}");
    }
    // Without credentials, nothing under the prefix is readable either.
    let o = ctx.run(&["status", "auth"]);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    let o = as_user("alice:s3cret-pw", &["release", "auth", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Four processes that all want the lock at once get it one after the
/// other, each right after the one before released it: nobody waits for
/// the session of a process that has exited.
#[test]
fn processes_hand_the_lock_on_without_waiting_for_sessions() {
    let ctx = Ctx::new(ZooKeeper::shared());
    let kids: Vec<(Child, Lines)> = (0..4)
        .map(|i| {
            let script = format!(
                "date +%s%N > '{d}/start{i}'; sleep 0.1; date +%s%N > '{d}/end{i}'",
                d = ctx.dir.path().display()
            );
            exec_sh(&ctx, &["--wait", "forever", "chain"], &script)
        })
        .collect();
    for (mut k, _) in kids {
        assert!(wait_child(&mut k, Duration::from_secs(60)).success());
    }
    let mut spans: Vec<(u128, u128)> = (0..4)
        .map(|i| {
            (
                stamp(&ctx.path(&format!("start{i}"))),
                stamp(&ctx.path(&format!("end{i}"))),
            )
        })
        .collect();
    spans.sort();
    let gaps: Vec<f64> = spans.windows(2).map(|w| ms(w[1].0 - w[0].1)).collect();
    eprintln!("gaps between one command's end and the next one's start: {gaps:.1?} ms");
    for g in &gaps {
        assert!(*g > 0.0, "two commands overlapped: {spans:?}");
        assert!(*g < 1000.0, "a hand-off took {g:.1} ms: {gaps:?}");
    }
}

/// A waiter stopped with SIGTERM leaves the queue as it exits, so the one
/// behind it is not held up at all; one that is SIGKILLed holds it up until
/// the server expires its session (4 s asked, on a 500 ms tick).
#[test]
fn dead_waiters_leave_the_queue() {
    let _serial = one_at_a_time();
    let (_zk, ctx) = ensemble();
    // SIGKILL: the session timeout, a tick of the server's expiry buckets, and slack.
    for (sig, bound_ms) in [
        (libc::SIGTERM, 1000.0),
        (libc::SIGKILL, 4000.0 + 500.0 + 1500.0),
    ] {
        let name = format!("dq{sig}");
        let tok = ctx.acquire(&name, "60s");
        let (mut dead, mut dl) = dlock_v(&ctx, &["acquire", "--wait", "60s", &name]);
        dl.expect("queued for lock", Duration::from_secs(10));
        let got = ctx.path(&format!("got{sig}"));
        let script = format!("date +%s%N > '{}'", got.display());
        let (mut next, mut nl) = exec_sh(&ctx, &["--wait", "60s", &name], &script);
        nl.expect("queued for lock", Duration::from_secs(10));
        let killed = now_ns();
        signal(dead.id(), sig);
        let _ = dead.wait();
        assert_eq!(code(&ctx.run(&["release", &name, "--token", &tok])), 0);
        assert!(wait_child(&mut next, Duration::from_secs(30)).success());
        let after = ms(stamp(&got) - killed);
        eprintln!("the waiter behind one killed by signal {sig} got the lock {after:.0} ms after the kill");
        assert!(after < bound_ms, "{after:.0} ms (bound {bound_ms} ms)");
    }
}

/// `--fair` waiters whose tickets are in another order than their places in
/// the queue of nodes (here: the first one's ticket is dropped, and it takes
/// a new one at the back) leave the lock's node alone while it is held, and
/// are served in the tickets' order. The first in the nodes' order and the
/// first in the tickets' both used to try at every change of the node, and
/// each try rewrote the node: they woke each other in a loop, hundreds of
/// requests a second for as long as the lock was held.
#[test]
fn fair_waiters_out_of_node_order_do_not_wake_each_other_in_a_loop() {
    use crate::kinds::{queued, release, take, token};
    let _serial = one_at_a_time();
    let zk = Arc::new(ZooKeeper::ensemble(1));
    let ctx = Ctx::new(zk.clone());
    let holder = token(&take(&ctx, "fo", &[]));
    let waiter = |tok: &str, ahead: u64| {
        let args = ["acquire", "--fair", "--wait", "30s", "--token", tok, "fo"];
        let mut kid = spawn(ctx.cmd(&args));
        wait_until(&format!("{tok} to queue"), Duration::from_secs(10), || {
            crate::kinds::still_waiting(&mut kid);
            queued(&ctx, "fo") > ahead
        });
        kid
    };
    let mut a = waiter("tok-a", 0);
    let mut b = waiter("tok-b", 1);
    // a's ticket goes; a takes a new one, behind b's, at its next try.
    assert_eq!(code(&ctx.run(&["release", "fo", "--token", "tok-a"])), 3);
    wait_until("a to queue again", Duration::from_secs(10), || {
        queued(&ctx, "fo") == 2
    });
    let before = zk.packets_received();
    // A rate over a window: nothing to await but time.
    std::thread::sleep(Duration::from_millis(1500));
    let requests = zk.packets_received() - before;
    eprintln!("requests in 1.5 s while two fair waiters wait: {requests}");
    assert!(
        requests < 60,
        "{requests} requests in 1.5 s: the waiters woke each other"
    );
    release(&ctx, "fo", &holder);
    assert!(wait_child(&mut b, Duration::from_secs(20)).success());
    crate::kinds::still_waiting(&mut a);
    release(&ctx, "fo", "tok-b");
    assert!(wait_child(&mut a, Duration::from_secs(20)).success());
    release(&ctx, "fo", "tok-a");
}

/// Runs `exec --lease LEASE NAME` with a command that records its fence and
/// start, signals `ready`, and on SIGTERM records when it was stopped.
fn long_exec(ctx: &Ctx, url: Option<&str>, lease: &str, name: &str) -> (Child, Lines) {
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let d = ctx.dir.path().display();
    let script = format!(
        "trap 'date +%s%N > \"{d}/stopped\"; exit 0' TERM; echo \"$DLOCK_FENCE\" > '{d}/fence'; \
         echo go > '{r}'; sleep 120 & wait",
        r = ready.path.display()
    );
    let a = [
        "-v", "exec", "--lease", lease, name, "--", "sh", "-c", &script,
    ];
    let mut c = ctx.cmd(&a);
    if let Some(u) = url {
        c.env("DLOCK_URL", u);
    }
    let mut child = spawn(c);
    let lines = Lines::of(&mut child);
    ready.read_line(Duration::from_secs(30));
    (child, lines)
}

fn fence_of(ctx: &Ctx) -> u64 {
    std::fs::read_to_string(ctx.path("fence"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The lease's end by the ensemble's clock (ms), as `status` reports it.
fn lease_end_ms(ctx: &Ctx, name: &str) -> Option<i64> {
    let v = ctx.status_json(&[name]);
    let ttl = v["locks"][0]["ttl_ms"].as_i64()?;
    Some(now_ms() + ttl)
}

/// The member of `zk` that process `pid` has a TCP connection to, from
/// its socket inodes and the kernel's TCP table.
fn connected_member(zk: &ZooKeeper, pid: u32) -> Option<usize> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || !inodes.iter().any(|i| i == f[9]) {
            return None;
        }
        let port = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
        (0..3).find(|&i| zk.port(i) == port)
    })
}

/// The lease while servers are lost: a failover (an election when the
/// leader goes) must fit in the 4 s that the holder waits before it stops
/// its command, even on a busy machine.
const LOSS_LEASE_MS: i64 = 6000;

/// Kills member `i` and waits until the holder of `name` renewed its lease
/// without it; returns how long that took.
fn survives_the_loss_of(zk: &ZooKeeper, ctx: &Ctx, name: &str, i: usize) -> Duration {
    let killed = now_ms();
    let start = Instant::now();
    zk.kill(i);
    // A lease renewed before the kill ends before killed + the lease.
    wait_until(
        &format!("a renewal after member {i} was lost"),
        Duration::from_secs(20),
        || lease_end_ms(ctx, name).is_some_and(|end| end > killed + LOSS_LEASE_MS),
    );
    start.elapsed()
}

/// The server that the holder's session is connected to goes, then (once
/// it is back) the leader: the holder renews through the others each time
/// and its command runs on.
#[test]
fn losing_a_server_or_the_leader_during_exec_changes_nothing() {
    let _serial = one_at_a_time();
    let (zk, ctx) = ensemble();
    let (mut dlock, mut lines) = long_exec(&ctx, None, &format!("{LOSS_LEASE_MS}ms"), "ld");
    let mine = connected_member(&zk, dlock.id()).expect("dlock's connection to a member");
    let took = survives_the_loss_of(&zk, &ctx, "ld", mine);
    eprintln!("the holder's server (member {mine}) killed: renewed through another {took:?} later");
    wait_until(
        "dlock connected to another server",
        Duration::from_secs(20),
        || connected_member(&zk, dlock.id()).is_some_and(|m| m != mine),
    );
    zk.start(mine);
    zk.await_quorum(Duration::from_secs(60));
    let leader = zk.leader().expect("a leader");
    let took = survives_the_loss_of(&zk, &ctx, "ld", leader);
    let new_leader = zk.leader().expect("a new leader");
    eprintln!("leader {leader} killed: leader now {new_leader}, the lease renewed {took:?} later");
    assert_ne!(leader, new_leader);
    signal(dlock.id(), libc::SIGTERM);
    let st = wait_child(&mut dlock, Duration::from_secs(20));
    let err = lines.rest();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(!err.contains("lost"), "{err}");
    assert!(!ctx.is_held("ld"), "released at the end");
}

#[test]
fn losing_the_majority_stops_the_command_before_the_lease_could_expire() {
    let _serial = one_at_a_time();
    let (zk, ctx) = ensemble();
    let (mut dlock, mut lines) = long_exec(&ctx, None, "3s", "mj");
    let fence = fence_of(&ctx);
    let leader = zk.leader().expect("a leader");
    let other = (0..3).find(|&i| i != leader).unwrap();
    let lost = now_ns();
    zk.kill(leader);
    zk.kill(other);
    let st = wait_child(&mut dlock, Duration::from_secs(20));
    let err = lines.rest();
    assert_eq!(st.code(), Some(79), "{err}");
    let stopped = ms(stamp(&ctx.path("stopped")) - lost);
    eprintln!("majority lost: the command was stopped {stopped:.0} ms later (lease 3000 ms)");
    assert!(stopped < 3000.0, "stopped {stopped:.0} ms after the loss");
    // Back with a majority, the lock works again with a greater fence.
    zk.start(leader);
    zk.start(other);
    zk.await_quorum(Duration::from_secs(60));
    let o = ctx.run(&["acquire", "--json", "--wait", "20s", "mj"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["fence"].as_u64().unwrap() > fence, "{v} after {fence}");
}

/// The holder cut off from every server (through proxies that stop
/// forwarding) is stopped before its lease ends, and a contender that
/// reaches the ensemble gets the lock only after that.
#[test]
fn a_partitioned_holder_is_stopped_before_a_contender_gets_in() {
    let _serial = one_at_a_time();
    let (zk, ctx) = ensemble();
    let proxies: Vec<Cuttable> = (0..3).map(|i| Cuttable::start(zk.port(i))).collect();
    let via = ZooKeeper::url_of(&proxies.iter().map(|p| p.port).collect::<Vec<_>>());
    let (mut dlock, mut lines) = long_exec(&ctx, Some(&via), "3s", "pt");
    let cut = now_ns();
    for p in &proxies {
        p.cut();
    }
    let got = ctx.path("contender");
    let script = format!("date +%s%N > '{}'", got.display());
    let (mut contender, _cl) = exec_sh(&ctx, &["--wait", "30s", "pt"], &script);
    let st = wait_child(&mut dlock, Duration::from_secs(20));
    let err = lines.rest();
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(wait_child(&mut contender, Duration::from_secs(30)).success());
    let stopped = ms(stamp(&ctx.path("stopped")) - cut);
    let entered = ms(stamp(&got) - cut);
    eprintln!(
        "partition: the holder's command was stopped {stopped:.0} ms after the cut, \
         the contender's started {entered:.0} ms after it (lease 3000 ms)"
    );
    assert!(stopped < 3000.0, "stopped {stopped:.0} ms after the cut");
    assert!(
        stopped < entered,
        "the contender ran while the holder's command did"
    );
}

/// An ensemble that lost all its data (new servers, same addresses) hands
/// out fences above every earlier one: they go on from the leader's clock.
#[test]
fn fences_grow_after_the_ensemble_lost_its_data() {
    let _serial = one_at_a_time();
    let (zk, ctx) = ensemble();
    let take = || {
        let o = ctx.run(&["acquire", "--json", "wipe"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let tok = v["token"].as_str().unwrap();
        assert_eq!(code(&ctx.run(&["release", "wipe", "--token", tok])), 0);
        v["fence"].as_u64().unwrap()
    };
    let (a, b) = (take(), take());
    assert!(b > a);
    zk.restart_empty();
    let c = take();
    eprintln!("fences {a}, {b}; after the wipe {c}");
    assert!(c > b, "fence {c} after {b}");
}

/// A refused port fails at once (it was retried until --connect-timeout),
/// and a port that speaks another protocol is named at once (it waited out
/// the timeout in silence).
#[test]
fn wrong_ports_fail_at_once_and_say_what_answers() {
    let redis = Redis::start();
    let closed = free_port();
    let cases = [
        (format!("zk://127.0.0.1:{closed}"), "connection refused", 1),
        (
            format!("zk://127.0.0.1:{}", redis.port),
            "does not speak the ZooKeeper protocol: it answers as Redis does",
            3,
        ),
    ];
    for (url, want, within) in cases {
        for args in [&["status"][..], &["exec", "x", "--", "true"]] {
            let mut c = dlock(&url);
            c.args(["--connect-timeout", "10s"]).args(args);
            let started = Instant::now();
            let o = run(c);
            let took = started.elapsed();
            let err = stderr(&o);
            assert_eq!(code(&o), 69, "{url}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
            assert!(err.contains(want), "{url}: expected '{want}' in: {err}");
            assert!(took < Duration::from_secs(within), "{url}: took {took:?}");
        }
    }
}
