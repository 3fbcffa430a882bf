//! Redis-specific behaviour: URL forms, TLS, authentication, timeouts,
//! renewal across dropped connections, and where the lock kinds are stored.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn unix_socket_url() {
    let r = Redis::start();
    let url = format!("redis+unix://{}?db=3", r.socket().display());
    let tok = stdout(&run({
        let mut c = dlock(&url);
        c.args(["acquire", "sock"]);
        c
    }));
    assert_eq!(tok.trim().len(), 32);
    assert_eq!(
        r.cli(&["-n", "3", "EXISTS", "dlock:{sock}:lease"]),
        "1",
        "db 3 was used"
    );
    let mut c = dlock(&url);
    c.args(["release", "sock", "--token", tok.trim()]);
    assert_eq!(code(&run(c)), 0);
}

#[test]
fn keys_of_one_lock_share_a_hash_tag() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    ctx.acquire("tagged job", "30s");
    let mut keys: Vec<String> = r
        .cli(&["KEYS", &format!("{}:*", ctx.prefix)])
        .lines()
        .map(String::from)
        .collect();
    keys.sort();
    let p = &ctx.prefix;
    assert_eq!(
        keys,
        [
            format!("{p}:{{tagged job}}:fence"),
            format!("{p}:{{tagged job}}:lease")
        ]
    );
}

