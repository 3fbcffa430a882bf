//! The backend-agnostic contract: the same scenarios against every backend,
//! each reached only through its URL. A new backend joins by adding one line
//! to the `backends!` list at the bottom.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// N workers × K `dlock exec` read-increment-write sections on one counter
/// file end with exactly N×K: no two sections ever overlapped.
fn counter_is_exact(ctx: &Ctx) {
    let (workers, each) = (4usize, 25);
    let counter = ctx.path("counter");
    std::fs::write(&counter, "0").unwrap();
    let section = format!(
        "n=$(cat '{c}'); n=$((n+1)); printf %s \"$n\" > '{c}.tmp'; mv '{c}.tmp' '{c}'",
        c = counter.display()
    );
    for (st, err) in ctx.run_workers(workers, each, "--wait forever counter", &section) {
        assert!(st.success(), "a worker failed: {st:?}: {err}");
    }
    let n: usize = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, workers * each, "lost updates: sections overlapped");
    assert!(
        !ctx.is_held("counter"),
        "the lock must be free after the last worker"
    );
}

fn release_checks_the_token(ctx: &Ctx) {
    let tok = ctx.acquire("job", "30s");
    assert_eq!(tok.len(), 32, "tokens are 128-bit hex");
    let wrong = ctx.run(&[
        "release",
        "job",
        "--token",
        "0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(code(&wrong), 4, "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("held by another token"),
        "{}",
        stderr(&wrong)
    );
    assert!(ctx.is_held("job"), "a wrong token must not release");
    let ok = ctx.run(&["release", "job", "--token", &tok]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert!(!ctx.is_held("job"));
    let again = ctx.run(&["release", "job", "--token", &tok]);
    assert_eq!(code(&again), 3, "{}", stderr(&again));
    assert!(stderr(&again).contains("not held"), "{}", stderr(&again));
    // The token may also come from the environment.
    let tok = ctx.acquire("job", "30s");
    let mut c = ctx.cmd(&["release", "job"]);
    c.env("DLOCK_TOKEN", &tok);
    assert_eq!(code(&run(c)), 0);
}

fn force_release_says_whom_it_broke(ctx: &Ctx) {
    ctx.acquire("stuck", "30s");
    let o = ctx.run(&["release", "stuck", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("broke lock 'stuck' held by"),
        "{}",
        stderr(&o)
    );
    assert!(!ctx.is_held("stuck"));
}

fn leases_expire(ctx: &Ctx) {
    ctx.acquire("short", "400ms");
    let busy = ctx.run(&["acquire", "short"]);
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    // A waiter is woken by the expiry itself, not by a release.
    let o = ctx.run(&["acquire", "short", "--wait", "10s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

fn same_token_extends_without_counting(ctx: &Ctx) {
    let take = |lease: &str| {
        let o = ctx.run(&[
            "acquire",
            "re",
            "--token",
            "my-token-1",
            "--json",
            "--lease",
            lease,
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let a = take("1s");
    assert_eq!(a["token"], "my-token-1");
    assert_eq!(a["name"], "re");
    assert!(a["expires_at"].is_string());
    let b = take("30s");
    assert_eq!(a["fence"], b["fence"], "extending keeps the fence");
    assert_eq!(b["extended"], true);
    let ttl = ctx.status_json(&["re"])["locks"][0]["ttl_ms"]
        .as_u64()
        .unwrap();
    assert!(
        ttl > 1000,
        "the second call extended the lease to 30s, ttl is {ttl}ms"
    );
    // One release frees it: no hold count was left at 2.
    assert_eq!(
        code(&ctx.run(&["release", "re", "--token", "my-token-1"])),
        0
    );
    assert!(!ctx.is_held("re"));
}

fn waiters_wake_on_release(ctx: &Ctx) {
    let tok = ctx.acquire("w", "60s");
    let mut waiter = spawn(ctx.cmd(&["acquire", "w", "--wait", "50s"]));
    // Let the waiter reach its wait: it reports nothing, so wait for its subscription
    // to be observable as "still running" after a first attempt.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter must still be waiting"
    );
    let released = Instant::now();
    assert_eq!(code(&ctx.run(&["release", "w", "--token", &tok])), 0);
    let st = wait_child(&mut waiter, Duration::from_secs(50));
    assert!(st.success());
    // Far below the 60s lease: the waiter was woken by the release, not by expiry.
    assert!(released.elapsed() < Duration::from_secs(20));
    assert!(ctx.is_held("w"));
}

fn fences_strictly_increase(ctx: &Ctx) {
    let mut last = 0u64;
    for _ in 0..5 {
        let o = ctx.run(&["acquire", "f", "--json"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let fence = v["fence"].as_u64().unwrap();
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        let tok = v["token"].as_str().unwrap();
        assert_eq!(code(&ctx.run(&["release", "f", "--token", tok])), 0);
    }
    // exec sees the next fence in its environment.
    let o = ctx.run(&["exec", "f", "--", "sh", "-c", "printf %s \"$DLOCK_FENCE\""]);
    assert!(stdout(&o).parse::<u64>().unwrap() > last);
}

fn status_lists_and_exit_codes(ctx: &Ctx) {
    let tok = ctx.acquire("alpha", "30s");
    ctx.acquire("beta", "30s");
    let all = ctx.status_json(&[]);
    let names: Vec<&str> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let a = &all["locks"][0];
    assert_eq!(a["held"], true);
    assert_eq!(a["token_id"].as_str().unwrap(), &tok[..8]);
    assert!(a["holder"]["host"].is_string() && a["holder"]["pid"].as_u64().unwrap() > 0);
    assert!(a["holder"]["user"].is_string() && a["holder"]["command"].is_string());
    assert!(a["fence"].as_u64().unwrap() > 0 && a["ttl_ms"].as_u64().unwrap() > 0);
    assert!(a["acquired_at"].as_str().unwrap().ends_with('Z'));
    assert!(all["backend"].is_string() && all["location"].is_string());

    assert_eq!(code(&ctx.run(&["status", "alpha", "beta"])), 0);
    let o = ctx.run(&["status", "alpha", "gamma"]);
    assert_eq!(code(&o), 1);
    let table = stdout(&o);
    assert!(
        table.contains("alpha") && table.contains("gamma") && table.contains("(free)"),
        "{table}"
    );
    assert!(
        !table.contains(&tok),
        "status must never show the full token"
    );
    let plain = ctx.run(&["status"]);
    assert_eq!(code(&plain), 0);
    assert!(!stdout(&plain).contains(&tok));
}

fn names_are_literal(ctx: &Ctx) {
    let names = [
        "with space",
        "it's \"quoted\"",
        "star*?[x]",
        "🔒 emoji",
        "brace}{x",
        "a",
    ];
    let mut toks = Vec::new();
    for n in names {
        toks.push(ctx.acquire(n, "30s"));
    }
    let all = ctx.status_json(&[]);
    let mut listed: Vec<String> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    // A glob-looking name matches only itself.
    let o = ctx.run(&["status", "star*"]);
    assert_eq!(code(&o), 1, "'star*' is not held: {}", stdout(&o));
    for (n, t) in names.iter().zip(&toks) {
        let o = ctx.run(&["release", n, "--token", t]);
        assert_eq!(code(&o), 0, "release {n}: {}", stderr(&o));
    }
    assert_eq!(ctx.status_json(&[])["locks"].as_array().unwrap().len(), 0);
}

fn bad_input_is_one_clear_line(ctx: &Ctx) {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["acquire", ""], 2, "empty"),
        (&["acquire", "a\nb"], 2, "control character"),
        (&["acquire", "x", "--lease", "0"], 2, "greater than zero"),
        (&["acquire", "x", "--lease", "-5s"], 2, "negative"),
        (&["acquire", "x", "--lease", "soon"], 2, "not a duration"),
        (&["acquire", "x", "--wait", "-1s"], 2, "negative"),
        (
            &["acquire", "x", "--token", "has space"],
            2,
            "printable ASCII",
        ),
        (&["release", "x"], 2, "--token"),
        (&["release", "x", "--token", ""], 2, "token"),
        (
            &["exec", "x", "--lease", "100ms", "--", "true"],
            2,
            "too short",
        ),
        (
            &[
                "exec",
                "x",
                "--lease",
                "10s",
                "--kill-after",
                "9s",
                "--",
                "true",
            ],
            2,
            "kill-after",
        ),
        (&["exec", "x"], 2, "CMD"),
        (&["status", "bad\tname"], 2, "control character"),
    ];
    let long = "n".repeat(256);
    let mut all: Vec<(Vec<&str>, i32, &str)> =
        cases.iter().map(|(a, c, m)| (a.to_vec(), *c, *m)).collect();
    all.push((vec!["acquire", &long], 2, "255 bytes"));
    for (args, want, msg) in all {
        let o = ctx.run(&args);
        assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(msg), "{args:?}: expected '{msg}' in: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line, got: {err}"
        );
        assert!(err.starts_with("dlock: "), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed to stdout");
    }
    // Nothing was taken by any of them.
    assert_eq!(ctx.status_json(&[])["locks"].as_array().unwrap().len(), 0);
}

fn exec_passes_status_and_environment(ctx: &Ctx) {
    let o = ctx.run(&[
        "exec",
        "e",
        "--",
        "sh",
        "-c",
        "printf '%s|%s|%s' \"$DLOCK_NAME\" \"$DLOCK_HELD\" \"${#DLOCK_TOKEN}\"; exit 7",
    ]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(stdout(&o), "e|1|32");
    assert!(!ctx.is_held("e"), "released when the command exited");
    let o = ctx.run(&["exec", "e", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&o), 143, "died of SIGTERM: {}", stderr(&o));
    let o = ctx.run(&["exec", "e", "--", "/nonexistent/cmd"]);
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    assert!(stderr(&o).contains("command not found"));
    let script = ctx.path("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let o = ctx.run(&["exec", "e", "--", script.to_str().unwrap()]);
    assert_eq!(code(&o), 126, "{}", stderr(&o));
    assert!(!ctx.is_held("e"), "a failed spawn releases the lock");
}

/// A command may release its exec's lock early on purpose (the README's
/// `--token "$DLOCK_TOKEN"`): exec lets it run on past the renewals and the
/// lease, says that the command released it, and does not call it lost.
fn exec_command_releases_early(ctx: &Ctx) {
    let script = r#"
        "$DLOCK_BIN" release early --token "$DLOCK_TOKEN"; echo "rel=$?"
        "$DLOCK_BIN" status early >/dev/null; echo "status=$?"
        sleep 2
        echo "ran on"
    "#;
    let mut c = ctx.cmd(&[
        "exec", "--lease", "1500ms", "early", "--", "sh", "-c", script,
    ]);
    c.env("DLOCK_BIN", dlock_bin());
    let o = run(c);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(code(&o), 0, "{out}{err}");
    assert_eq!(out, "rel=0\nstatus=1\nran on\n", "{err}");
    assert!(
        err.contains("the command released 'early' itself"),
        "says so: {err}"
    );
    assert_eq!(err.lines().count(), 1, "and nothing else: {err}");
    assert!(!ctx.is_held("early"));
}

fn exec_conflict_exit_code(ctx: &Ctx) {
    let tok = ctx.acquire("c", "30s");
    let marker = ctx.path("ran");
    let touch = format!("touch '{}'", marker.display());
    let o = ctx.run(&["exec", "c", "--", "sh", "-c", &touch]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(stderr(&o).contains("is busy"), "{}", stderr(&o));
    let o = ctx.run(&["exec", "-E", "0", "c", "--", "sh", "-c", &touch]);
    assert_eq!(code(&o), 0);
    let o = ctx.run(&[
        "-q",
        "exec",
        "--conflict-exit-code",
        "3",
        "c",
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).is_empty(), "--quiet silences the busy message");
    assert!(
        !marker.exists(),
        "the command never ran while the lock was busy"
    );
    assert_eq!(code(&ctx.run(&["release", "c", "--token", &tok])), 0);
    assert_eq!(code(&ctx.run(&["exec", "c", "--", "sh", "-c", &touch])), 0);
    assert!(marker.exists());
}

/// The largest values allowed work end to end on every backend.
fn longest_durations_work(ctx: &Ctx) {
    let o = ctx.run(&[
        "acquire",
        "long",
        "--lease",
        "1y",
        "--connect-timeout",
        "1h",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let tok = stdout(&o).trim().to_string();
    let v = ctx.status_json(&["long"]);
    let ttl = v["locks"][0]["ttl_ms"].as_u64().expect("held");
    assert!(ttl > 31_000_000_000, "a year's lease: {v}");
    let o = ctx.run(&["renew", "long", "--token", &tok, "--lease", "1y"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(code(&ctx.run(&["release", "long", "--token", &tok])), 0);
    let o = ctx.run(&[
        "exec",
        "long",
        "--wait",
        "1y",
        "--lease",
        "1y",
        "--max-runtime",
        "1y",
        "--min-hold",
        "1ms",
        "--kill-after",
        "1h",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

macro_rules! backends {
    ($($backend:ident => $server:expr;)*) => {$(
        mod $backend {
            use super::*;
            fn ctx() -> Ctx {
                let server: Arc<dyn Server> = $server;
                Ctx::new(server)
            }
            #[test] fn counter_is_exact() { super::counter_is_exact(&ctx()) }
            #[test] fn longest_durations_work() { super::longest_durations_work(&ctx()) }
            #[test] fn release_checks_the_token() { super::release_checks_the_token(&ctx()) }
            #[test] fn force_release_says_whom_it_broke() { super::force_release_says_whom_it_broke(&ctx()) }
            #[test] fn leases_expire() { super::leases_expire(&ctx()) }
            #[test] fn same_token_extends_without_counting() { super::same_token_extends_without_counting(&ctx()) }
            #[test] fn waiters_wake_on_release() { super::waiters_wake_on_release(&ctx()) }
            #[test] fn fences_strictly_increase() { super::fences_strictly_increase(&ctx()) }
            #[test] fn status_lists_and_exit_codes() { super::status_lists_and_exit_codes(&ctx()) }
            #[test] fn names_are_literal() { super::names_are_literal(&ctx()) }
            #[test] fn bad_input_is_one_clear_line() { super::bad_input_is_one_clear_line(&ctx()) }
            #[test] fn exec_passes_status_and_environment() { super::exec_passes_status_and_environment(&ctx()) }
            #[test] fn exec_conflict_exit_code() { super::exec_conflict_exit_code(&ctx()) }
            #[test] fn exec_command_releases_early() { super::exec_command_releases_early(&ctx()) }
        }
    )*};
}

backends! {
    redis => Arc::new(Redis::start());
    redis_sentinel => common::sentinel::SentinelSet::shared();
    redis_cluster => common::cluster::ClusterSet::shared();
    redlock => common::redlock::RedlockSet::shared();
    sqlite => Arc::new(common::sqlite::Sqlite::new());
    mariadb => common::mariadb::MariaDb::shared();
    postgres => common::postgres::Postgres::shared();
    etcd => common::etcd::Etcd::shared();
    zookeeper => common::zookeeper::ZooKeeper::shared();
}
