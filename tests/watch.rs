//! `dlock watch` on every backend: each event kind arrives, in order, and
//! within 250 ms of the command that caused it on the backends that push
//! changes (within the 1 s poll elsewhere); `--until` ends it; and the
//! watcher changes nothing.

use crate::common;

use std::io::BufRead;
use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::backends::{scenarios, Rig};
use common::*;
use serde_json::Value;

/// The URL schemes whose backend pushes every change to a watcher.
const PUSHED: &[&str] = &[
    "sqlite",
    "postgres",
    "etcd",
    "zk",
    "redis",
    "redis+sentinel",
    "redis+cluster",
    "redlock",
];

fn scheme(ctx: &Ctx) -> String {
    ctx.url().split("://").next().unwrap().to_string()
}

/// How late an event may arrive after its cause.
fn bound(ctx: &Ctx) -> Duration {
    let s = scheme(ctx);
    match PUSHED.contains(&s.as_str()) {
        true => Duration::from_millis(250),
        // The poll, one read and the load of a shared test machine.
        false => Duration::from_millis(1600),
    }
}

/// A running `dlock watch --json`, its events as they arrive.
struct Watcher {
    child: Child,
    events: Receiver<(Instant, Value)>,
    err: Lines,
}

impl Watcher {
    /// Starts `dlock -v watch --json ARGS` and returns once it has read the
    /// locks (from then on it misses no change).
    fn start(ctx: &Ctx, args: &[&str]) -> Watcher {
        let mut all = vec!["-v", "watch", "--json"];
        all.extend(args);
        let mut child = spawn(ctx.cmd(&all));
        let out = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        let mut err = Lines::of(&mut child);
        let said = err.expect("watching,", Duration::from_secs(20));
        let pushed = said.contains("change notices");
        let s = scheme(ctx);
        assert_eq!(
            pushed,
            PUSHED.contains(&s.as_str()),
            "{}: {said}",
            ctx.url()
        );
        Watcher { child, events, err }
    }

    /// The next event, which must be `want` about `name`; with how long
    /// after `since` it arrived.
    fn next(&mut self, want: &str, since: Instant) -> (Value, Duration) {
        let (at, v) = self
            .events
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("no '{want}' event within 20 s; stderr {:?}", self.err.seen)
            });
        assert_eq!(v["event"], want, "{v}");
        (v, at.saturating_duration_since(since))
    }

    /// Stops it with SIGTERM: it exits as dlock does on a signal, 128+15.
    fn stop(mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let st = wait_child(&mut self.child, Duration::from_secs(10));
        assert_eq!(st.code(), Some(143), "{st:?}");
        // Nothing came that the test did not read.
        assert!(self.events.try_recv().is_err());
    }
}

