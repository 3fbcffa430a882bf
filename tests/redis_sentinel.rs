//! Redis behind Sentinel: a failover while a lock is held, the
//! asynchronous-replication window, and the `wait_replicas` option.

use crate::common;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sentinel::SentinelSet;
use common::*;

/// `acquire NAME --json` then release: the fence handed out.
fn fence_of_one_grant(ctx: &Ctx, name: &str) -> u64 {
    let o = ctx.run(&["acquire", name, "--json", "--lease", "30s"]);
    assert_eq!(code(&o), 0, "acquire {name}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tok = v["token"].as_str().unwrap();
    let r = ctx.run(&["release", name, "--token", tok]);
    assert_eq!(code(&r), 0, "release {name}: {}", stderr(&r));
    v["fence"].as_u64().unwrap()
}

/// An `exec` holder that writes its fence to a pipe, then waits for a line
/// on a second pipe before exiting 0.
fn exec_holder(ctx: &Ctx, name: &str, lease: &str) -> (Child, u64, Fifo) {
    let fence = Fifo::new(ctx.dir.path(), &format!("{name}.fence"));
    let go = Fifo::new(ctx.dir.path(), &format!("{name}.go"));
    let script = format!(
        "echo \"$DLOCK_FENCE\" > '{}'; read x < '{}'",
        fence.path.display(),
        go.path.display()
    );
    let child = spawn(ctx.cmd(&["exec", "--lease", lease, name, "--", "sh", "-c", &script]));
    let f = fence.read_line(Duration::from_secs(20)).parse().unwrap();
    (child, f, go)
}

/// Kills the primary and waits until the sentinels name the replica.
fn fail_over(set: &SentinelSet) -> Instant {
    let (old, new) = (set.primary.port, set.replica.port);
    assert_eq!(set.primary_port(), old);
    set.primary.stop(); // SIGKILL
    let killed = Instant::now();
    wait_until(
        "the sentinels to promote the replica",
        Duration::from_secs(30),
        || set.primary_port() == new,
    );
    eprintln!(
        "failover: replica named primary {:?} after the kill",
        killed.elapsed()
    );
    killed
}

#[test]
fn a_held_lock_survives_a_failover_and_fences_keep_growing() {
    let set = Arc::new(SentinelSet::start());
    set.wait_ready_for_failover();
    let ctx = Ctx::new(set.clone());
    let mut seen: Vec<u64> = (0..3).map(|_| fence_of_one_grant(&ctx, "deploy")).collect();
    let (mut holder, held_fence, go) = exec_holder(&ctx, "deploy", "10s");
    seen.push(held_fence);
    // Let the lease reach the replica before the primary dies.
    wait_until(
        "the lease to reach the replica",
        Duration::from_secs(10),
        || {
            !set.replica
                .cli(&["--scan", "--pattern", &format!("{}:*:lease", ctx.prefix)])
                .is_empty()
        },
    );
    let killed = fail_over(&set);
    // A TTL near the full 10 s, read through the sentinels from the new
    // primary well after the kill, can only come from a renewal it took.
    wait_until(
        "a renewal on the new primary",
        Duration::from_secs(20),
        || {
            let v = ctx.status_json(&["deploy"]);
            let ttl = v["locks"][0]["ttl_ms"].as_u64().unwrap_or(0);
            killed.elapsed() > Duration::from_millis(2500) && ttl > 9000
        },
    );
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder kept running"
    );
    go.write_line("done");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(0),
        "exec kept its lease through the failover"
    );
    let before = *seen.iter().max().unwrap();
    let after: Vec<u64> = (0..3).map(|_| fence_of_one_grant(&ctx, "deploy")).collect();
    assert!(
        after[0] > before,
        "fence {} after {before}: {after:?}",
        after[0]
    );
    assert!(after.windows(2).all(|w| w[1] > w[0]), "{after:?}");
    eprintln!("fences before the failover {seen:?}, after {after:?}");
}

