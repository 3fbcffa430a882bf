//! `--log-format json`: every line dlock writes to stderr is one JSON object
//! with a documented event name, the lock, the backend's location and a
//! timestamp. Each event of the documented list is produced here by the real
//! binary.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::mariadb::MariaDb;
use common::sqlite::Sqlite;
use common::{code, spawn, stderr, wait_child, Ctx, Fifo, Lines, Redis};
use serde_json::Value;

const README: &str = include_str!("../README.md");

/// Parses every stderr line and checks the fields every event carries.
fn events(stderr: &str, lock: Option<&str>) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| {
            let e: Value =
                serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}"));
            assert!(e["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
            assert!(e["level"].is_string() && e["message"].is_string(), "{l}");
            // Only a command line clap could not parse has no backend yet.
            assert!(
                e["location"].is_string() || e["event"] == "usage",
                "no location: {l}"
            );
            if let Some(name) = lock {
                assert_eq!(e["lock"], name, "{l}");
            }
            e
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `dlock --log-format json ARGS` and returns its events.
fn logged(ctx: &Ctx, args: &[&str], lock: Option<&str>) -> (i32, Vec<Value>) {
    let mut c = ctx.cmd(&["--log-format", "json"]);
    c.args(args);
    let o = common::run(c);
    (code(&o), events(&stderr(&o), lock))
}

/// The event names the README documents, from its table of events.
fn documented() -> BTreeSet<String> {
    let at = README
        .find("| event | when |")
        .expect("README.md has a table of JSON log events");
    README[at..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.split('`')
                .nth(1)
                .expect("event name in backquotes")
                .to_string()
        })
        .collect()
}

// It makes events on Redis, PostgreSQL (behind PgBouncer) and MariaDB.
#[cfg(all(feature = "redis", feature = "mysql", feature = "postgres"))]
#[test]
fn every_documented_event_is_produced_and_parses() {
    let mut seen = BTreeSet::new();
    let ctx = Ctx::new(Arc::new(Sqlite::new()));

    // usage: clap's own errors and dlock's later checks alike.
    for args in [&["acquire"][..], &["acquire", "u", "--lease", "banana"]] {
        let (rc, ev) = logged(&ctx, args, None);
        assert_eq!(rc, 2);
        assert_eq!(kinds(&ev), ["usage"]);
        seen.extend(kinds(&ev));
    }
    let mut c = ctx.cmd(&["acquire", "u", "--lease", "0"]);
    c.env("DLOCK_LOG_FORMAT", "json");
    let ev = events(&stderr(&common::run(c)), None);
    assert_eq!(kinds(&ev), ["usage"]);

    // acquired, renewed, child_exited, released.
    let (rc, ev) = logged(
        &ctx,
        &["exec", "--lease", "600ms", "ev", "-c", "sleep 0.5; exit 3"],
        Some("ev"),
    );
    assert_eq!(rc, 3);
    let k = kinds(&ev);
    for want in ["acquired", "renewed", "child_exited", "released"] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    seen.extend(k);

    // waiting, busy; then message and broken from release --force.
    let tok = ctx.acquire("held", "30s");
    let (rc, ev) = logged(
        &ctx,
        &["exec", "--wait", "100ms", "held", "--", "true"],
        Some("held"),
    );
    assert_eq!(
        (rc, kinds(&ev)),
        (75, vec!["waiting".into(), "busy".into()])
    );
    seen.extend(kinds(&ev));
    let (rc, ev) = logged(&ctx, &["release", "held", "--force"], Some("held"));
    assert_eq!((rc, kinds(&ev)), (0, vec!["broken".to_string()]));
    assert!(ev[0]["holder"]["pid"].as_u64().is_some(), "{ev:?}");
    seen.extend(kinds(&ev));
    let (_, ev) = logged(&ctx, &["release", "held", "--force"], Some("held"));
    assert_eq!(kinds(&ev), ["message"]);
    seen.extend(kinds(&ev));
    let (rc, ev) = logged(&ctx, &["release", "held", "--token", &tok], Some("held"));
    assert_eq!((rc, kinds(&ev)), (3, vec!["error".to_string()]));
    seen.extend(kinds(&ev));

    // held (--min-hold) and max_runtime.
    let (_, ev) = logged(
        &ctx,
        &["exec", "--min-hold", "1m", "mh", "--", "true"],
        Some("mh"),
    );
    seen.extend(kinds(&ev));
    assert!(kinds(&ev).contains(&"held".to_string()), "{ev:?}");
    let (rc, ev) = logged(
        &ctx,
        &["exec", "--max-runtime", "100ms", "mr", "--", "sleep", "10"],
        Some("mr"),
    );
    assert_eq!(rc, 124);
    seen.extend(kinds(&ev));

    // renewal_failed and lost: a Redis server that stops answering. The first
    // renewal (at 1s) times out at 1.3s, well before the deadline (2.1s).
    let redis = Arc::new(Redis::start());
    let rctx = Ctx::new(redis.clone());
    let ready = Fifo::new(rctx.dir.path(), "ready");
    let job = format!("echo go > '{}'; exec sleep 60", ready.path.display());
    let mut c = rctx.cmd(&[
        "--log-format",
        "json",
        "--connect-timeout",
        "300ms",
        "exec",
        "--lease",
        "3s",
        "rl",
        "-c",
    ]);
    c.arg(&job);
    let mut child = spawn(c);
    let mut lines = Lines::of(&mut child);
    ready.read_line(Duration::from_secs(10));
    redis.pause();
    let status = wait_child(&mut child, Duration::from_secs(10));
    redis.resume();
    assert_eq!(status.code(), Some(79));
    let ev = events(&lines.rest(), Some("rl"));
    let k = kinds(&ev);
    assert!(
        k.contains(&"renewal_failed".to_string()) && k.contains(&"lost".to_string()),
        "{k:?}"
    );
    seen.extend(k);

    // eviction_risk: a Redis server that may evict lock keys.
    let evicting = Arc::new(Redis::with_args(&[
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]));
    let ectx = Ctx::new(evicting);
    let (rc, ev) = logged(&ectx, &["-q", "exec", "er", "--", "true"], Some("er"));
    assert_eq!((rc, kinds(&ev)), (0, vec!["eviction_risk".to_string()]));
    seen.extend(kinds(&ev));

    // pooled: PostgreSQL behind PgBouncer in transaction mode, which runs
    // one client's statements on two server sessions in turn.
    let pg = common::postgres::Postgres::start();
    let bouncer = Arc::new(common::postgres::Bouncer::start(&pg));
    bouncer.warm(&pg);
    let pctx = Ctx::new(bouncer.clone());
    pctx.acquire("pb", "30s");
    // That dlock's last statement failed (it saw the pooler); had it left
    // before the rest of the reply came, PgBouncer would have closed that
    // server session, and this client's statements would all run on the one left.
    assert_eq!(
        bouncer.sessions(&pg, "%"),
        "2",
        "pgbouncer's server sessions"
    );
    let (rc, ev) = logged(&pctx, &["acquire", "pb", "--wait", "2s"], Some("pb"));
    assert_eq!(rc, 75, "{ev:?}");
    assert!(kinds(&ev).contains(&"pooled".to_string()), "{ev:?}");
    seen.extend(kinds(&ev));

    seen.extend(retrying_and_reconnected());
    seen.extend(release_failed());

    let docs = documented();
    let listed: BTreeSet<String> = dlock_events();
    assert_eq!(
        docs, listed,
        "README's event table and the code's list differ"
    );
    assert_eq!(
        seen, listed,
        "events listed but not produced here, or the reverse"
    );
}

/// The code's list: `EVENTS` in src/output.rs.
fn dlock_events() -> BTreeSet<String> {
    let src = include_str!("../src/output.rs");
    let at = src.find("pub const EVENTS").unwrap();
    let list = &src[at..src[at..].find("];").unwrap() + at];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// A waiter whose server goes away and comes back with the lock still held
/// (MariaDB keeps its rows across the restart), until the holder releases.
fn retrying_and_reconnected() -> Vec<String> {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    let tok = ctx.acquire("rr", "2m");
    let mut c = ctx.cmd(&[
        "--log-format",
        "json",
        "exec",
        "--wait",
        "60s",
        "rr",
        "--",
        "true",
    ]);
    c.stdout(std::process::Stdio::null());
    let mut child = spawn(c);
    let mut lines = Lines::of(&mut child);
    lines.expect("\"waiting\"", Duration::from_secs(10));
    db.kill();
    lines.expect("\"retrying\"", Duration::from_secs(10));
    db.restart();
    lines.expect("\"reconnected\"", Duration::from_secs(30));
    assert_eq!(code(&ctx.run(&["release", "rr", "--token", &tok])), 0);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let ev = events(&lines.rest(), Some("rr"));
    assert_eq!(status.code(), Some(0), "{ev:?}");
    let seen = lines.seen.iter().map(|l| events(l, Some("rr")));
    seen.flat_map(|e| kinds(&e)).collect()
}

/// Runs `exec --lease LEASE NAME` on a private Redis that is paused once the
/// job has started: the job then runs `tail`, which may wait for a line on
/// the "go" pipe, written after the pause. Returns the exit code and events.
fn exec_with_the_server_paused(lease: &str, name: &str, tail: &str) -> (Option<i32>, Vec<String>) {
    let redis = Arc::new(Redis::start());
    let ctx = Ctx::new(redis.clone());
    let (ready, go) = (
        Fifo::new(ctx.dir.path(), "ready"),
        Fifo::new(ctx.dir.path(), "go"),
    );
    let job = format!("echo up > '{}'; {tail}", ready.path.display());
    let mut c = ctx.cmd(&["--log-format", "json", "--connect-timeout", "1s", "exec"]);
    c.args(["--lease", lease, name, "-c", &job]);
    c.env("GO", &go.path);
    let mut child = spawn(c);
    let mut lines = Lines::of(&mut child);
    ready.read_line(Duration::from_secs(10));
    redis.pause();
    if tail.contains("$GO") {
        go.write_line("go");
    }
    let status = wait_child(&mut child, Duration::from_secs(20));
    redis.resume();
    (status.code(), kinds(&events(&lines.rest(), Some(name))))
}

/// A job that ends while its server does not answer.
fn release_failed() -> Vec<String> {
    let (code, k) = exec_with_the_server_paused("30s", "rf", "read x < \"$GO\"");
    assert_eq!(code, Some(0));
    assert!(k.contains(&"release_failed".to_string()), "{k:?}");
    k
}

/// A renewal that fails while the command is ending must not be logged
/// after it: the job is over, and only the release matters.
#[test]
fn no_renewal_talk_after_the_command_exited() {
    // Lease 3s: the first renewal goes out at 1s and, with the server paused,
    // fails at the deadline (2.1s); the command ends at 1.5s, in between.
    let (code, k) = exec_with_the_server_paused("3s", "rt", "sleep 1.5");
    assert_eq!(code, Some(0));
    let exited = k
        .iter()
        .position(|e| e == "child_exited")
        .expect("child_exited");
    assert!(
        !k[exited..].iter().any(|e| e.starts_with("renew")),
        "renewal events after the command exited: {k:?}"
    );
}

/// The hidden `keepalive` subcommand is dlock's own: no usage error offers
/// it, with or without a JSON log, from the environment or the command line.
#[test]
fn usage_errors_name_only_the_visible_subcommands() {
    let ctx = Ctx::new(Arc::new(Sqlite::new()));
    let bare = || {
        let mut c = std::process::Command::new(common::dlock_bin());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DLOCK_")) {
            c.env_remove(k);
        }
        c
    };
    let cases: Vec<(std::process::Command, bool)> = vec![
        (bare(), false),
        (
            {
                let mut c = bare();
                c.env("DLOCK_LOG_FORMAT", "json");
                c
            },
            true,
        ),
        (ctx.cmd(&["--log-format", "json"]), true),
        (ctx.cmd(&[]), false),
        (ctx.cmd(&["kepalive"]), false),
        (
            {
                let mut c = ctx.cmd(&["keep-alive"]);
                c.env("DLOCK_LOG_FORMAT", "json");
                c
            },
            true,
        ),
    ];
    for (c, json) in cases {
        let what = format!("{c:?}");
        let o = common::run(c);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        let msg = match json {
            true => events(&err, None)[0]["message"]
                .as_str()
                .unwrap()
                .to_string(),
            false => err,
        };
        assert!(
            msg.contains("acquire, release, status, exec, renew"),
            "{what}: {msg}"
        );
        assert!(!msg.contains("keepalive"), "{what}: {msg}");
    }
}
