//! etcd backend under faults, on a private 3-member cluster on loopback: the
//! leader killed while `exec` runs, the majority lost and restored, a waiter
//! killed while it waits, a waiter's member killed while it waits. The figures (how long after the loss the command
//! was stopped, against its lease) are printed for the README.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;

fn now_us() -> i64 {
    now_ms() * 1000
}

/// The cluster's URL with member `first` first: dlock talks to it until it fails.
fn url_from(e: &Etcd, first: usize) -> String {
    let mut order: Vec<usize> = (0..e.members.len()).collect();
    order.retain(|i| *i != first);
    order.insert(0, first);
    let hosts: Vec<String> = order
        .iter()
        .map(|i| format!("127.0.0.1:{}", e.members[*i].client))
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// The cluster under a URL chosen by the test.
struct At(String);

impl Server for At {
    fn url(&self) -> String {
        self.0.clone()
    }
}

/// The `ts` (ms since the epoch) of a JSON log line.
fn ts_ms(line: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let t = humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn the_leader_killed_during_exec_changes_nothing() {
    let e = Etcd::cluster(3);
    let leader = e.await_leader(Duration::from_secs(10));
    // dlock talks to the leader first, so the kill also takes its connection.
    let ctx = Ctx::new(Arc::new(At(url_from(&e, leader))));
    let mut c = ctx.cmd(&[
        "-v",
        "--log-format",
        "json",
        "exec",
        "--lease",
        "10s",
        "job",
    ]);
    c.args(["--", "sh", "-c", &recorder(&ctx, "a")]);
    let mut a = spawn(c);
    let mut log = Lines::of(&mut a);
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    e.kill(leader);
    let killed = now_ms();
    let next = e.await_leader(Duration::from_secs(20));
    assert_ne!(next, leader);
    // Two renewals after the kill: the lease lives on under the new leader.
    for _ in 0..2 {
        loop {
            let l = log.expect("\"renewed\"", Duration::from_secs(20));
            if ts_ms(&l) > killed {
                break;
            }
        }
    }
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let rest = log.rest();
    assert_eq!(st.code(), Some(0), "{rest}");
    assert!(!rest.contains("\"lost\""), "{rest}");
    let fence = read_i64(&ctx.path("a.fence"));
    let o = ctx.run(&[
        "exec",
        "job",
        "--",
        "sh",
        "-c",
        "printf %s \"$DLOCK_FENCE\"",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).parse::<i64>().unwrap() > fence);
}

#[test]
fn losing_the_majority_stops_the_command_before_its_lease_can_end() {
    let e = Etcd::cluster(3);
    e.await_leader(Duration::from_secs(10));
    let ctx = Ctx::new(Arc::new(At(e.url())));
    let mut c = ctx.cmd(&["-v", "--log-format", "json", "exec", "--lease", "4s", "job"]);
    c.args(["--", "sh", "-c", &recorder(&ctx, "a")]);
    let mut a = spawn(c);
    let mut log = Lines::of(&mut a);
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    // Let a renewal go through first, so the last one is known from the log.
    let mut last = ts_ms(&log.expect("\"renewed\"", Duration::from_secs(20)));
    e.kill(0);
    e.kill(1);
    let lost_at = now_us();
    let st = wait_child(&mut a, Duration::from_secs(30));
    let rest = log.rest();
    assert_eq!(st.code(), Some(79), "{rest}");
    for l in rest.lines().filter(|l| l.contains("\"renewed\"")) {
        last = last.max(ts_ms(l));
    }
    // The lease runs at least 4 s from its last renewal, which was sent
    // before it was logged (a round trip of about a millisecond here).
    let end = read_i64(&ctx.path("a.end"));
    let expiry = last * 1000 + 4_000_000;
    assert!(
        end < expiry,
        "the command ran until {end}, past the earliest end of the lease {expiry}"
    );
    eprintln!(
        "etcd: majority lost; command stopped {} ms after the loss, {} ms before the earliest end of its 4s lease",
        (end - lost_at) / 1000,
        (expiry - end) / 1000
    );

    // Quorum back: the lock works again, with a greater fence (after the
    // old lease, which the new leader refreshes, has run out).
    e.start(0);
    e.start(1);
    assert!(e.await_healthy(Duration::from_secs(30)));
    std::fs::write(ctx.path("b.stop"), "").unwrap();
    let o = ctx.run(&[
        "exec",
        "--wait",
        "30s",
        "job",
        "--",
        "sh",
        "-c",
        &recorder(&ctx, "b"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(read_i64(&ctx.path("b.start")) > end);
    assert!(read_i64(&ctx.path("b.fence")) > read_i64(&ctx.path("a.fence")));
}

#[test]
fn a_waiter_killed_while_waiting_leaves_the_queue_within_its_lease() {
    let e = Etcd::shared();
    let ctx = Ctx::new(e);
    let tok = ctx.acquire("q", "60s");
    let queued = |n: u64| {
        wait_until("waiters in the queue", Duration::from_secs(20), || {
            ctx.status_json(&["q"])["locks"][0]["queued"].as_u64() == Some(n)
        })
    };
    let mut first = spawn(ctx.cmd(&["acquire", "q", "--wait", "60s"]));
    queued(1);
    let mut second = spawn(ctx.cmd(&["acquire", "q", "--wait", "60s"]));
    queued(2);
    first.kill().unwrap();
    first.wait().unwrap();
    let released = Instant::now();
    assert_eq!(code(&ctx.run(&["release", "q", "--token", &tok])), 0);
    let st = wait_child(&mut second, Duration::from_secs(30));
    let took = released.elapsed();
    assert!(st.success());
    // Its key's lease (3 s), etcd's expiry check (0.5 s), and some slack.
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!(
        "etcd: the waiter behind a SIGKILLed one got the lock {} ms after the release",
        took.as_millis()
    );
}

#[test]
fn a_holder_cut_off_from_the_cluster_stops_before_the_next_one_starts() {
    let e = Etcd::cluster(3);
    e.await_leader(Duration::from_secs(10));
    // The holder reaches every member through a proxy that the test cuts.
    let proxies: Vec<proxy::Cuttable> = e
        .members
        .iter()
        .map(|m| proxy::Cuttable::start(m.client))
        .collect();
    let hosts: Vec<String> = proxies
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect();
    let holder = Ctx::new(Arc::new(At(format!("etcd://{}", hosts.join(",")))));
    let mut c = holder.cmd(&["exec", "--lease", "4s", "--connect-timeout", "1s", "job"]);
    c.args(["--", "sh", "-c", &recorder(&holder, "a")]);
    let mut a = spawn(c);
    wait_for_file(&holder.path("a.start"), Duration::from_secs(20));
    // The next one waits in the queue, on the same prefix, with a direct URL.
    let mut other = Ctx::new(Arc::new(At(e.url())));
    other.prefix = holder.prefix.clone();
    std::fs::write(holder.path("b.stop"), "").unwrap();
    let mut c = other.cmd(&["exec", "--wait", "30s", "job", "--"]);
    c.args(["sh", "-c", &recorder(&holder, "b")]);
    let mut b = spawn(c);
    wait_until("the next one to queue", Duration::from_secs(10), || {
        other.status_json(&["job"])["locks"][0]["queued"].as_u64() == Some(1)
    });
    for p in &proxies {
        p.cut();
    }
    let cut_at = now_us();
    let st = wait_child(&mut a, Duration::from_secs(30));
    assert_eq!(st.code(), Some(79));
    let st = wait_child(&mut b, Duration::from_secs(30));
    assert_eq!(st.code(), Some(0));
    let (a_end, b_start) = (
        read_i64(&holder.path("a.end")),
        read_i64(&holder.path("b.start")),
    );
    assert!(
        b_start > a_end,
        "b started at {b_start}, a ended at {a_end}"
    );
    assert!(read_i64(&holder.path("b.fence")) > read_i64(&holder.path("a.fence")));
    eprintln!(
        "etcd: holder cut off; its command stopped {} ms after the cut, {} ms before the next holder started",
        (a_end - cut_at) / 1000,
        (b_start - a_end) / 1000
    );
}

/// A waiter whose member dies keeps its place in the queue: the failure goes
/// to dlock's shared wait loop, which backs off and hands the wait back to
/// the backend, which takes over the key (and its lease) that it left there.
#[test]
fn a_waiter_whose_member_dies_keeps_its_place() {
    let e = Etcd::cluster(3);
    let leader = e.await_leader(Duration::from_secs(20));
    let member = (0..3).find(|i| *i != leader).unwrap();
    // The waiter talks to `member` first, so the kill breaks its watch.
    let ctx = Ctx::new(Arc::new(At(url_from(&e, member))));
    let holder = ctx.acquire("p", "60s");
    let tok = "keeps-its-place-1";
    let mut c = ctx.cmd(&["--log-format", "json", "acquire", "p", "--wait", "60s"]);
    c.args(["--token", tok]);
    let mut waiter = spawn(c);
    let mut log = Lines::of(&mut waiter);
    log.expect("\"waiting\"", Duration::from_secs(20));
    let key = format!("{}/p/{tok}", ctx.prefix);
    let place = || -> Option<u64> {
        let out = e.ctl(Some(leader), &["get", &key, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["kvs"][0]["create_revision"].as_u64()
    };
    let mut before = None;
    wait_until("the waiter's key", Duration::from_secs(10), || {
        before = place();
        before.is_some()
    });
    e.kill(member);
    log.expect("\"retrying\"", Duration::from_secs(20));
    // Longer than a waiter may go without a keep-alive (2 s): a place not kept alive would be dropped.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(place(), before, "the waiter lost its place");
    assert_eq!(code(&ctx.run(&["release", "p", "--token", &holder])), 0);
    let st = wait_child(&mut waiter, Duration::from_secs(30));
    assert!(st.success(), "{}", log.rest());
    let l = ctx.status_json(&["p"])["locks"][0].clone();
    assert_eq!(l["token_id"], &tok[..8], "{l}");
    assert_eq!(
        l["fence"].as_u64(),
        before,
        "the grant did not keep the place"
    );
}
