//! What is specific to the etcd backend: TLS with a private CA, etcd's own
//! users (the password never printed), failover past a member that is down,
//! and the keys it keeps. The shared scenarios are in tests/conformance.rs
//! and tests/kinds.rs, the faults in tests/etcd_faults.rs.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::*;

/// The cluster under a URL chosen by the test.
struct At(String);

impl Server for At {
    fn url(&self) -> String {
        self.0.clone()
    }
}

fn one_line_error(o: &std::process::Output, want_code: i32, want: &str, secret: &str) {
    let err = stderr(o);
    assert_eq!(code(o), want_code, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(want), "expected '{want}' in: {err}");
    assert!(!err.contains(secret), "the password was printed: {err}");
}

#[test]
fn tls_users_and_failover_past_a_member_that_is_down() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let e = Etcd::with_tls(certs.path());
    let (pw, root) = ("s3cret-Pw", "--user=root:root-Pw");
    let ctx = Ctx::new(Arc::new(At(String::new())));
    for args in [
        vec!["user", "add", "root:root-Pw"],
        vec!["user", "add", &format!("bob:{pw}")],
        vec!["role", "add", "locks"],
        vec![
            "role",
            "grant-permission",
            "locks",
            "--prefix=true",
            "readwrite",
            &ctx.prefix,
        ],
        vec!["user", "grant-role", "bob", "locks"],
        vec!["auth", "enable"],
    ] {
        assert!(e.ctl(None, &args).is_some(), "etcdctl {args:?}");
    }
    let ca = certs.path().join("ca.crt");
    // The first member listed is down: dlock goes on to the next one.
    let url = |pass: &str, query: &str| {
        format!(
            "etcds://bob:{pass}@127.0.0.1:{},{}{query}",
            free_port(),
            e.endpoints()
        )
    };
    let good = url(pw, &format!("?cacert={}", ca.display()));
    let run = |u: &str, args: &[&str]| {
        let mut c = dlock(u);
        c.env("DLOCK_PREFIX", &ctx.prefix).args(args);
        run(c)
    };
    let o = run(
        &good,
        &["exec", "j", "--", "sh", "-c", "printf %s \"$DLOCK_FENCE\""],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).parse::<u64>().unwrap() > 0);
    let tok = stdout(&run(&good, &["acquire", "j"])).trim().to_string();
    let o = run(&good, &["status"]);
    assert!(stdout(&o).contains("bob:***@"), "{}", stdout(&o));
    assert!(!stdout(&o).contains(pw), "{}", stdout(&o));
    // etcd's own tool sees the key, under the role's prefix.
    let keys = e
        .ctl(None, &[root, "get", "--prefix", "--keys-only", &ctx.prefix])
        .unwrap();
    assert!(keys.contains(&format!("{}/j/{tok}", ctx.prefix)), "{keys}");
    assert_eq!(code(&run(&good, &["release", "j", "--token", &tok])), 0);

    let wrong = url("wrong-Pw", &format!("?cacert={}", ca.display()));
    one_line_error(
        &run(&wrong, &["status"]),
        69,
        "authentication failed",
        "wrong-Pw",
    );
    // No user for a cluster that requires one: a refusal (69) that says what to write.
    let anonymous = format!("etcds://{}?cacert={}", e.endpoints(), ca.display());
    let o = run(&anonymous, &["status"]);
    one_line_error(
        &o,
        69,
        "requires a login: put its user and password in the URL",
        pw,
    );
    // Without the private CA the server's certificate is not trusted.
    one_line_error(&run(&url(pw, ""), &["status"]), 69, "certificate", pw);
    // Plain text to a TLS member fails too, without hanging, and says so.
    let plain = format!("etcd://bob:{pw}@{}", e.endpoints());
    let o = run(&plain, &["--connect-timeout", "2s", "status"]);
    one_line_error(
        &o,
        69,
        "it answers as TLS does; for a TLS port use etcds://",
        pw,
    );
}