impl Drop for Watcher {
    /// A failed test leaves no watcher running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `args` and returns when it exited, having checked it succeeded.
fn done(ctx: &Ctx, args: &[&str]) -> (Instant, String) {
    let o = ctx.run(args);
    let at = Instant::now();
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    (at, stdout(&o).trim().to_string())
}

/// A `broken` event names the breaker as "user@host (pid N)".
fn assert_by(v: &Value) {
    let by = v["by"]
        .as_str()
        .unwrap_or_else(|| panic!("no breaker: {v}"));
    assert!(by.contains('@') && by.contains(" (pid "), "{v}");
}

fn id(token: &str) -> String {
    token.chars().take(8).collect()
}

fn within(ctx: &Ctx, what: &str, took: Duration) {
    eprintln!(
        "{} {what}: {:.1} ms",
        scheme(ctx),
        took.as_secs_f64() * 1000.0
    );
    assert!(took < bound(ctx), "'{what}' came {took:?} after its cause");
}

/// Status fields a watcher must leave as they were.
fn holders(ctx: &Ctx, name: &str) -> Vec<Value> {
    let s = ctx.status_json(&[name]);
    let lock = &s["locks"][0];
    let mut out: Vec<Value> = lock["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| serde_json::json!([h["token_id"], h["fence"], h["acquired_at"], h["holder"]]))
        .collect();
    out.push(lock["queued"].clone());
    out
}

/// granted, released, broken (with who broke it) and expired, in order, each within the bound; and a lock held all
/// along the same before and after the watcher read it many times.
fn every_event_kind_arrives_in_order(ctx: &Ctx) {
    let (_, kept) = done(ctx, &["acquire", "still", "--lease", "1m"]);
    let (_, first) = done(ctx, &["acquire", "w", "--lease", "30s"]);
    let before = holders(ctx, "still");
    let mut w = Watcher::start(ctx, &["w", "still"]);

    let (at, _) = done(ctx, &["release", "w", "--token", &first]);
    let (v, took) = w.next("released", at);
    within(ctx, "released", took);
    assert_eq!(v["token_id"], id(&first), "{v}");

    let (at, token) = done(ctx, &["acquire", "w", "--lease", "30s"]);
    let (v, took) = w.next("granted", at);
    within(ctx, "granted", took);
    assert_eq!(v["name"], "w");
    assert_eq!(v["token_id"], id(&token), "{v}");
    assert!(v["fence"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["kind"], "exclusive");
    assert!(v["holder"]["pid"].as_u64().is_some(), "{v}");
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");

    let (at, _) = done(ctx, &["release", "w", "--force"]);
    let (v, took) = w.next("broken", at);
    within(ctx, "broken", took);
    assert_eq!(v["token_id"], id(&token), "{v}");
    assert_by(&v);

    let (acquired, token) = done(ctx, &["acquire", "w", "--lease", "2s"]);
    let (_, took) = w.next("granted", acquired);
    within(ctx, "granted", took);
    let (v, took) = w.next("expired", acquired + Duration::from_secs(2));
    assert_eq!(v["token_id"], id(&token), "{v}");
    // etcd ends a lease at its own pace, in whole seconds.
    let slack = match scheme(ctx).as_str() {
        "etcd" => Duration::from_secs(2),
        _ => Duration::ZERO,
    };
    eprintln!(
        "{} expired: {:.1} ms after the lease",
        scheme(ctx),
        took.as_secs_f64() * 1000.0
    );
    assert!(
        took < bound(ctx) + slack,
        "'expired' came {took:?} after the lease ended"
    );

    w.stop();
    assert_eq!(before, holders(ctx, "still"), "the watcher changed a lock");
    done(ctx, &["release", "still", "--token", &kept]);
}

scenarios!(any, shared: every_event_kind_arrives_in_order);

/// A `--fair` waiter behind a holder is `queued`; on the release, it is
/// `granted` the lock and leaves the queue (`dequeued`), in that order.
fn queue_changes_arrive_in_order(ctx: &Ctx) {
    let (_, first) = done(ctx, &["acquire", "q", "--lease", "30s"]);
    let mut w = Watcher::start(ctx, &["q"]);
    let args = [
        "-v", "acquire", "q", "--fair", "--wait", "30s", "--lease", "30s",
    ];
    let mut waiter = spawn(ctx.cmd(&args));
    let mut err = Lines::of(&mut waiter);
    err.expect("waiting", Duration::from_secs(20));
    let (v, took) = w.next("queued", Instant::now());
    within(ctx, "queued", took);
    assert_eq!(v["queued"], 1, "{v}");
    assert!(v["token_id"].is_null(), "{v}");

    let (at, _) = done(ctx, &["release", "q", "--token", &first]);
    let (v, took) = w.next("released", at);
    within(ctx, "released", took);
    assert_eq!(v["token_id"], id(&first), "{v}");
    let (v, took) = w.next("granted", at);
    within(ctx, "granted from the queue", took);
    let (_, took) = w.next("dequeued", at);
    within(ctx, "dequeued", took);
    assert_eq!(
        wait_child(&mut waiter, Duration::from_secs(20)).code(),
        Some(0)
    );
    let mut token = String::new();
    std::io::Read::read_to_string(&mut waiter.stdout.take().unwrap(), &mut token).unwrap();
    assert_eq!(v["token_id"], id(token.trim()), "{v}");
    w.stop();
    done(ctx, &["release", "q", "--token", token.trim()]);
}

mod queue {
    use super::*;
    scenarios!(kinds, shared: queue_changes_arrive_in_order);
}

/// `--until` is checked at once; a release ends `--until free` (within
/// the bound), and `--wait` running out first exits 75.
fn until_ends_the_watch(ctx: &Ctx) {
    let (_, token) = done(ctx, &["acquire", "u", "--lease", "30s"]);
    done(ctx, &["watch", "u", "--until", "held"]);
    done(ctx, &["watch", "never-taken", "--until", "free"]);

    let started = Instant::now();
    let o = ctx.run(&["watch", "u", "--until", "free", "--wait", "1s"]);
    let took = started.elapsed();
    one_line_error(&o, 75, "did not become free within --wait 1s");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    let mut c = spawn(ctx.cmd(&["-v", "watch", "u", "--until", "free", "--wait", "30s"]));
    let mut err = Lines::of(&mut c);
    err.expect("watching,", Duration::from_secs(20));
    let (at, _) = done(ctx, &["release", "u", "--token", &token]);
    let st = wait_child(&mut c, Duration::from_secs(20));
    within(ctx, "--until free", at.elapsed());
    assert_eq!(st.code(), Some(0), "{}", err.rest());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut c.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("  released  u  "), "{out}");
}

mod until {
    use super::*;
    scenarios!(any, shared: until_ends_the_watch);
}

/// Without names, every lock under the prefix is watched, the ones taken
/// after the watch began too, and a break reads as one there too.
fn a_watch_of_every_lock_sees_new_ones(ctx: &Ctx) {
    let mut w = Watcher::start(ctx, &[]);
    let (at, a) = done(ctx, &["acquire", "a", "--lease", "30s"]);
    let (v, took) = w.next("granted", at);
    assert_eq!(v["name"], "a", "{v}");
    within(ctx, "granted (every lock)", took);
    let (at, b) = done(ctx, &["acquire", "b", "--lease", "30s"]);
    let (v, _) = w.next("granted", at);
    assert_eq!(v["name"], "b", "{v}");
    let (at, _) = done(ctx, &["release", "a", "--token", &a]);
    let (v, _) = w.next("released", at);
    assert_eq!(v["name"], "a", "{v}");
    let (at, _) = done(ctx, &["release", "b", "--force"]);
    let (v, took) = w.next("broken", at);
    within(ctx, "broken (every lock)", took);
    assert_eq!(
        (&v["name"], &v["token_id"]),
        (&"b".into(), &id(&b).into()),
        "{v}"
    );
    assert_by(&v);
    w.stop();
}

mod every_lock {
    use super::*;
    scenarios!(any, shared: a_watch_of_every_lock_sees_new_ones);
}

/// README.md's `json watch` example has the fields of a real event.
#[cfg(feature = "sqlite")]
#[test]
fn readme_json_example_has_the_real_fields() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```json watch\n")
        .expect("README.md has a ```json watch block");
    let body = &readme[start..].split_once('\n').unwrap().1;
    let body = &body[..body.find("```").unwrap()];
    let example: Value = serde_json::from_str(body).unwrap();
    let ctx = Ctx::new(std::sync::Arc::new(common::sqlite::Sqlite::new()));
    let mut w = Watcher::start(&ctx, &["x"]);
    let (at, token) = done(&ctx, &["acquire", "x"]);
    let (real, _) = w.next("granted", at);
    w.stop();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&example), keys(&real));
    assert_eq!(keys(&example["holder"]), keys(&real["holder"]));
    done(&ctx, &["release", "x", "--token", &token]);
}

