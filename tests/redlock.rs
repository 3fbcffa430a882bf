//! Redlock over five redis-servers: nodes killed, stopped and restarted
//! empty under a holder, and fences across all of it.

mod common;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redlock::RedlockSet;
use common::*;

/// `acquire NAME --json` then release: the fence handed out.
fn grant(ctx: &Ctx, name: &str) -> u64 {
    let o = ctx.run(&["acquire", name, "--json", "--lease", "30s"]);
    assert_eq!(code(&o), 0, "acquire {name}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tok = v["token"].as_str().unwrap();
    let r = ctx.run(&["release", name, "--token", tok]);
    assert_eq!(code(&r), 0, "release {name}: {}", stderr(&r));
    v["fence"].as_u64().unwrap()
}

/// An `exec` holder that says when it runs, then waits for a line.
fn exec_holder(ctx: &Ctx, name: &str, lease: &str) -> (Child, Fifo) {
    let ready = Fifo::new(ctx.dir.path(), &format!("{name}.ready"));
    let go = Fifo::new(ctx.dir.path(), &format!("{name}.go"));
    let script = format!(
        "echo up > '{}'; read x < '{}'",
        ready.path.display(),
        go.path.display()
    );
    let child = spawn(ctx.cmd(&["exec", "--lease", lease, name, "--", "sh", "-c", &script]));
    ready.read_line(Duration::from_secs(20));
    (child, go)
}

fn pttl(r: &Redis, key: &str) -> i64 {
    r.cli(&["pttl", key]).parse().unwrap_or(-2)
}

#[test]
fn killing_two_of_five_keeps_the_holder_running() {
    let set = Arc::new(RedlockSet::start(5));
    let ctx = Ctx::new(set.clone());
    let key = format!("{}:{{job}}:lease", ctx.prefix);
    let (mut holder, go) = exec_holder(&ctx, "job", "2s");
    set.nodes[0].stop();
    set.nodes[1].stop();
    let killed = Instant::now();
    // The leases on the live nodes only run down unless renewed: a TTL
    // near the full 2 s well after the kill comes from a renewal that a
    // majority of three took.
    wait_until(
        "a renewal by three of five",
        Duration::from_secs(10),
        || killed.elapsed() > Duration::from_secs(1) && pttl(&set.nodes[2], &key) > 1700,
    );
    wait_until("a second renewal", Duration::from_secs(10), || {
        killed.elapsed() > Duration::from_secs(2) && pttl(&set.nodes[3], &key) > 1700
    });
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder kept running"
    );
    go.write_line("done");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "exec ends as its command did");
    assert!(!ctx.is_held("job"), "released on the live nodes");
}

#[test]
fn stopping_three_of_five_stops_the_command_before_the_validity_ends() {
    let set = Arc::new(RedlockSet::start(5));
    let ctx = Ctx::new(set.clone());
    let key = format!("{}:{{job}}:lease", ctx.prefix);
    let (mut holder, _go) = exec_holder(&ctx, "job", "2s");
    for n in &set.nodes[..3] {
        n.pause();
    }
    let paused = Instant::now();
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let stopped_after = paused.elapsed();
    // Whatever the last renewal that reached a majority was, its leases on
    // the live nodes have not run out yet: the command was stopped first.
    let left: Vec<i64> = set.nodes[3..].iter().map(|n| pttl(n, &key)).collect();
    for n in &set.nodes[..3] {
        n.resume();
    }
    assert_eq!(st.code(), Some(79), "a lost majority stops the command");
    assert!(
        left.iter().all(|t| *t > 0),
        "stopped before the leases ended: {left:?}"
    );
    eprintln!("stopped {stopped_after:?} after 3 of 5 nodes stopped; the live nodes' leases had {left:?} ms left");
}

