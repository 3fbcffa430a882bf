//! Cron and script ergonomics: --min-hold, --max-runtime, renew,
//! --keepalive-pid, --shell, --jitter and JSON logs, against a private Redis.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn setup() -> (Arc<Redis>, Ctx) {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    (r, ctx)
}

#[test]
fn min_hold_runs_one_cron_tick_once_across_skewed_hosts() {
    let (_r, ctx) = setup();
    let count = ctx.path("count");
    let job = format!("echo ran >> '{}'", count.display());
    let first = ctx.run(&["exec", "--min-hold", "3s", "-E", "0", "tick", "-c", &job]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let started = Instant::now();
    // The second host's clock is a second behind: its tick fires later.
    std::thread::sleep(Duration::from_secs(1));
    let second = ctx.run(&["exec", "--min-hold", "3s", "-E", "0", "tick", "-c", &job]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "ran\n",
        "the tick ran twice"
    );
    // The hold lapses by itself at min-hold: a waiter gets the lock then, not at the 30s lease.
    let o = ctx.run(&["acquire", "tick", "--wait", "10s"]);
    assert_eq!(code(&o), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held past --min-hold"
    );
}

#[test]
fn max_runtime_stops_the_job_with_its_grandchildren_and_frees_the_lock() {
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let job = format!("sleep 60 & echo $! > '{}'; wait", ready.path.display());
    let mut dlock = spawn(ctx.cmd(&[
        "exec",
        "--max-runtime",
        "1s",
        "--kill-after",
        "500ms",
        "--lease",
        "5s",
        "slow",
        "-c",
        &job,
    ]));
    let gc: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(124));
    assert!(
        wait_pid_exit(gc, Duration::from_secs(2)),
        "the grandchild outlived --max-runtime"
    );
    assert!(!ctx.is_held("slow"), "released after the job was stopped");
}