#[test]
fn authentication_failure_is_one_line_without_the_password() {
    let r = Redis::with_password("right-pass-4711");
    let bad = format!("redis://:wrong-pass-0815@127.0.0.1:{}/0", r.port);
    for args in [
        &["status"][..],
        &["acquire", "x"],
        &["exec", "x", "--", "true"],
    ] {
        let mut c = dlock(&bad);
        c.args(args);
        let o = run(c);
        assert_eq!(code(&o), 69, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("authentication") && err.contains("failed"),
            "{err}"
        );
        assert!(!err.contains("wrong-pass-0815"), "password leaked: {err}");
    }
    // The right password works, and output never shows it either.
    let good = r.url();
    let mut c = dlock(&good);
    c.args(["-v", "acquire", "x"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut c = dlock(&good);
    c.args(["status", "--json"]);
    let o = run(c);
    assert!(stdout(&o).contains("***"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("right-pass-4711") && !stderr(&o).contains("right-pass-4711"));
    // From --url on the command line too (which `ps` would show: hence DLOCK_URL / --url-file).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("# the lock server\n{good}\n")).unwrap();
    let mut c = dlock("redis://127.0.0.1:1/0");
    c.env_remove("DLOCK_URL")
        .arg("--url-file")
        .arg(file.path())
        .args(["status", "x"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "--url-file is read: {}", stderr(&o));
}

#[test]
fn refused_connection_is_one_line() {
    let port = free_port();
    let o = run({
        let mut c = dlock(&format!("redis://user:hunter2-secret@127.0.0.1:{port}/0"));
        c.args(["acquire", "x"]);
        c
    });
    assert_eq!(code(&o), 69);
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        !err.contains("hunter2-secret") && err.contains("***"),
        "{err}"
    );
}

#[test]
fn unresponsive_server_times_out_with_exit_69() {
    let r = Redis::start();
    r.pause();
    let start = Instant::now();
    let o = run({
        let mut c = dlock(&r.url());
        c.args(["--connect-timeout", "500ms", "status", "x"]);
        c
    });
    let took = start.elapsed();
    r.resume();
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(stderr(&o).contains("500ms"), "{}", stderr(&o));
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} despite a 500ms timeout"
    );
}

#[test]
fn unknown_scheme_and_bad_urls_are_usage_errors() {
    for url in [
        "http://localhost",
        "redis://host:notaport",
        "mongodb://x@y/z",
    ] {
        let mut c = dlock(url);
        c.args(["status"]);
        let o = run(c);
        assert_eq!(code(&o), 2, "{url}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    }
}

#[cfg(feature = "redis-tls")]
#[test]
fn tls_with_a_private_ca() {
    require("openssl", "openssl");
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let r = Redis::with_tls(certs.path());
    let url = format!("rediss://localhost:{}/0", r.port);
    let mut c = dlock(&url);
    c.env("SSL_CERT_FILE", certs.path().join("ca.crt"))
        .args(["exec", "tls", "--", "true"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "trusted via SSL_CERT_FILE: {}", stderr(&o));
    // Without the CA the handshake fails: one line, exit 69.
    let mut c = dlock(&url);
    c.env("SSL_CERT_FILE", "/nonexistent").args(["status"]);
    let o = run(c);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn renewal_survives_dropped_connections() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let go = Fifo::new(ctx.dir.path(), "go");
    let script = format!(
        "echo $$ > '{}'; read x < '{}'",
        ready.path.display(),
        go.path.display()
    );
    let mut dlock = spawn(ctx.cmd(&[
        "-v", "exec", "--lease", "1s", "drop", "--", "sh", "-c", &script,
    ]));
    let mut lines = Lines::of(&mut dlock);
    ready.read_line(Duration::from_secs(10));
    // Cut dlock's connection five times, each right after a renewal.
    for _ in 0..5 {
        lines.expect("renewed", Duration::from_secs(5));
        let killed: u32 = r
            .cli(&["CLIENT", "KILL", "TYPE", "normal"])
            .parse()
            .unwrap_or(0);
        assert!(killed >= 1, "dlock's connection was there to kill");
        let o = ctx.run(&["exec", "drop", "--", "true"]);
        assert_eq!(code(&o), 75, "the lock stayed held: {}", stderr(&o));
    }
    lines.expect("renewed", Duration::from_secs(5));
    go.write_line("go");
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "no lost lease: {}", lines.rest());
}

#[test]
fn a_url_on_the_command_line_beats_one_from_the_environment() {
    let r = Redis::start();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r.url()).unwrap();
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    // DLOCK_URL in the environment, --url-file on the command line: the file wins.
    let mut c = dlock(&dead);
    c.arg("--url-file").arg(file.path()).args(["status", "x"]);
    assert_eq!(code(&run(c)), 1, "the file's server answered");
    // DLOCK_URL_FILE in the environment, --url on the command line: the URL wins.
    let mut c = dlock(&r.url());
    c.env_remove("DLOCK_URL")
        .env("DLOCK_URL_FILE", "/nonexistent")
        .arg("--url")
        .arg(r.url())
        .args(["status", "x"]);
    assert_eq!(code(&run(c)), 1);
    // Both on the command line: ambiguous.
    let mut c = dlock(&r.url());
    c.env_remove("DLOCK_URL")
        .arg("--url")
        .arg(r.url())
        .arg("--url-file")
        .arg(file.path())
        .arg("status");
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// A release wakes one waiter, the one that has waited longest, instead of
/// all of them racing for the lock.
#[test]
fn each_release_wakes_the_longest_waiting_waiter() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let tok = ctx.acquire("fifo", "30s");
    let order = ctx.path("order");
    let blocked = || {
        r.cli(&["CLIENT", "LIST"])
            .lines()
            // Blocked in BZPOPMIN (a subscriber before wake-one waiting).
            .filter(|l| l.contains("cmd=bzpopmin") || l.contains("cmd=subscribe"))
            .count()
    };
    let mut waiters = Vec::new();
    for i in 1..=4 {
        let mut c = ctx.cmd(&["exec", "--wait", "60s", "fifo", "--", "sh", "-c"]);
        c.arg(format!("echo {i} >> '{}'", order.display()));
        waiters.push(spawn(c));
        wait_until("the waiter to block", Duration::from_secs(20), || {
            blocked() == i
        });
    }
    let o = ctx.run(&["release", "fifo", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for w in &mut waiters {
        assert!(wait_child(w, Duration::from_secs(20)).success());
    }
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "1\n2\n3\n4\n",
        "waiters ran in arrival order"
    );
}

/// The keys of lock `name` under the test's prefix that exist now, by suffix.
fn keys_of(r: &Redis, ctx: &Ctx, name: &str) -> Vec<String> {
    let pattern = format!("{}:{{{name}}}:*", ctx.prefix);
    let mut k: Vec<String> = r
        .cli(&["KEYS", &pattern])
        .lines()
        .filter_map(|l| l.rsplit(':').next().map(String::from))
        .collect();
    k.sort();
    k
}

/// A plain holder stays in the lease key, where the one-script fast paths
/// and older dlock versions look; other holders and the queue are in the
/// state key, which `status` finds on its own too.
#[test]
fn lock_kinds_keep_a_plain_holder_in_the_lease_key() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    ctx.acquire("plain", "30s");
    assert_eq!(keys_of(&r, &ctx, "plain"), ["fence", "lease"]);
    let o = ctx.run(&["acquire", "--shared", "--lease", "30s", "read"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!keys_of(&r, &ctx, "read").contains(&"lease".to_string()));
    assert!(keys_of(&r, &ctx, "read").contains(&"state".to_string()));
    let o = ctx.run(&["status", "--names-only"]);
    assert_eq!(stdout(&o), "plain\nread\n", "{}", stderr(&o));

    // A fair waiter queues beside a plain holder, and takes the lease key when it goes.
    let holder = ctx.acquire("q", "30s");
    let mut c = ctx.cmd(&["acquire", "--fair", "--wait", "20s", "--lease", "30s", "q"]);
    c.stdout(std::process::Stdio::piped());
    let mut waiter = spawn(c);
    wait_until("the fair waiter to queue", Duration::from_secs(5), || {
        ctx.status_json(&["q"])["locks"][0]["queued"] == 1
    });
    assert_eq!(keys_of(&r, &ctx, "q"), ["fence", "lease", "state"]);
    let lease_key = format!("{}:{{q}}:lease", ctx.prefix);
    assert!(r.cli(&["GET", &lease_key]).starts_with(&holder));
    let o = ctx.run(&["release", "q", "--token", &holder]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(wait_child(&mut waiter, Duration::from_secs(10)).success());
    let mut tok = String::new();
    std::io::Read::read_to_string(&mut waiter.stdout.take().unwrap(), &mut tok).unwrap();
    assert!(r.cli(&["GET", &lease_key]).starts_with(tok.trim()), "{tok}");
    assert!(
        !keys_of(&r, &ctx, "q").contains(&"state".to_string()),
        "an empty queue leaves no state key"
    );
}

/// Fences of every kind pass the counter that plain grants count with, so
/// they keep growing across kinds even when the counter is ahead of the clock.
#[test]
fn kinds_fences_follow_the_counter() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let fence = |args: &[&str]| -> u64 {
        let mut a = vec!["acquire", "--json", "--lease", "30s"];
        a.extend_from_slice(args);
        let o = ctx.run(&a);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["fence"].as_u64().unwrap()
    };
    let ahead = (now_ms() as u64 + 3_600_000) * 1000; // an hour ahead, in µs
    r.cli(&[
        "SET",
        &format!("{}:{{f}}:fence", ctx.prefix),
        &ahead.to_string(),
    ]);
    let shared = fence(&["--shared", "f"]);
    assert_eq!(shared, ahead + 1, "a shared grant after the counter");
    let o = ctx.run(&["release", "--force", "f"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plain = fence(&["f"]);
    assert_eq!(plain, shared + 1, "a plain grant after a shared one");
    let o = ctx.run(&["release", "--force", "f"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fence(&["--slots", "2", "f"]), plain + 1);
}
