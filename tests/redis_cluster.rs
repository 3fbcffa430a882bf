//! Redis Cluster: names on every primary, `status` across them all, and a
//! slot that moves (MOVED) or is moving (ASK) under a holder.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::ClusterSet;
use common::*;

/// The node id of the server on `port`, as it calls itself.
fn node_id(set: &ClusterSet, port: u16) -> String {
    let n = set.nodes.iter().find(|n| n.port == port).unwrap();
    n.cli(&["cluster", "myid"])
}

fn node(set: &ClusterSet, port: u16) -> &Redis {
    set.nodes.iter().find(|n| n.port == port).unwrap()
}

#[test]
fn status_lists_locks_on_every_primary() {
    let set = ClusterSet::shared();
    let ctx = Ctx::new(set.clone());
    let names: Vec<String> = (0..12).map(|i| format!("job-{i}")).collect();
    let mut owners: Vec<u16> = names
        .iter()
        .map(|n| set.owner_port(&format!("{}:{{{n}}}:lease", ctx.prefix)))
        .collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 3, "the names spread over all three primaries");
    for n in &names {
        ctx.acquire(n, "30s");
    }
    let all = ctx.status_json(&[]);
    let mut listed: Vec<&str> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(all["backend"], "redis+cluster");
    let o = ctx.run(&["status", "--names-only"]);
    assert_eq!(stdout(&o).lines().count(), 12, "{}", stdout(&o));
}

/// Moves `slot` from node `from` to node `to` with its keys, as
/// `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, MIGRATE, NODE.
fn move_slot(set: &ClusterSet, slot: u16, from: u16, to: u16, keys_too: bool) {
    let (src, dst) = (node(set, from), node(set, to));
    let (src_id, dst_id) = (node_id(set, from), node_id(set, to));
    let slot = slot.to_string();
    assert_eq!(
        dst.cli(&["cluster", "setslot", &slot, "importing", &src_id]),
        "OK"
    );
    assert_eq!(
        src.cli(&["cluster", "setslot", &slot, "migrating", &dst_id]),
        "OK"
    );
    if !keys_too {
        return;
    }
    let keys = src.cli(&["cluster", "getkeysinslot", &slot, "100"]);
    for k in keys.lines().filter(|k| !k.is_empty()) {
        let port = to.to_string();
        let r = src.cli(&["migrate", "127.0.0.1", &port, k, "0", "5000"]);
        assert_eq!(r, "OK", "migrate {k}");
    }
    finish_move(set, &slot, &dst_id);
}

/// Tells every node who owns `slot` now.
fn finish_move(set: &ClusterSet, slot: &str, owner_id: &str) {
    for n in &set.nodes {
        assert_eq!(n.cli(&["cluster", "setslot", slot, "node", owner_id]), "OK");
    }
}

#[test]
fn a_holder_follows_its_slot_to_another_node() {
    // A cluster of its own: the test moves slots around.
    let set = Arc::new(ClusterSet::start());
    let ctx = Ctx::new(set.clone());
    let lease_key = format!("{}:{{moving}}:lease", ctx.prefix);
    let slot: u16 = set.nodes[0]
        .cli(&["cluster", "keyslot", &lease_key])
        .parse()
        .unwrap();
    let from = set.owner_port(&lease_key);
    let to = set
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != from)
        .unwrap();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let go = Fifo::new(ctx.dir.path(), "go");
    let script = format!(
        "echo up > '{}'; read x < '{}'",
        ready.path.display(),
        go.path.display()
    );
    let mut holder =
        spawn(ctx.cmd(&["exec", "--lease", "2s", "moving", "--", "sh", "-c", &script]));
    ready.read_line(Duration::from_secs(20));
    move_slot(&set, slot, from, to, true);
    let moved = std::time::Instant::now();
    assert_eq!(set.owner_port(&lease_key), to);
    // Renewals (every 2/3 s) now meet MOVED and must follow it. The moved
    // key kept its TTL, which only runs down: a TTL near the full 2 s on
    // the new node a second after the move can only come from a renewal.
    wait_until("a renewal on the new node", Duration::from_secs(10), || {
        let pttl: i64 = node(&set, to)
            .cli(&["pttl", &lease_key])
            .parse()
            .unwrap_or(-2);
        moved.elapsed() > Duration::from_secs(1) && pttl > 1700
    });
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder kept its lease"
    );
    go.write_line("done");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0));
    assert!(!ctx.is_held("moving"));
}