#[test]
fn a_bad_url_is_a_usage_error_that_names_the_form() {
    for (url, want) in [
        ("etcd://h1:2379,,h2", "a host is empty"),
        ("etcd://h1:notaport", "not a port"),
        (
            "etcds://h1?cacert=/nonexistent/ca.pem",
            "cannot read the CA file",
        ),
        ("etcd://h1?cacert=/ca.pem", "use etcds://"),
    ] {
        let o = run({
            let mut c = dlock(url);
            c.args(["status"]);
            c
        });
        one_line_error(&o, 2, want, "never");
    }
}

/// `release --force` records who broke a lease at a key of its own under
/// a lease of its own, which no lock read meets; a grant to the same token
/// (`--token` reused, with or without --wait) deletes it, so that its next
/// refusal is no break.
#[test]
fn a_break_record_stays_apart_and_goes_when_its_token_holds_again() {
    let e = Etcd::shared();
    let ctx = Ctx::new(e.clone());
    let tok = "reused-token-1";
    let record = || -> Option<serde_json::Value> {
        let key = format!("{}%b/r/{tok}", ctx.prefix);
        let out = e.ctl(None, &["get", &key, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["kvs"].get(0).cloned()
    };
    for wait in [&[][..], &["--wait", "10s"][..]] {
        ctx.acquire_args(&["r", "--token", tok, "--lease", "60s"]);
        assert_eq!(code(&ctx.run(&["release", "r", "--force"])), 0);
        let kv = record().expect("the break is recorded");
        assert!(kv["lease"].as_i64().unwrap_or(0) != 0, "{kv}");
        assert_eq!(ctx.status_json(&[])["locks"], serde_json::json!([]));
        let mut again = vec!["r", "--token", tok, "--lease", "60s"];
        again.extend(wait);
        ctx.acquire_args(&again);
        assert!(record().is_none(), "the grant {wait:?} left the record");
        assert_eq!(code(&ctx.run(&["release", "r", "--token", tok])), 0);
        let o = ctx.run(&["renew", "r", "--token", tok, "--lease", "60s"]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        assert!(
            !stderr(&o).contains("broken with --force by"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_waiter_watches_instead_of_polling() {
    let e = Etcd::shared();
    let ctx = Ctx::new(e.clone());
    let tok = ctx.acquire("w", "60s");
    let mut waiter = spawn(ctx.cmd(&["acquire", "w", "--wait", "60s"]));
    wait_until("the waiter to queue", Duration::from_secs(10), || {
        ctx.status_json(&["w"])["locks"][0]["queued"].as_u64() == Some(1)
    });
    // While it waits, the name's keys do not change: no polling writes.
    let rev = |e: &Etcd| -> u64 {
        let out = e
            .ctl(None, &["get", "--prefix", &ctx.prefix, "-w", "json"])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| kv["mod_revision"].as_u64().unwrap())
            .max()
            .unwrap()
    };
    let before = rev(&e);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(rev(&e), before, "the queue was written while nobody moved");
    assert!(waiter.try_wait().unwrap().is_none());
    assert_eq!(code(&ctx.run(&["release", "w", "--token", &tok])), 0);
    let st = wait_child(&mut waiter, Duration::from_secs(20));
    assert!(st.success());
}

#[test]
fn a_waiter_whose_place_was_released_queues_again() {
    let e = Etcd::shared();
    let ctx = Ctx::new(e.clone());
    let holder = ctx.acquire("p", "60s");
    let tok = "waiter-token-1";
    let mut waiter = spawn(ctx.cmd(&["acquire", "p", "--wait", "30s", "--token", tok]));
    // The create revision of the waiter's key: its place in the queue.
    let place = || -> Option<u64> {
        let key = format!("{}/p/{tok}", ctx.prefix);
        let out = e.ctl(None, &["get", &key, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["kvs"][0]["create_revision"].as_u64()
    };
    let mut first = None;
    wait_until("the waiter's place", Duration::from_secs(10), || {
        first = place();
        first.is_some()
    });
    assert_eq!(code(&ctx.run(&["release", "p", "--token", tok])), 3);
    // Its place went with its lease; the waiter, still waiting, takes a new one.
    wait_until("a new place", Duration::from_secs(10), || {
        place().is_some_and(|p| Some(p) > first)
    });
    assert!(waiter.try_wait().unwrap().is_none(), "the waiter gave up");
    assert_eq!(code(&ctx.run(&["release", "p", "--token", &holder])), 0);
    assert!(wait_child(&mut waiter, Duration::from_secs(20)).success());
    let l = ctx.status_json(&["p"])["locks"][0].clone();
    assert_eq!(l["token_id"], &tok[..8], "{l}");
}

#[test]
fn a_waiter_ended_by_a_signal_takes_its_place_with_it() {
    let ctx = Ctx::new(Etcd::shared());
    let holder = ctx.acquire("s", "60s");
    let queued = || ctx.status_json(&["s"])["locks"][0]["queued"].as_u64();
    let mut waiter = spawn(ctx.cmd(&["acquire", "s", "--wait", "60s"]));
    wait_until("the waiter to queue", Duration::from_secs(10), || {
        queued() == Some(1)
    });
    signal(waiter.id(), libc::SIGTERM);
    let st = wait_child(&mut waiter, Duration::from_secs(10));
    assert_eq!(st.code(), Some(143));
    // Gone before dlock exited, not when its lease runs out 3 s later.
    assert_eq!(queued(), Some(0));
    assert_eq!(code(&ctx.run(&["release", "s", "--token", &holder])), 0);
}

#[test]
fn a_holder_learns_of_a_forced_release_at_once() {
    let ctx = Ctx::new(Etcd::shared());
    let started = ctx.path("started");
    let script = format!("touch '{}'; sleep 60", started.display());
    let mut holder = spawn(ctx.cmd(&["exec", "--lease", "30s", "f", "--", "sh", "-c", &script]));
    wait_for_file(&started, Duration::from_secs(10));
    let broke = std::time::Instant::now();
    let o = ctx.run(&["release", "f", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = wait_child(&mut holder, Duration::from_secs(20));
    // Its key's deletion, watched, not its next renewal 10 s on.
    assert_eq!(st.code(), Some(79));
    assert!(
        broke.elapsed() < Duration::from_secs(5),
        "{:?}",
        broke.elapsed()
    );
}

/// A port that speaks another protocol (here Redis) is a definite failure:
/// one line, within one --connect-timeout, and no clean-up of a request
/// that "went unanswered" (nothing can have been taken).
#[test]
fn a_port_that_is_not_etcd_fails_in_one_line_and_one_timeout() {
    let r = Redis::start();
    for scheme in ["etcd", "etcds"] {
        let url = format!("{scheme}://127.0.0.1:{}", r.port);
        for args in [&["acquire", "x"][..], &["exec", "x", "--", "true"]] {
            let mut c = dlock(&url);
            c.args(["--connect-timeout", "1s"]).args(args);
            let t = std::time::Instant::now();
            let o = run(c);
            let took = t.elapsed();
            let err = stderr(&o);
            assert_eq!(code(&o), 69, "{url} {args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{url} {args:?}: {err}");
            assert!(!err.contains("unanswered"), "{url} {args:?}: {err}");
            assert!(
                took < Duration::from_millis(1800),
                "{url} {args:?}: {took:?}"
            );
        }
    }
}

/// etcd counts a lease in whole seconds (a 400ms lease is raised to its
/// minimum) and reports what is left rounded down: `status` showed LEFT 0ms
/// for a lease that still held for most of a second. From `acquire` until
/// the lease is gone, LEFT (and the time left in a busy message) is what
/// etcd granted at most and never 0.
#[test]
fn status_never_shows_a_live_short_lease_as_run_out() {
    let ctx = Ctx::new(Etcd::shared());
    let o = ctx.run(&["acquire", "short", "--lease", "400ms", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let grant: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let granted = grant["lease_ms"].as_u64().unwrap();
    assert!(granted >= 1000, "etcd leases are whole seconds: {grant}");
    let mut seen = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(granted / 1000 + 10);
    loop {
        let l = ctx.status_json(&["short"])["locks"][0].clone();
        if l["held"] != true {
            break;
        }
        seen.push(l["ttl_ms"].as_u64().unwrap());
        assert!(
            std::time::Instant::now() < until,
            "the lease never ran out: {seen:?}"
        );
        // The busy message tells the same time left.
        let o = ctx.run(&["acquire", "short"]);
        if code(&o) == 0 {
            let tok = stdout(&o);
            assert_eq!(
                code(&ctx.run(&["release", "short", "--token", tok.trim()])),
                0
            );
            break;
        }
        let err = stderr(&o);
        assert!(
            err.contains("is busy") && !err.contains(" 0ms left"),
            "{err}"
        );
    }
    assert!(!seen.is_empty(), "status ran too late to see the lease");
    assert!(
        seen[0] <= granted && seen[0] + 1000 >= granted,
        "{seen:?}, granted {granted}"
    );
    assert!(
        seen.iter().all(|&ms| ms > 0),
        "LEFT 0ms while held: {seen:?}"
    );
}

/// A user in the URL of an etcd that has no authentication is a refusal
/// (69) that says so, not an internal error (70).
#[test]
fn a_user_for_an_etcd_without_auth_is_refused_plainly() {
    let e = Etcd::shared();
    let url = format!("etcd://bob:s3cret-Pw@{}", e.endpoints());
    let mut c = dlock(&url);
    c.args(["status"]);
    let o = run(c);
    one_line_error(&o, 69, "authentication", "s3cret-Pw");
    assert!(stderr(&o).contains("remove the user"), "{}", stderr(&o));
}

/// Runs `args` against `url`; the one error line, its code and how long it took.
fn failure(url: &str, args: &[&str]) -> (i32, String, Duration) {
    let mut c = dlock(url);
    c.args(["--connect-timeout", "10s"]).args(args);
    let started = std::time::Instant::now();
    let o = run(c);
    let took = started.elapsed();
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
    (code(&o), err, took)
}

/// A wrong port fails at once and says what answers there: nothing
/// ("tcp connect error" before), Redis ("h2 protocol error"), a plain etcd
/// port under etcds:// ("tls handshake eof"); and `redis://` at etcd's port
/// ("Connection reset by peer").
#[test]
fn wrong_ports_say_what_answers() {
    let e = Etcd::shared();
    let etcd = e.members[0].client;
    let redis = Redis::start();
    let closed = free_port();
    let cases = [
        (format!("etcd://127.0.0.1:{closed}"), "connection refused"),
        (
            format!("etcd://127.0.0.1:{}", redis.port),
            "it answers as Redis does; for Redis use redis://",
        ),
        (
            format!("etcds://127.0.0.1:{etcd}"),
            "does not speak TLS: it answers in plain HTTP/2 (gRPC); for a plain etcd port use etcd://",
        ),
        (
            format!("redis://127.0.0.1:{etcd}"),
            "it answers as HTTP/2 (gRPC) does; for etcd use etcd://",
        ),
    ];
    for (url, want) in cases {
        for args in [&["status"][..], &["exec", "x", "--", "true"]] {
            let (code, err, took) = failure(&url, args);
            assert_eq!(code, 69, "{url}: {err}");
            assert!(err.contains(want), "{url}: expected '{want}' in: {err}");
            assert!(took < Duration::from_secs(4), "{url}: took {took:?}");
        }
    }
}
