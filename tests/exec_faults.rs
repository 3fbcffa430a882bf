//! `exec` under faults, against a private Redis. Every case checks the
//! invariant that matters: no two holders' commands ever run at once while
//! the backend is healthy, and a command never outlives its lease.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn setup() -> (Arc<Redis>, Ctx) {
    let r = Arc::new(Redis::start());
    let ctx = Ctx::new(r.clone());
    (r, ctx)
}

fn lease_key(ctx: &Ctx, name: &str) -> String {
    format!("{}:{{{}}}:lease", ctx.prefix, name)
}

/// Starts `dlock -v exec ARGS -- sh -c SCRIPT` with stderr captured.
fn exec_sh(ctx: &Ctx, args: &[&str], script: &str) -> (std::process::Child, Lines) {
    let mut a = vec!["-v", "exec"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--", "sh", "-c", script]);
    let mut child = spawn(ctx.cmd(&a));
    let lines = Lines::of(&mut child);
    (child, lines)
}

#[test]
fn sigkill_of_dlock_stops_the_whole_job_and_the_lease_runs_out() {
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!(
        "sleep 60 & echo \"$$ $!\" > '{}'; wait",
        ready.path.display()
    );
    let (mut dlock, _l) = exec_sh(&ctx, &["--lease", "3s", "k"], &script);
    let pids = ready.read_line(Duration::from_secs(10));
    let (child, grandchild): (i32, i32) = {
        let mut it = pids.split_whitespace().map(|p| p.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    let killed = Instant::now();
    signal(dlock.id(), libc::SIGKILL);
    let _ = dlock.wait();
    assert!(
        wait_pid_exit(child, Duration::from_secs(2)),
        "the command outlived dlock"
    );
    let child_gone = killed.elapsed();
    assert!(
        wait_pid_exit(grandchild, Duration::from_secs(2)),
        "the command's background job outlived dlock"
    );
    eprintln!("case 1: command gone {child_gone:?} after SIGKILL of dlock (lease 3s)");
    // The lease is not released by a dead holder: it runs out on the server.
    assert!(
        ctx.is_held("k"),
        "nobody released the lock; it must still be held"
    );
    let o = ctx.run(&["acquire", "k", "--wait", "10s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let freed = killed.elapsed();
    assert!(
        freed > Duration::from_millis(1500),
        "freed after {freed:?}: only the lease should free it"
    );
    eprintln!("case 1: lock free {freed:?} after SIGKILL (lease 3s)");
}

#[test]
fn paused_server_stops_the_command_before_the_lease_expires() {
    let (r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!("echo $$ > '{}'; exec sleep 60", ready.path.display());
    let (mut dlock, mut lines) = exec_sh(&ctx, &["--lease", "2s", "p"], &script);
    let child: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    // Right after a renewal is the worst case: the lease is as long as it gets.
    lines.expect("renewed", Duration::from_secs(5));
    let pttl: i64 = r.cli(&["PTTL", &lease_key(&ctx, "p")]).parse().unwrap();
    let expires_at = now_ms() + pttl;
    let paused = Instant::now();
    r.pause();
    assert!(
        wait_pid_exit(child, Duration::from_secs(5)),
        "the command kept running without a lease"
    );
    let dead_ms = now_ms();
    let stopped_after = paused.elapsed();
    assert!(
        dead_ms < expires_at,
        "the command died at {dead_ms}, after the server-side expiry at {expires_at}"
    );
    eprintln!(
        "case 2: command stopped {stopped_after:?} after the server paused; lease 2s, {} ms before the server-side expiry",
        expires_at - dead_ms
    );
    // Keep it paused past the expiry, then a contender must get the lock.
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(79), "lost-lease exit code");
    let err = lines.rest();
    assert!(err.contains("lost: no renewal succeeded since"), "{err}");
    // The renewal's timeout was cut to the deadline; its message stays readable.
    assert!(err.contains("did not answer within"), "{err}");
    let sub_ms = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_digit()) && (w.ends_with("us") || w.ends_with("ns"))
    };
    assert!(!err.split_whitespace().any(sub_ms), "{err}");
    let wait_ms = (expires_at - now_ms()).max(0) as u64 + 100;
    std::thread::sleep(Duration::from_millis(wait_ms)); // the pause must outlast the lease
    r.resume();
    let o = ctx.run(&["acquire", "p", "--wait", "5s"]);
    assert_eq!(
        code(&o),
        0,
        "a second contender gets the lock after SIGCONT: {}",
        stderr(&o)
    );
}

/// dlock itself stopped (SIGSTOP stops its supervisor and renewal threads
/// alike) can neither renew nor stop its command: its guard process must kill
/// the command's whole group, which here ignores SIGTERM, before the lease
/// expires on the server, so that the next holder never overlaps it.
fn stopped_dlock_is_replaced_by_its_guard(ctx: &Ctx) {
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let log = ctx.path("log");
    let script = format!(
        "trap '' TERM; sleep 60 & echo \"$$ $!\" > '{}'; \
         while :; do echo A $(date +%s%3N) >> '{}'; sleep 0.02; done",
        ready.path.display(),
        log.display()
    );
    let (mut dlock, mut lines) = exec_sh(ctx, &["--lease", "3s", "stop"], &script);
    let pids: Vec<i32> = ready
        .read_line(Duration::from_secs(10))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    lines.expect("renewed", Duration::from_secs(5));
    signal(dlock.id(), libc::SIGSTOP);
    let stopped_ms = now_ms();
    wait_until("dlock to stop", Duration::from_secs(5), || {
        proc_state(dlock.id() as i32).as_deref() == Some("T")
    });
    // Nothing renews from now on: the server's TTL fixes the expiry. Taking
    // the time before asking errs on the early side.
    let asked_ms = now_ms();
    let ttl = ctx.status_json(&["stop"])["locks"][0]["ttl_ms"]
        .as_i64()
        .expect("the lock is held");
    let expires_at = asked_ms + ttl;
    let b_line = format!("echo B $(date +%s%3N) >> '{}'", log.display());
    let mut second = spawn(ctx.cmd(&["exec", "--wait", "10s", "stop", "-c", &b_line]));
    for &pid in &pids {
        let gone = wait_pid_exit(pid, Duration::from_secs(10));
        assert!(
            gone,
            "process {pid} of the command ran on while dlock was stopped"
        );
    }
    let dead_ms = now_ms();
    assert!(
        dead_ms < expires_at,
        "the command's group died at {dead_ms}, after the server-side expiry at {expires_at}"
    );
    assert_eq!(
        wait_child(&mut second, Duration::from_secs(15)).code(),
        Some(0)
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let stamps = |who: &str| -> Vec<i64> {
        let of = |l: &str| {
            l.strip_prefix(who)
                .map(|t| t.trim().parse::<i64>().unwrap())
        };
        log.lines().filter_map(of).collect()
    };
    let (last_a, b) = (stamps("A ").into_iter().max().unwrap(), stamps("B ")[0]);
    assert!(
        last_a > stopped_ms,
        "the command ran on after dlock stopped"
    );
    assert!(
        last_a < b,
        "the first command ran {} ms into the next holder's turn",
        last_a - b
    );
    eprintln!(
        "dlock stopped: its command's group dead {} ms before the server-side expiry, {} ms before the next holder ran",
        expires_at - dead_ms,
        b - last_a
    );
    signal(dlock.id(), libc::SIGCONT);
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(79), "lost-lease exit code");
    let err = lines.rest();
    assert!(err.contains("its guard process stopped"), "{err}");
    assert_eq!(err.matches("lost").count(), 1, "{err}");
}

#[test]
fn stopped_dlock_has_its_command_killed_before_the_lease_expires() {
    let (_r, ctx) = setup();
    stopped_dlock_is_replaced_by_its_guard(&ctx);
}

#[test]
fn stopped_dlock_has_its_command_killed_before_the_lease_expires_on_sqlite() {
    let ctx = Ctx::new(Arc::new(common::sqlite::Sqlite::new()));
    stopped_dlock_is_replaced_by_its_guard(&ctx);
}

#[test]
fn a_lease_lost_while_dlock_runs_signals_the_command_once() {
    // dlock and its guard both watch the deadline; only one may send the signal.
    let (r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let got = ctx.path("got");
    let script = format!(
        "trap 'echo term >> \"{g}\"' TERM; echo $$ > '{r}'; while :; do sleep 0.02; done",
        g = got.display(),
        r = ready.path.display()
    );
    let (mut dlock, mut lines) = exec_sh(&ctx, &["--lease", "2s", "once"], &script);
    let child: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    lines.expect("renewed", Duration::from_secs(5));
    r.pause();
    // The trap keeps it alive through SIGTERM; SIGKILL follows after --kill-after.
    assert!(wait_pid_exit(child, Duration::from_secs(5)));
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    r.resume();
    assert_eq!(st.code(), Some(79));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "term\n");
    let err = lines.rest();
    assert!(err.contains("stopping the command with SIGTERM"), "{err}");
}

#[test]
fn server_restart_with_data_loss_stops_the_old_holder_and_fences_grow() {
    let (r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!(
        "echo \"$$ $DLOCK_FENCE\" > '{}'; exec sleep 60",
        ready.path.display()
    );
    let (mut dlock, mut lines) = exec_sh(&ctx, &["--lease", "2s", "d"], &script);
    let line = ready.read_line(Duration::from_secs(10));
    let mut it = line.split_whitespace();
    let child: i32 = it.next().unwrap().parse().unwrap();
    let old_fence: u64 = it.next().unwrap().parse().unwrap();
    let restarted = Instant::now();
    r.restart_empty();
    assert!(
        wait_pid_exit(child, Duration::from_secs(3)),
        "the old holder kept running"
    );
    let stopped = restarted.elapsed();
    eprintln!(
        "case 3: old command stopped {stopped:?} after the restart (lease 2s, renewal every 667ms)"
    );
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(79));
    assert!(lines.rest().contains("no longer has the lease"));
    let o = ctx.run(&["acquire", "d", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let new_fence = v["fence"].as_u64().unwrap();
    assert!(
        new_fence > old_fence,
        "fence {new_fence} after a restart must exceed {old_fence}"
    );
}

#[test]
fn sigterm_with_a_child_that_ignores_it_keeps_the_lock_until_the_child_ends() {
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let go = Fifo::new(ctx.dir.path(), "go");
    let script = format!(
        "trap '' TERM; echo $$ > '{}'; read x < '{}'; echo done",
        ready.path.display(),
        go.path.display()
    );
    let (mut dlock, _l) = exec_sh(&ctx, &["--lease", "1s", "t"], &script);
    let _child = ready.read_line(Duration::from_secs(10));
    signal(dlock.id(), libc::SIGTERM);
    // Across several leases, nobody else gets in while the child still runs.
    let until = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while Instant::now() < until {
        let o = ctx.run(&["exec", "t", "--", "true"]);
        assert_eq!(
            code(&o),
            75,
            "a second holder ran while the first child was alive"
        );
        refused += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused >= 10);
    assert!(
        dlock.try_wait().unwrap().is_none(),
        "dlock must wait for its child"
    );
    go.write_line("go");
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "the child ignored SIGTERM and exited 0");
    assert_eq!(code(&ctx.run(&["exec", "t", "--", "true"])), 0);
}

#[test]
fn sigterm_ends_an_ordinary_child_and_frees_the_lock_at_once() {
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!("echo $$ > '{}'; exec sleep 60", ready.path.display());
    let (mut dlock, _l) = exec_sh(&ctx, &["--lease", "60s", "o"], &script);
    ready.read_line(Duration::from_secs(10));
    signal(dlock.id(), libc::SIGTERM);
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(143));
    assert!(
        !ctx.is_held("o"),
        "released at once, not after the 60s lease"
    );
}

#[test]
fn a_job_ten_times_its_lease_keeps_the_lock_throughout() {
    let (_r, ctx) = setup();
    let (mut dlock, mut lines) = exec_sh(&ctx, &["--lease", "500ms", "long"], "sleep 5");
    lines.expect("acquired", Duration::from_secs(10));
    let mut refused = 0;
    while dlock.try_wait().unwrap().is_none() {
        let o = ctx.run(&["exec", "long", "--wait", "0", "--", "true"]);
        if dlock.try_wait().unwrap().is_some() {
            break; // the job ended meanwhile; the contender may have won fairly
        }
        assert_eq!(
            code(&o),
            75,
            "a contender got in during the job: {}",
            stderr(&o)
        );
        refused += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused >= 20, "only {refused} checks: {}", lines.rest());
    assert_eq!(dlock.wait().unwrap().code(), Some(0));
}

#[test]
fn sigterm_while_waiting_exits_at_once_and_never_acquires() {
    let (_r, ctx) = setup();
    let tok = ctx.acquire("w", "60s");
    let marker = ctx.path("ran");
    let mut c = ctx.cmd(&[
        "-v",
        "exec",
        "--wait",
        "60s",
        "w",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    c.stdout(std::process::Stdio::null());
    let mut dlock = spawn(c);
    let mut lines = Lines::of(&mut dlock);
    lines.expect("waiting", Duration::from_secs(10));
    let sent = Instant::now();
    signal(dlock.id(), libc::SIGTERM);
    let st = wait_child(&mut dlock, Duration::from_secs(5));
    let took = sent.elapsed();
    assert_eq!(st.code(), Some(143));
    assert!(
        took < Duration::from_millis(500),
        "took {took:?} to stop waiting"
    );
    assert_eq!(code(&ctx.run(&["release", "w", "--token", &tok])), 0);
    assert!(
        !ctx.is_held("w"),
        "the stopped waiter must not take the lock afterwards"
    );
    assert!(!marker.exists());
}

#[test]
fn lost_lease_and_sigterm_stop_grandchildren_too() {
    let (_r, ctx) = setup();
    // After SIGTERM to dlock.
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!("sleep 60 & echo $! > '{}'; wait", ready.path.display());
    let (mut dlock, _l) = exec_sh(&ctx, &["g"], &script);
    let gc: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    signal(dlock.id(), libc::SIGTERM);
    wait_child(&mut dlock, Duration::from_secs(10));
    assert!(
        wait_pid_exit(gc, Duration::from_secs(2)),
        "grandchild survived SIGTERM to dlock"
    );

    // After a lost lease (the lock broken under it).
    let ready2 = Fifo::new(ctx.dir.path(), "ready2");
    let script = format!("sleep 60 & echo $! > '{}'; wait", ready2.path.display());
    let (mut dlock, mut lines) = exec_sh(&ctx, &["--lease", "1s", "g"], &script);
    let gc: i32 = ready2.read_line(Duration::from_secs(10)).parse().unwrap();
    assert_eq!(code(&ctx.run(&["release", "g", "--force"])), 0);
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(79));
    assert!(
        wait_pid_exit(gc, Duration::from_secs(2)),
        "grandchild survived a lost lease"
    );
    assert!(lines.rest().contains("lease lost"));

    // A command that exits but leaves a background job: the job is part of it.
    let ready3 = Fifo::new(ctx.dir.path(), "ready3");
    let script = format!("sleep 60 & echo $! > '{}'", ready3.path.display());
    let (mut dlock, _l) = exec_sh(&ctx, &["g"], &script);
    let gc: i32 = ready3.read_line(Duration::from_secs(10)).parse().unwrap();
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    assert!(
        !pid_alive(gc),
        "a leftover background job outlived the lock"
    );
}

#[test]
fn the_command_inherits_no_backend_socket() {
    let (_r, ctx) = setup();
    let o = ctx.run(&["exec", "fd", "--", "sh", "-c", "ls -l /proc/$$/fd"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let listing = stdout(&o);
    assert!(
        !listing.contains("socket:"),
        "a socket leaked into the command:\n{listing}"
    );
    assert!(
        !listing.contains("pipe:") || listing.lines().filter(|l| l.contains("pipe:")).count() <= 3
    );
}

#[test]
fn forwarded_signals_reach_the_command_once() {
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let got = ctx.path("got");
    let script = format!(
        "trap 'echo usr1 >> \"{g}\"' USR1; trap 'echo hup >> \"{g}\"; exit 5' HUP; echo $$ > '{r}'; while :; do sleep 0.05; done",
        g = got.display(),
        r = ready.path.display()
    );
    let (mut dlock, _l) = exec_sh(&ctx, &["s"], &script);
    ready.read_line(Duration::from_secs(10));
    signal(dlock.id(), libc::SIGUSR1);
    wait_until("USR1 to arrive", Duration::from_secs(5), || {
        std::fs::read_to_string(&got).is_ok_and(|s| s.contains("usr1"))
    });
    signal(dlock.id(), libc::SIGHUP);
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(st.code(), Some(5));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "usr1\nhup\n");
    assert!(!ctx.is_held("s"));
}

#[test]
fn ctrl_c_at_a_terminal_reaches_the_command_once() {
    require("script", "bsdutils");
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let got = ctx.path("got");
    let stop = ctx.path("stop");
    let child = format!(
        "n=0; trap 'n=$((n+1)); echo $n > \"{g}\"' INT; echo $$ > '{r}'; \
         while [ ! -e '{s}' ]; do sleep 0.05; done; exit $n",
        g = got.display(),
        r = ready.path.display(),
        s = stop.display()
    );
    // `script` gives dlock a real terminal as its controlling tty, in the foreground.
    let inner = format!(
        "DLOCK_URL='{}' DLOCK_PREFIX='{}' exec '{}' exec tty -- sh -c \"$CHILD\"",
        ctx.url(),
        ctx.prefix,
        dlock_bin().display()
    );
    let mut term = std::process::Command::new("script");
    term.args(["-qefc", &inner, "/dev/null"])
        .env("CHILD", &child)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut term = term.spawn().unwrap();
    ready.read_line(Duration::from_secs(10));
    use std::io::Write;
    let mut keys = term.stdin.take().unwrap();
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    wait_until("the INT trap to run", Duration::from_secs(5), || {
        std::fs::read_to_string(&got).is_ok_and(|s| !s.trim().is_empty())
    });
    // A second copy, if dlock forwarded what the terminal already delivered, comes
    // within microseconds; give it ample time to show up before stopping the loop.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    let st = wait_child(&mut term, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(1),
        "the command saw Ctrl-C {:?} time(s)",
        std::fs::read_to_string(&got)
    );
    assert!(!ctx.is_held("tty"));
}

#[test]
fn an_interactive_command_can_read_the_terminal() {
    require("script", "bsdutils");
    let (_r, ctx) = setup();
    let got = ctx.path("got");
    let child = format!("read answer; echo \"$answer\" > '{}'", got.display());
    let inner = format!(
        "DLOCK_URL='{}' DLOCK_PREFIX='{}' exec '{}' exec ask -- sh -c \"$CHILD\"",
        ctx.url(),
        ctx.prefix,
        dlock_bin().display()
    );
    let mut term = std::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("CHILD", &child)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut keys = term.stdin.take().unwrap();
    keys.write_all(b"yes\n").unwrap();
    keys.flush().unwrap();
    let st = wait_child(&mut term, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&got).unwrap().trim(), "yes");
}

fn proc_state(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .next()
        .map(String::from)
}

#[test]
fn ctrl_z_suspends_the_job_and_fg_resumes_it() {
    require("script", "bsdutils");
    require("bash", "bash");
    let (_r, ctx) = setup();
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let go = Fifo::new(ctx.dir.path(), "go");
    let rc = ctx.path("rc");
    let mut term = std::process::Command::new("script")
        .args(["-qefc", "bash --norc --noprofile -i", "/dev/null"])
        .env("DLOCK_URL", ctx.url())
        .env("DLOCK_PREFIX", &ctx.prefix)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut keys = term.stdin.take().unwrap();
    let line = format!(
        "'{}' exec --lease 30s job -- sh -c 'echo $PPID > {}; read x < {}'\n",
        dlock_bin().display(),
        ready.path.display(),
        go.path.display(),
    );
    keys.write_all(line.as_bytes()).unwrap();
    keys.flush().unwrap();
    let dlock: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    keys.write_all(b"\x1a").unwrap();
    keys.flush().unwrap();
    wait_until("dlock to stop with its job", Duration::from_secs(5), || {
        proc_state(dlock).as_deref() == Some("T")
    });
    assert!(
        ctx.is_held("job"),
        "a suspended job keeps its lock while the lease lasts"
    );
    // `fg` returns the job's status once it has finished.
    keys.write_all(format!("fg; echo $? > {}\n", rc.display()).as_bytes())
        .unwrap();
    keys.flush().unwrap();
    wait_until("dlock to run again", Duration::from_secs(5), || {
        proc_state(dlock).as_deref() != Some("T")
    });
    go.write_line("go");
    wait_until("the job to finish", Duration::from_secs(10), || {
        std::fs::read_to_string(&rc).is_ok_and(|s| s.ends_with('\n'))
    });
    assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0");
    keys.write_all(b"exit\n").unwrap();
    drop(keys);
    wait_child(&mut term, Duration::from_secs(10));
    assert!(!ctx.is_held("job"));
}

/// The children of process `parent`, any state, as "pid name state".
fn children_of(parent: u32) -> Vec<String> {
    let of = |pid: u32| -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next()?, f.next()?.parse::<u32>().ok()?);
        let name = head.split_once('(')?.1;
        (ppid == parent).then(|| format!("{pid} {name} {state}"))
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(of)
        .collect()
}

/// Each `exec` reaps what it starts (its guard process, its command, the
/// command's orphans): nothing is left to whoever reaps dlock's orphans once
/// it exits. Here that is this test, a child subreaper; in a container it is
/// often a PID 1 that never reaps, where such zombies pile up.
#[test]
fn exec_leaves_nothing_for_the_reaper_of_its_orphans() {
    const INNER: &str = "DLOCK_TEST_AS_SUBREAPER";
    if std::env::var_os(INNER).is_none() {
        // Alone in a process of its own: as a subreaper, this test process
        // would also inherit the orphans of the tests that kill dlock.
        let name = "exec_leaves_nothing_for_the_reaper_of_its_orphans";
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(INNER, "1")
            .status()
            .unwrap();
        assert!(st.success(), "the test failed in its subreaper process");
        return;
    }
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let ctx = Ctx::new(Arc::new(common::sqlite::Sqlite::new()));
    let cases: [(&[&str], i32); 4] = [
        (&["--", "true"], 0),
        (&["-c", "exit 3"], 3),
        // Its group outlives it until dlock stops the orphan.
        (&["-c", "sleep 30 & exit 5"], 5),
        // The guard is dismissed when the command cannot start.
        (&["--", "/nonexistent/command"], 127),
    ];
    for round in 0..10 {
        for (cmd, want) in cases {
            let mut args = vec!["exec", "k"];
            args.extend_from_slice(cmd);
            let o = ctx.run(&args);
            assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
            let left = children_of(std::process::id());
            assert!(
                left.is_empty(),
                "round {round}, {args:?} left processes to its reaper: {left:?}"
            );
        }
    }
}

/// Writes a line to `fifo` once its reader opens it, or panics after
/// `timeout` (its reader may have died).
fn write_within(fifo: &Fifo, timeout: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.path.clone();
    std::thread::spawn(move || tx.send(std::fs::write(path, "go\n").is_ok()));
    let written = rx.recv_timeout(timeout).unwrap_or(false);
    assert!(
        written,
        "nobody read {} within {timeout:?}",
        fifo.path.display()
    );
}

/// As a container's PID 1 (in a PID namespace of its own), dlock reaps the
/// orphans its command leaves, while the command runs and after it (here
/// while the release waits for a paused server), leaves no process of its
/// own behind either, and exits with the command's status.
#[test]
fn as_pid_1_exec_reaps_orphans_and_exits_with_the_commands_status() {
    let (r, ctx) = setup();
    let (done, go) = (ctx.path("done"), Fifo::new(ctx.dir.path(), "go"));
    let bye = Fifo::new(ctx.dir.path(), "bye");
    // An orphan in the command's group, and one in a session of its own
    // that outlives the command until the test says; that one says when it
    // has left the group (else dlock would stop it with the group).
    let script = format!(
        "sh -c 'sleep 0.1 &'; setsid sh -c \"touch '{}'; read x < '{}'\" & read x < '{}'; exit 7",
        done.display(),
        bye.path.display(),
        go.path.display()
    );
    let args = ["--connect-timeout", "20s", "exec", "--lease", "30s", "k"];
    let inner = ctx.cmd(&[&args[..], &["-c", &script]].concat());
    let mut c = std::process::Command::new(require("unshare", "util-linux"));
    c.args(["--pid", "--fork", "--mount-proc"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut unshare = spawn(c);
    // dlock's pid as this test sees it: unshare's only child.
    let mut pid1 = None;
    wait_until("dlock to start as PID 1", Duration::from_secs(10), || {
        pid1 = children_of(unshare.id())
            .first()
            .and_then(|c| c.split(' ').next()?.parse::<u32>().ok());
        pid1.is_some()
    });
    let pid1 = pid1.unwrap();
    wait_for_file(&done, Duration::from_secs(10));
    // The release will wait for the server: time to look at what is left.
    r.pause();
    write_within(&go, Duration::from_secs(10));
    write_within(&bye, Duration::from_secs(10));
    let by = Instant::now() + Duration::from_secs(3);
    let mut left = children_of(pid1);
    while !left.is_empty() && Instant::now() < by {
        std::thread::sleep(Duration::from_millis(5));
        left = children_of(pid1);
    }
    let alive = pid_alive(pid1 as i32);
    r.resume();
    assert!(alive, "dlock exited while the server was paused");
    assert!(
        left.is_empty(),
        "dlock (PID 1) had not reaped these 3 s after its command exited: {left:?}"
    );
    let st = wait_child(&mut unshare, Duration::from_secs(15));
    assert_eq!(st.code(), Some(7), "{}", Lines::of(&mut unshare).rest());
}