#[test]
fn renew_extends_only_a_lease_the_token_holds() {
    let (_r, ctx) = setup();
    let tok = ctx.acquire("r", "1s");
    let o = ctx.run(&["renew", "r", "--token", &tok, "--lease", "30s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ttl = ctx.status_json(&["r"])["locks"][0]["ttl_ms"]
        .as_u64()
        .unwrap();
    assert!(ttl > 20_000, "renewed to 30s, ttl {ttl}ms");
    let o = ctx.run(&["renew", "r", "--token", "someone-else-0001"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert_eq!(code(&ctx.run(&["release", "r", "--token", &tok])), 0);
    let o = ctx.run(&["renew", "r", "--token", &tok]);
    assert_eq!(
        code(&o),
        3,
        "a stale token must not re-create the lease: {}",
        stderr(&o)
    );
    assert!(!ctx.is_held("r"));
}

fn keepalive_pids(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&&b"keepalive"[..]) && args.contains(&name.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// A process that lives until its stdin is closed: the script a keep-alive watches.
fn owner() -> std::process::Child {
    std::process::Command::new("sh")
        .args(["-c", "read x"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn keepalive_pid_holds_while_the_process_lives_and_frees_soon_after() {
    let (_r, ctx) = setup();
    let mut owner = owner();
    let pid = owner.id().to_string();
    let o = ctx.run(&["acquire", "ka", "--lease", "1s", "--keepalive-pid", &pid]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let held = ctx.status_json(&["ka"]);
    assert_eq!(
        held["locks"][0]["holder"]["pid"]
            .as_u64()
            .unwrap()
            .to_string(),
        pid
    );
    // Several leases pass; the lock stays held throughout.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        assert!(
            ctx.is_held("ka"),
            "the keep-alive let the lease lapse while the owner lived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(owner.stdin.take()); // the owner reads EOF and exits
    let exited = Instant::now();
    owner.wait().unwrap();
    let o = ctx.run(&["acquire", "ka", "--wait", "10s"]);
    assert_eq!(code(&o), 0);
    let freed = exited.elapsed();
    assert!(
        freed < Duration::from_millis(900),
        "freed {freed:?} after the owner exited: released, not lapsed"
    );
    eprintln!("keepalive: lock free {freed:?} after the owner exited (lease 1s)");
}

#[test]
fn a_killed_keepalive_lets_the_lease_lapse() {
    let (_r, ctx) = setup();
    let mut owner = owner();
    let name = format!("kk-{}", ctx.prefix);
    let o = ctx.run(&[
        "acquire",
        &name,
        "--lease",
        "1s",
        "--keepalive-pid",
        &owner.id().to_string(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let pids = keepalive_pids(&name);
    assert_eq!(pids.len(), 1, "one detached keep-alive runs");
    let killed = Instant::now();
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let o = ctx.run(&["acquire", &name, "--wait", "10s"]);
    assert_eq!(code(&o), 0);
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "the lease lapsed within about one lease"
    );
    drop(owner.stdin.take());
    owner.wait().unwrap();
}

#[test]
fn keepalive_needs_a_live_pid_and_a_workable_lease() {
    let (_r, ctx) = setup();
    let o = ctx.run(&["acquire", "x", "--keepalive-pid", "999999999"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = ctx.run(&["acquire", "x", "--lease", "100ms", "--keepalive-pid", "1"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!ctx.is_held("x"));
}

#[test]
fn shell_strings_and_argv_are_kept_apart() {
    let (_r, ctx) = setup();
    let o = ctx.run(&[
        "exec",
        "sh",
        "-c",
        "printf '%s|' \"$DLOCK_NAME\" one 'two words'",
    ]);
    assert_eq!(stdout(&o), "sh|one|two words|");
    // After --, arguments are passed as they are, never re-split by a shell.
    let o = ctx.run(&["exec", "sh", "--", "printf", "%s|", "a b", "$HOME", "*"]);
    assert_eq!(stdout(&o), "a b|$HOME|*|");
    let o = ctx.run(&["exec", "sh", "-c", "true", "--", "ls"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn jitter_delays_within_its_bound() {
    let (_r, ctx) = setup();
    let start = Instant::now();
    let o = ctx.run(&["exec", "--jitter", "400ms", "j", "--", "true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        code(&ctx.run(&["exec", "--jitter", "-1s", "j", "--", "true"])),
        2
    );
    assert_eq!(
        code(&ctx.run(&["exec", "--jitter", "0", "j", "--", "true"])),
        0
    );
}

fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_log_lines_parse_and_name_each_event() {
    let (_r, ctx) = setup();
    let o = ctx.run(&[
        "--log-format",
        "json",
        "exec",
        "--lease",
        "600ms",
        "ev",
        "-c",
        "sleep 0.5; exit 3",
    ]);
    assert_eq!(code(&o), 3);
    let events = json_lines(&stderr(&o));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in ["acquired", "renewed", "child_exited", "released"] {
        assert!(kinds.contains(&want), "no '{want}' event in {kinds:?}");
    }
    for e in &events {
        assert!(e["ts"].as_str().unwrap().ends_with('Z'));
        assert!(e["level"].is_string() && e["message"].is_string());
        assert_eq!(e["lock"], "ev");
    }
    let exited = events
        .iter()
        .find(|e| e["event"] == "child_exited")
        .unwrap();
    assert_eq!(exited["status"], 3);

    // The environment selects it too; busy, waiting and lost are events as well.
    let tok = ctx.acquire("ev", "30s");
    let mut c = ctx.cmd(&["exec", "--wait", "300ms", "ev", "--", "true"]);
    c.env("DLOCK_LOG_FORMAT", "json");
    let o = run(c);
    assert_eq!(code(&o), 75);
    let kinds: Vec<String> = json_lines(&stderr(&o))
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["waiting", "busy"]);
    assert_eq!(code(&ctx.run(&["release", "ev", "--token", &tok])), 0);

    let ready = Fifo::new(ctx.dir.path(), "ready");
    let job = format!("echo go > '{}'; exec sleep 60", ready.path.display());
    let mut dlock = spawn(ctx.cmd(&[
        "--log-format",
        "json",
        "exec",
        "--lease",
        "1s",
        "ev",
        "-c",
        &job,
    ]));
    let mut lines = Lines::of(&mut dlock);
    ready.read_line(Duration::from_secs(10));
    assert_eq!(code(&ctx.run(&["release", "ev", "--force"])), 0);
    assert_eq!(
        wait_child(&mut dlock, Duration::from_secs(10)).code(),
        Some(79)
    );
    let events = json_lines(&lines.rest());
    let lost = events
        .iter()
        .find(|e| e["event"] == "lost")
        .expect("a lost event");
    assert_eq!(lost["level"], "error");
    assert!(lost["last_renewed"].is_string());
}

/// The command starts as a shell would start it: found on PATH past a
/// non-executable file of the same name, a script without `#!` run by
/// /bin/sh, and no signal blocked or ignored.
#[test]
fn commands_start_as_a_shell_would_start_them() {
    use std::os::unix::fs::PermissionsExt;
    let (_r, ctx) = setup();
    let (first, second) = (ctx.path("first"), ctx.path("second"));
    for dir in [&first, &second] {
        std::fs::create_dir(dir).unwrap();
    }
    let script = "echo \"no #! line, args: $*\"\n";
    std::fs::write(first.join("job"), script).unwrap();
    std::fs::write(second.join("job"), script).unwrap();
    std::fs::set_permissions(second.join("job"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = ctx.cmd(&["exec", "start", "--", "job", "a", "b"]);
    c.env(
        "PATH",
        format!("{}:{}:/usr/bin:/bin", first.display(), second.display()),
    );
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "no #! line, args: a b\n");

    let o = ctx.run(&["exec", "start", "--", "cat", "/proc/self/status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let status = stdout(&o);
    let mask = |field: &str| {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "blocked signals");
    // dlock ignores SIGPIPE (Rust does); the command must not inherit that.
    assert_eq!(
        mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored"
    );
}