#[test]
fn an_unreplicated_lease_is_lost_in_a_failover_but_no_fence_goes_back() {
    let set = Arc::new(SentinelSet::start());
    set.wait_ready_for_failover();
    let ctx = Ctx::new(set.clone());
    let replicated = fence_of_one_grant(&ctx, "job");
    wait_until(
        "the fence counter to reach the replica",
        Duration::from_secs(10),
        || {
            !set.replica
                .cli(&["--scan", "--pattern", &format!("{}:*:fence", ctx.prefix)])
                .is_empty()
        },
    );
    // Cut the replica off: what the primary takes from now on never reaches it.
    set.replica.pause();
    set.primary.cli(&["client", "kill", "type", "replica"]);
    let mut seen = vec![replicated];
    seen.extend((0..3).map(|_| fence_of_one_grant(&ctx, "job")));
    let (mut holder, held_fence, _go) = exec_holder(&ctx, "job", "10s");
    seen.push(held_fence);
    set.primary.stop();
    set.replica.resume();
    wait_until(
        "the sentinels to promote the replica",
        Duration::from_secs(30),
        || set.primary_port() == set.replica.port,
    );
    // The new primary never saw the lease: the holder's next renewal says
    // so, and dlock stops the command (exit 79) instead of running on.
    let st = wait_child(&mut holder, Duration::from_secs(30));
    assert_eq!(st.code(), Some(79), "the lost lease stops the command");
    let next = fence_of_one_grant(&ctx, "job");
    let max = *seen.iter().max().unwrap();
    assert!(next > max, "fence {next} after {seen:?}");
    eprintln!("fences handed out by the old primary {seen:?}; first by the new one {next}");
}

#[test]
fn wait_replicas_refuses_a_lease_no_replica_acknowledged() {
    let set = Arc::new(SentinelSet::start().with_query("wait_replicas=1"));
    set.wait_ready_for_failover();
    let ctx = Ctx::new(set.clone());
    fence_of_one_grant(&ctx, "w");
    set.replica.pause();
    let o = ctx.run(&["acquire", "w", "--connect-timeout", "1s"]);
    set.replica.resume();
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("replicas asked for (wait_replicas) acknowledged it"),
        "{}",
        stderr(&o)
    );
    assert!(!ctx.is_held("w"), "a refused grant is released");
    fence_of_one_grant(&ctx, "w");
}

#[test]
fn sentinel_urls_are_checked_and_redacted() {
    let set = SentinelSet::shared();
    let ports: Vec<String> = set.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let hosts = ports.join(",");
    let cases = [
        (
            format!("redis+sentinel://{hosts}"),
            2,
            "the service name is missing",
        ),
        (
            format!("redis+sentinel://{hosts}/svc?x=1"),
            2,
            "unknown parameter 'x'",
        ),
        (
            format!("redis+sentinel://{hosts}/svc/x"),
            2,
            "not a database number",
        ),
        (
            format!("redis+sentinel://{hosts}/svc?wait_replicas=0"),
            2,
            "wait_replicas",
        ),
        (
            format!("redis+sentinel://:s3cret@{hosts}/nosuch"),
            69,
            "knows no service 'nosuch'",
        ),
    ];
    for (url, want, msg) in cases {
        let o = run({
            let mut c = dlock(&url);
            c.args(["status"]);
            c
        });
        assert_eq!(code(&o), want, "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{url}: {}", stderr(&o));
        assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    }
}

/// `redis://` at a Sentinel's port: the server knows no EVALSHA, and its
/// refusal echoed most of the request's token. dlock says it is a Sentinel
/// and which URL to write, and never prints a token fragment.
#[test]
fn a_redis_url_at_a_sentinel_says_use_redis_sentinel() {
    let set = SentinelSet::shared();
    let port = set.ports[0];
    let url = format!("redis://127.0.0.1:{port}");
    let token = "0123456789abcdef0123456789abcdef";
    for args in [
        vec!["status"],
        vec!["exec", "y", "--", "true"],
        vec!["release", "y", "--token", token],
    ] {
        let mut c = dlock(&url);
        c.args(&args);
        let o = run(c);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        let want = format!(
            "is a Redis Sentinel, not a Redis server; use redis+sentinel://127.0.0.1:{port}/{}",
            common::sentinel::SERVICE
        );
        assert!(err.contains(&want), "{args:?}: {err}");
        assert!(
            !err.contains("456789ab") && !err.contains("args"),
            "{args:?}: {err}"
        );
    }
}

/// The other way round: `redis+sentinel://` at a plain server printed its
/// refusal of SENTINEL with the arguments it echoed.
#[test]
fn a_sentinel_url_at_a_plain_server_says_so() {
    let r = Redis::start();
    let mut c = dlock(&format!("redis+sentinel://127.0.0.1:{}/svc", r.port));
    c.args(["status"]);
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("are not Sentinels") && err.contains("redis://HOST:PORT"),
        "{err}"
    );
    assert!(!err.contains("args"), "{err}");
}
