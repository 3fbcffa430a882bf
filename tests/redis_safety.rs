//! Redis faults that would let two holders overlap or leave an operator
//! guessing: forced breaks, stale fence counters, a lost script cache, keys
//! shared between prefixes, eviction, refused writes and TLS to a plain port.

use crate::common;

use std::io::Read;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Everything a finished child wrote to stderr.
fn child_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// Runs `release --force NAME` and returns the breaker's pid.
fn force_release(mut c: std::process::Command, name: &str) -> u32 {
    c.args(["release", "--force", name]);
    let mut breaker = spawn(c);
    let pid = breaker.id();
    let st = wait_child(&mut breaker, Duration::from_secs(10));
    assert!(
        st.success(),
        "release --force: {}",
        child_stderr(&mut breaker)
    );
    pid
}

/// An `exec` holder of `name` whose command says when it runs, then sleeps.
fn exec_holder(
    mut c: std::process::Command,
    dir: &std::path::Path,
    name: &str,
    lease: &str,
) -> Child {
    let ready = Fifo::new(dir, &format!("{name}.ready"));
    let script = format!("echo up > '{}'; exec sleep 60", ready.path.display());
    c.args(["exec", "--lease", lease, name, "--", "sh", "-c", &script]);
    let child = spawn(c);
    ready.read_line(Duration::from_secs(10));
    child
}

#[test]
fn a_forced_break_stops_an_exec_holder_at_once() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    // The default lease: the first renewal is 10 s away.
    let mut holder = exec_holder(ctx.cmd(&[]), ctx.dir.path(), "held", "30s");
    let channel = format!("{}:{{held}}:broken", ctx.prefix);
    wait_until(
        "the holder to listen for breaks",
        Duration::from_secs(10),
        || r.cli(&["PUBSUB", "NUMSUB", &channel]).lines().nth(1) == Some("1"),
    );
    let start = Instant::now();
    let breaker = force_release(ctx.cmd(&[]), "held");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let took = start.elapsed();
    let err = child_stderr(&mut holder);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "the command was stopped {took:?} after the break; renewals come every 10s"
    );
    assert!(
        err.contains("was broken with --force by ")
            && err.contains('@')
            && err.contains(&format!("(pid {breaker})")),
        "{err}"
    );
}

/// A user that may not use pub/sub never hears the notice (and its own
/// `release --force` cannot publish one): the next renewal names the breaker.
#[test]
fn a_missed_break_notice_is_named_by_the_next_renewal() {
    let r = Redis::start();
    r.cli(&[
        "ACL",
        "SETUSER",
        "nochan",
        "on",
        ">nochan-pw",
        "~*",
        "resetchannels",
        "+@all",
    ]);
    let url = format!("redis://nochan:nochan-pw@127.0.0.1:{}/0", r.port);
    let dir = tempfile::tempdir().unwrap();
    let mut holder = exec_holder(dlock(&url), dir.path(), "held", "3s");
    let breaker = force_release(dlock(&url), "held");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let err = child_stderr(&mut holder);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(
        err.contains("was broken with --force by ") && err.contains(&format!("(pid {breaker})")),
        "{err}"
    );
}