#[test]
fn a_new_lock_in_a_migrating_slot_follows_ask() {
    let set = Arc::new(ClusterSet::start());
    let ctx = Ctx::new(set.clone());
    let lease_key = format!("{}:{{asked}}:lease", ctx.prefix);
    let slot: u16 = set.nodes[0]
        .cli(&["cluster", "keyslot", &lease_key])
        .parse()
        .unwrap();
    let from = set.owner_port(&lease_key);
    let to = set
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != from)
        .unwrap();
    // The slot is migrating and the lock's keys are absent from the source:
    // the source answers ASK, and the importing node, asked, refuses a
    // script over several keys that it does not all have (TRYAGAIN). The
    // refusal is a clear, retryable error, and nothing is taken.
    move_slot(&set, slot, from, to, false);
    let o = ctx.run(&["acquire", "asked"]);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("moving this lock's slot"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    // A waiter tries again until the move is done.
    let mut waiter = spawn(ctx.cmd(&["acquire", "asked", "--wait", "30s"]));
    finish_move(&set, &slot.to_string(), &node_id(&set, to));
    let st = wait_child(&mut waiter, Duration::from_secs(30));
    assert!(st.success(), "the waiter took the lock after the move");
    assert!(
        node(&set, to)
            .cli(&["pttl", &lease_key])
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert!(ctx.is_held("asked"));
}

#[test]
fn cluster_urls_are_checked() {
    let set = ClusterSet::shared();
    let hosts: Vec<String> = set
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let hosts = hosts.join(",");
    for (url, msg) in [
        (format!("redis+cluster://{hosts}/1"), "no databases but 0"),
        (
            format!("redis+cluster://{hosts}?nope=1"),
            "unknown parameter 'nope'",
        ),
        (
            "redis+cluster://127.0.0.1:1,".to_string(),
            "a host is empty",
        ),
    ] {
        let mut c = dlock(&url);
        c.arg("status");
        let o = run(c);
        assert_eq!(code(&o), 2, "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{url}: {}", stderr(&o));
    }
    let dead = format!("redis+cluster://127.0.0.1:{}", free_port());
    let mut c = dlock(&dead);
    c.arg("status");
    let o = run(c);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(stderr(&o).contains("connection refused"), "{}", stderr(&o));
}

/// `redis://` at one node of a cluster: that node holds only some slots, so
/// names elsewhere got MOVED (exit 70, a false "went unanswered" line) and
/// `status` saw only that node's keys. dlock names the cluster instead.
#[test]
fn a_redis_url_at_one_cluster_node_says_use_redis_cluster() {
    let set = ClusterSet::shared();
    let port = set.nodes[0].port;
    let url = format!("redis://127.0.0.1:{port}/0");
    // A name whose slot another node owns, and one whose slot this node
    // owns (which it would serve, while failing the others).
    let find = |tag: &str, here: bool| {
        (0..100)
            .map(|i| format!("{tag}-{i}"))
            .find(|n| (set.owner_port(&format!("dlock:{{{n}}}:lease")) == port) == here)
            .unwrap()
    };
    let (name, owned) = (find("elsewhere", false), find("here", true));
    let prefix = format!("t{}owned", std::process::id());
    for args in [
        vec!["status"],
        vec!["status", name.as_str()],
        vec!["exec", name.as_str(), "--", "true"],
        vec!["acquire", name.as_str()],
        vec!["acquire", owned.as_str()],
        vec!["exec", owned.as_str(), "--", "true"],
        vec![
            "exec",
            "--wait",
            "10s",
            "--fair",
            owned.as_str(),
            "--",
            "true",
        ],
    ] {
        let mut c = dlock(&url);
        c.env("DLOCK_PREFIX", &prefix).args(&args);
        let t0 = std::time::Instant::now();
        let o = run(c);
        // Not a fault to wait out: refused at once, whatever --wait says.
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{args:?}");
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("is a Redis Cluster node")
                && err.contains(&format!("redis+cluster://127.0.0.1:{port}")),
            "{args:?}: {err}"
        );
    }
    // Nothing was left held on the node that owns the name.
    let mut c = dlock(&set.url());
    c.env("DLOCK_PREFIX", &prefix).args(["status", &owned]);
    assert_eq!(code(&run(c)), 1, "'{owned}' was left held");
}

/// The other way round: `redis+cluster://` at a server without cluster
/// mode said "ResponseError: This instance has cluster support disabled".
#[test]
fn a_cluster_url_at_a_plain_server_says_use_redis() {
    let r = Redis::start();
    let mut c = dlock(&format!("redis+cluster://127.0.0.1:{}", r.port));
    c.args(["status"]);
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let want = format!("is not in cluster mode; use redis://127.0.0.1:{}", r.port);
    assert!(err.contains(&want), "{err}");
}