#[test]
fn fences_grow_across_restarts_that_lost_data() {
    let set = Arc::new(RedlockSet::start(5));
    let ctx = Ctx::new(set.clone());
    let mut fences: Vec<u64> = (0..3).map(|_| grant(&ctx, "f")).collect();
    // A minority forgets everything: every majority still has a node that
    // remembers the last fence.
    set.nodes[0].restart_empty();
    set.nodes[1].restart_empty();
    fences.extend((0..3).map(|_| grant(&ctx, "f")));
    // A majority forgets everything: fences start again from the nodes' clocks.
    for n in &set.nodes[2..] {
        n.restart_empty();
    }
    fences.extend((0..3).map(|_| grant(&ctx, "f")));
    let o = ctx.run(&["exec", "f", "--", "sh", "-c", "printf %s \"$DLOCK_FENCE\""]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    fences.push(stdout(&o).parse().unwrap());
    assert!(fences.windows(2).all(|w| w[1] > w[0]), "{fences:?}");
}

#[test]
fn a_fence_from_a_node_ahead_is_written_back_to_a_majority() {
    // Node 0's counter stands far ahead (a clock that ran fast, say): the
    // fence of a grant is the largest proposal, 4·10^15. A later majority
    // without node 0 would propose only its clocks' µs (~1.8·10^15) but for
    // the write-back that put 4·10^15 on a majority first. (Lua counts in
    // doubles: fences stay below 2^53, which the µs clock reaches in 2255.)
    let set = Arc::new(RedlockSet::start(5));
    let ctx = Ctx::new(set.clone());
    let fence_key = format!("{}:{{w}}:fence", ctx.prefix);
    let ahead = 4_000_000_000_000_000u64;
    set.nodes[0].cli(&["set", &fence_key, &ahead.to_string()]);
    let first = grant(&ctx, "w");
    assert_eq!(first, ahead + 1);
    set.nodes[0].stop();
    let second = grant(&ctx, "w");
    assert!(second > first, "fence {second} after {first}");
}

#[test]
fn redlock_refuses_lock_kinds_and_bad_urls() {
    let set = RedlockSet::shared();
    let ctx = Ctx::new(set.clone());
    for flag in [&["--shared"][..], &["--slots", "3"], &["--fair"]] {
        let mut args = vec!["acquire", "k"];
        args.extend_from_slice(flag);
        let o = ctx.run(&args);
        assert_eq!(code(&o), 2, "{flag:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("redlock backend does not support --shared"),
            "{}",
            stderr(&o)
        );
    }
    let p: Vec<u16> = set.nodes.iter().map(|n| n.port).collect();
    for (url, msg) in [
        (
            format!("redlock://127.0.0.1:{},127.0.0.1:{}", p[0], p[1]),
            "names 2",
        ),
        (
            format!(
                "redlock://127.0.0.1:{0},127.0.0.1:{0},127.0.0.1:{1}",
                p[0], p[1]
            ),
            "named twice",
        ),
        (
            "redlock://a:1,b:2,c:3/x".to_string(),
            "not a database number",
        ),
    ] {
        let mut c = dlock(&url);
        c.arg("status");
        let o = run(c);
        assert_eq!(code(&o), 2, "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{url}: {}", stderr(&o));
    }
}

#[test]
fn two_stopped_nodes_cost_an_acquisition_only_their_timeout() {
    let set = Arc::new(RedlockSet::start(5));
    let ctx = Ctx::new(set.clone());
    set.nodes[3].pause();
    set.nodes[4].pause();
    let t = Instant::now();
    // A 2 s lease: nodes get a 100 ms timeout each, in parallel.
    let o = ctx.run(&["acquire", "slow", "--lease", "2s", "--json"]);
    let took = t.elapsed();
    set.nodes[3].resume();
    set.nodes[4].resume();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    eprintln!("acquired with 2 of 5 nodes stopped in {took:?}");
    assert!(v["fence"].as_u64().unwrap() > 0);
}

/// Two spellings of one server (a name and its address, or one server that
/// listens on two addresses) are refused: with the third server down, they
/// would make a "majority" of one server.
#[test]
fn one_server_named_twice_is_refused() {
    let set = RedlockSet::shared();
    let p: Vec<u16> = set.nodes.iter().map(|n| n.port).collect();
    let twice = Redis::with_args(&["--bind", "127.0.0.1", "127.0.0.2"]);
    let q = twice.port;
    for (url, a, b) in [
        (
            format!(
                "redlock://localhost:{0},127.0.0.1:{0},127.0.0.1:{1}",
                p[0], p[1]
            ),
            format!("'localhost:{}'", p[0]),
            format!("'127.0.0.1:{}'", p[0]),
        ),
        (
            format!("redlock://127.0.0.1:{q},127.0.0.1:{},127.0.0.2:{q}", p[1]),
            format!("'127.0.0.1:{q}'"),
            format!("'127.0.0.2:{q}'"),
        ),
    ] {
        for args in [&["status"][..], &["acquire", "twice", "--lease", "5s"]] {
            let mut c = dlock(&url);
            c.args(args);
            let o = run(c);
            let err = stderr(&o);
            assert_eq!(code(&o), 2, "{url} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(&a) && err.contains(&b) && err.contains("same"),
                "{url}: names both spellings: {err}"
            );
        }
        assert_eq!(twice.cli(&["dbsize"]), "0", "nothing was taken");
    }
}