#[test]
fn renew_and_release_after_a_break_name_the_breaker() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let tok = ctx.acquire("job", "30s");
    let breaker = force_release(ctx.cmd(&[]), "job");
    let o = ctx.run(&["renew", "job", "--token", &tok]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let by = "broken with --force by ";
    assert!(
        stderr(&o).contains(by) && stderr(&o).contains(&format!("(pid {breaker})")),
        "{}",
        stderr(&o)
    );
    let tok2 = ctx.acquire("job", "30s");
    let o = ctx.run(&["release", "job", "--token", &tok]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(by) && stderr(&o).contains("now held by"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    let o = ctx.run(&["release", "job", "--token", &tok2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A failover to a replica that lagged, or a restored dump, puts the fence
/// counter back; fences must still grow.
#[test]
fn fences_stay_ahead_of_a_restored_counter() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let fence = || -> u64 {
        let o = ctx.run(&["exec", "f", "--", "sh", "-c", "echo $DLOCK_FENCE"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o).trim().parse().unwrap()
    };
    let key = format!("{}:{{f}}:fence", ctx.prefix);
    let f1 = fence();
    let saved = r.cli(&["GET", &key]);
    let (f2, f3) = (fence(), fence());
    assert!(f1 < f2 && f2 < f3, "{f1} {f2} {f3}");
    r.cli(&["SET", &key, &saved]);
    let f4 = fence();
    assert!(
        f4 > f3,
        "fence {f4} after the counter went back; {f3} was handed out"
    );
    r.cli(&["SET", &key, "5"]);
    let f5 = fence();
    assert!(
        f5 > f4,
        "fence {f5} after the counter went back to 5; {f4} was handed out"
    );
}

/// Requests the server executed or refused since CONFIG RESETSTAT, leaving
/// out the test's own CONFIG and INFO and the calls made inside scripts
/// (which commandstats counts too).
fn requests(r: &Redis) -> u64 {
    const INSIDE: &[&str] = &[
        "config", "info", "get", "set", "pexpire", "pttl", "incr", "time", "del", "zadd", "publish",
    ];
    let stats = r.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| {
            let cmd = l.split([':', '|']).next().unwrap_or_default();
            !INSIDE.contains(&cmd)
        })
        .map(|l| {
            let field = |k: &str| -> u64 {
                l.split([':', ','])
                    .find_map(|f| f.strip_prefix(k)?.parse().ok())
                    .unwrap_or(0)
            };
            field("calls=") + field("rejected_calls=")
        })
        .sum()
}

#[test]
fn a_renewal_after_a_script_flush_is_one_request() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let tok = ctx.acquire("r", "30s");
    let o = ctx.run(&["renew", "r", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    r.cli(&["SCRIPT", "FLUSH"]);
    r.cli(&["CONFIG", "RESETSTAT"]);
    let o = ctx.run(&["renew", "r", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(requests(&r), 1, "{}", r.cli(&["INFO", "commandstats"]));
    // Acquisitions go by hash, and by body once when the server lost it.
    r.cli(&["SCRIPT", "FLUSH"]);
    r.cli(&["CONFIG", "RESETSTAT"]);
    ctx.acquire("r2", "30s");
    assert_eq!(requests(&r), 2, "{}", r.cli(&["INFO", "commandstats"]));
    r.cli(&["CONFIG", "RESETSTAT"]);
    ctx.acquire("r3", "30s");
    assert_eq!(requests(&r), 1, "{}", r.cli(&["INFO", "commandstats"]));
}

/// `release --force --token-id` checks the id in the script that breaks the
/// lease (one request), so a holder that took the lock in between is safe.
#[test]
fn force_by_token_id_is_one_request() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let tok = ctx.acquire("m", "30s");
    let o = ctx.run(&["release", "--force", "m", "--token-id", "00000000"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(ctx.is_held("m"), "another id broke the holder");
    r.cli(&["CONFIG", "RESETSTAT"]);
    let o = ctx.run(&["release", "--force", "m", "--token-id", &tok[..8]]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(requests(&r), 1, "{}", r.cli(&["INFO", "commandstats"]));
    assert!(!ctx.is_held("m"));
}

#[test]
fn distinct_prefixes_and_names_never_share_a_key() {
    let r = Redis::start();
    let at = |prefix: &str, args: &[&str]| {
        let mut c = dlock(&r.url());
        c.arg("--prefix").arg(prefix).args(args);
        run(c)
    };
    let o = at("team", &["acquire", "b}:x:{c"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = at("team:{b}:x", &["acquire", "c"]);
    assert_eq!(code(&o), 0, "another prefix, another lock: {}", stderr(&o));
    let o = at("ops:{x}", &["acquire", "n"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let names = |prefix: &str| -> Vec<String> {
        let o = at(prefix, &["status", "--json"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("ops"),
        Vec::<String>::new(),
        "ops:{{x}}'s lock is not under ops"
    );
    assert_eq!(names("team"), ["b}:x:{c"]);
    assert_eq!(names("team:{b}:x"), ["c"]);
    // Each lock's keys share one hash tag, and no two locks share one.
    let keys = r.cli(&["KEYS", "*"]);
    let tags: std::collections::BTreeSet<String> = keys
        .lines()
        .map(|k| {
            let open = k.find('{').expect("a hash tag") + 1;
            let close = open + k[open..].find('}').expect("a closed hash tag");
            format!("{}|{}", &k[..open], &k[open..close])
        })
        .collect();
    assert_eq!(
        keys.lines().count(),
        6,
        "lease and fence of three locks: {keys}"
    );
    assert_eq!(tags.len(), 3, "{keys}");
    // A newline in a prefix would break the status header.
    let o = at("a\nb", &["status"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn an_evicting_server_gets_one_warning_even_with_quiet() {
    let r = Arc::new(Redis::with_args(&[
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]));
    let ctx = Ctx::new(r.clone());
    for args in [&["-q", "exec", "e", "--", "true"][..], &["acquire", "e2"]] {
        let o = ctx.run(args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("maxmemory-policy allkeys-lru") && err.contains("noeviction"),
            "{err}"
        );
    }
    // A user that may not run INFO gets no warning, and its locks still work.
    r.cli(&[
        "ACL",
        "SETUSER",
        "noinfo",
        "on",
        ">noinfo-pw",
        "~*",
        "&*",
        "+@all",
        "-info",
    ]);
    let mut c = dlock(&format!("redis://noinfo:noinfo-pw@127.0.0.1:{}/0", r.port));
    c.env("DLOCK_PREFIX", &ctx.prefix)
        .args(["exec", "e3", "--", "true"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    // A server that never evicts: no warning.
    let quiet = Redis::start();
    let mut c = dlock(&quiet.url());
    c.args(["exec", "e", "--", "true"]);
    let o = run(c);
    assert_eq!((code(&o), stderr(&o).as_str()), (0, ""));
}

#[test]
fn refused_writes_exit_69_with_the_reason() {
    let full = Redis::with_args(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    for args in [&["acquire", "x"][..], &["exec", "x", "--", "true"]] {
        let mut c = dlock(&full.url());
        c.args(args);
        let o = run(c);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("refused the write") && err.contains("out of memory"),
            "{err}"
        );
    }
    let primary = Redis::start();
    let replica = Redis::with_args(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut c = dlock(&replica.url());
    c.args(["acquire", "x"]);
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("read-only replica") && err.contains("primary"),
        "{err}"
    );
}

#[cfg(feature = "redis-tls")]
#[test]
fn rediss_to_a_plain_port_says_to_use_redis() {
    let r = Redis::start();
    let mut c = dlock(&format!("rediss://127.0.0.1:{}/0", r.port));
    c.args(["--connect-timeout", "1s", "status", "x"]);
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("TLS handshake") && err.contains("plain Redis") && err.contains("redis://"),
        "{err}"
    );
}

/// `redis://` at a TLS port: the server hangs up on plain text ("Connection
/// reset by peer" before); dlock says it speaks TLS and to use rediss://.
#[test]
fn redis_to_a_tls_port_says_to_use_rediss() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let r = Redis::with_tls(certs.path());
    for args in [&["status", "x"][..], &["exec", "x", "--", "true"]] {
        let mut c = dlock(&format!("redis://127.0.0.1:{}/0", r.port));
        c.args(args);
        let o = run(c);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("it answers as TLS does") && err.contains("use rediss://"),
            "{err}"
        );
    }
}

/// `rediss://` at a plain port: `exec` waits one --connect-timeout for the
/// handshake and stops, without a second wait to clean up after a request
/// that was never sent.
#[cfg(feature = "redis-tls")]
#[test]
fn rediss_to_a_plain_port_waits_one_timeout() {
    let r = Redis::start();
    let mut c = dlock(&format!("rediss://127.0.0.1:{}/0", r.port));
    c.args(["--connect-timeout", "1s", "exec", "x", "--", "true"]);
    let started = Instant::now();
    let o = run(c);
    let took = started.elapsed();
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("plain Redis"), "{err}");
    assert!(took < Duration::from_millis(1900), "took {took:?}");
}

/// The uncontended `exec` of a short command costs one connection and no
/// subscription: the break listener subscribes only once the job has run a
/// while.
#[test]
fn a_short_exec_opens_one_connection_and_never_subscribes() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let _ = ctx.run(&["exec", "warm", "--", "true"]); // loads the scripts
    r.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..3 {
        let o = ctx.run(&["exec", "short", "--", "true"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let field = |section: &str, key: &str| -> u64 {
        let info = r.cli(&["INFO", section]);
        info.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map_or(0, |v| v.trim().split(',').next().unwrap().parse().unwrap())
    };
    // The INFO itself is the one more.
    assert_eq!(field("stats", "total_connections_received"), 3 + 1);
    let stats = r.cli(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_subscribe"), "{stats}");
}

/// A break in the moment before the holder subscribed published its notice
/// to nobody: the holder reads the tombstone once subscribed and stops at
/// once, not at its next renewal.
#[test]
fn a_break_before_the_subscription_stops_the_holder_at_once() {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    let channel = format!("{}:{{early}}:broken", ctx.prefix);
    // The default lease: the first renewal is 10 s away.
    let mut holder = exec_holder(ctx.cmd(&[]), ctx.dir.path(), "early", "30s");
    // Stopped, its listener cannot subscribe before the break.
    signal(holder.id(), libc::SIGSTOP);
    let numsub = r.cli(&["PUBSUB", "NUMSUB", &channel]);
    assert_eq!(numsub.lines().nth(1), Some("0"), "subscribed at once");
    let start = Instant::now();
    let breaker = force_release(ctx.cmd(&[]), "early");
    signal(holder.id(), libc::SIGCONT);
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let took = start.elapsed();
    let err = child_stderr(&mut holder);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "the command was stopped {took:?} after the break; renewals come every 10s"
    );
    assert!(err.contains(&format!("(pid {breaker})")), "{err}");
}