/// `--wait` bounds `--until` only: alone it is a usage error, before any
/// backend is asked.
#[test]
fn wait_needs_until() {
    let url = "sqlite:///nonexistent/dir/locks.db";
    let mut c = dlock(url);
    c.args(["watch", "x", "--wait", "1s"]);
    one_line_error(&run(c), 2, "--until");
    let mut c = dlock(url);
    c.args(["watch", "x", "--until", "gone"]);
    one_line_error(&run(c), 2, "free");
}

/// A watcher lives through a restart of the server: it says once that it
/// cannot read, reads again once the server is back, and reports what
/// happens after (by its poll at least; a backend that pushes is
/// subscribed to again).
fn a_watcher_survives_a_server_restart(rig: &Rig) {
    let mut w = Watcher::start(rig, &["r"]);
    rig.server.kill();
    w.err.expect("still watching", Duration::from_secs(20));
    rig.server.restart();
    w.err
        .expect("the backend answers again", Duration::from_secs(30));
    let (at, token) = done(rig, &["acquire", "r", "--lease", "30s"]);
    let (_, took) = w.next("granted", at);
    eprintln!("{} granted after a restart: {took:?}", scheme(rig));
    assert!(took < Duration::from_millis(1600), "{took:?}");
    let (at, _) = done(rig, &["release", "r", "--token", &token]);
    let (_, took) = w.next("released", at);
    assert!(took < Duration::from_millis(1600), "{took:?}");
    w.stop();
}

mod restart {
    use super::*;
    scenarios!(restart, own: a_watcher_survives_a_server_restart);
}
