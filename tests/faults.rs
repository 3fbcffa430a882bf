//! Faults every backend can meet, written once: the server killed and
//! started again, stopped (SIGSTOP) and resumed, the holder's session ended
//! at the server, its connections closed between dlock and the server. Each runs on every backend whose row in
//! tests/common/backends.rs has the hook it needs, on a server of the test's
//! own (it breaks it).

use std::time::{Duration, Instant};

use crate::common;
use common::backends::{scenarios, Rig};
use common::proxy::Resetting;
use common::*;

/// The password in the backend's URL, which no output may show.
fn password(rig: &Rig) -> Option<String> {
    let url = url::Url::parse(&rig.url()).ok()?;
    url.password().map(String::from)
}

/// A waiter whose server goes away and comes back while the lock is held:
/// it keeps waiting and takes the lock once it is free.
fn a_waiter_survives_a_server_restart(rig: &Rig) {
    let started = rig.path("started");
    let stop = rig.path("stop");
    let job = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
        started.display(),
        stop.display()
    );
    let mut holder = spawn(rig.cmd(&["exec", "--lease", "3s", "job", "--", "sh", "-c", &job]));
    wait_for_file(&started, Duration::from_secs(20));
    let mut waiter = spawn(rig.cmd(&[
        "-v", "exec", "--wait", "40s", "job", "--", "sh", "-c", "echo ran",
    ]));
    let mut lines = Lines::of(&mut waiter);
    lines.expect("waiting", Duration::from_secs(20));
    rig.server.kill();
    // Not gone with exit 69: it says it keeps waiting.
    lines.expect("still waiting", Duration::from_secs(20));
    std::fs::write(&stop, "").unwrap();
    let st = wait_child(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "the holder's job ended normally");
    rig.server.restart();
    let st = wait_child(&mut waiter, Duration::from_secs(40));
    let rest = lines.rest();
    eprintln!("waiter through a restart:\n{}", lines.seen.join("\n"));
    assert_eq!(st.code(), Some(0), "{rest}");
    let mut out = String::new();
    use std::io::Read;
    waiter
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "ran", "{rest}");
}

/// The server dies under an `exec` holder: its command is stopped before
/// the lease could end, and the next holder starts after it, with a greater
/// fence.
fn server_killed_during_exec_stops_the_command_before_its_lease_ends(rig: &Rig) {
    let mut a = exec_recorder(rig, "3s", "a");
    wait_for_file(&rig.path("a.start"), Duration::from_secs(20));
    rig.server.kill();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("lost"), "{err}");
    let a_end = read_i64(&rig.path("a.end"));

    rig.server.restart();
    // Nothing renewed the lease after the kill, so this is when it ended.
    let expiry = rig.server.expires_us(rig, "job");
    assert!(
        a_end < expiry,
        "the command ran until {a_end}, past the lease's end at {expiry}"
    );
    eprintln!(
        "command stopped {} ms before the server-side end of its 3s lease",
        (expiry - a_end) / 1000
    );
    // The next holder gets the lock once it expired, and never overlaps.
    std::fs::write(rig.path("b.stop"), "").unwrap();
    let o = rig.run(&[
        "exec",
        "--wait",
        "20s",
        "job",
        "--",
        "sh",
        "-c",
        &recorder(rig, "b"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let b_start = read_i64(&rig.path("b.start"));
    assert!(
        b_start > a_end,
        "b started at {b_start}, a ended at {a_end}"
    );
    assert!(read_i64(&rig.path("b.fence")) > read_i64(&rig.path("a.fence")));
}

/// The server is killed and back within the holder's lease: a renewal
/// fails, the next one succeeds, and the holder keeps the lock throughout.
fn server_restarted_within_the_lease_keeps_the_hold(rig: &Rig) {
    let mut a = exec_recorder(rig, "10s", "a");
    wait_for_file(&rig.path("a.start"), Duration::from_secs(20));
    let before = rig.server.expires_us(rig, "job");
    rig.server.kill();
    rig.server.restart();
    wait_until(
        "a renewal on the restarted server",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(50));
            rig.server.expires_us(rig, "job") > before
        },
    );
    let busy = rig.run(&["acquire", "job"]);
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    std::fs::write(rig.path("a.stop"), "").unwrap();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(0), "{err}");
    // A failed renewal, then a good one on the restarted server.
    assert!(err.contains("failed") && err.contains("renewed"), "{err}");
    assert!(!rig.is_held("job"));
}

/// The server ends the holder's session: dlock opens another, renews on it
/// and takes its wake-up lock again; the command runs to its end.
fn killed_session_is_replaced_and_renewals_go_on(rig: &Rig) {
    let mut a = exec_recorder(rig, "2s", "a");
    wait_for_file(&rig.path("a.start"), Duration::from_secs(20));
    let first = rig
        .server
        .wake_holder(rig, "job")
        .expect("the live holder keeps its wake-up lock");
    // The holder's session, and the break listener's once the command has
    // run 100 ms (a loaded machine may take that long to get here).
    let ended = rig.server.end_sessions();
    assert!((1..=2).contains(&ended), "{ended} sessions ended");
    let before = rig.server.expires_us(rig, "job");
    wait_until(
        "a renewal on a new session",
        Duration::from_secs(10),
        || {
            std::thread::sleep(Duration::from_millis(20));
            rig.server.expires_us(rig, "job") > before
        },
    );
    wait_until(
        "the wake-up lock taken again",
        Duration::from_secs(10),
        || {
            std::thread::sleep(Duration::from_millis(20));
            rig.server
                .wake_holder(rig, "job")
                .is_some_and(|now| now != first)
        },
    );
    std::fs::write(rig.path("a.stop"), "").unwrap();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = stderr_of(&mut a);
    assert_eq!(st.code(), Some(0), "the command ran to its end: {err}");
}

/// Every connection between dlock and the server closes under an `exec`
/// holder (a proxy in between closes them): dlock connects again, renewals
/// go on, nobody else gets the lock, and the command runs to its end.
fn closed_connections_are_replaced_and_renewals_go_on(rig: &Rig) {
    let port = rig.server.port();
    let proxy = Resetting::start(port);
    let via = rig.url().replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", proxy.port),
    );
    assert_ne!(via, rig.url(), "the URL names 127.0.0.1:{port}");
    let mut c = rig.cmd(&[
        "-v",
        "exec",
        "--lease",
        "2s",
        "job",
        "--",
        "sh",
        "-c",
        &recorder(rig, "a"),
    ]);
    c.env("DLOCK_URL", &via);
    let mut a = spawn(c);
    let mut lines = Lines::of(&mut a);
    wait_for_file(&rig.path("a.start"), Duration::from_secs(20));
    lines.expect("renewed", Duration::from_secs(10));
    assert!(
        proxy.reset() > 0,
        "dlock's connections go through the proxy"
    );
    // Two more: one may have been on its way before the reset.
    for _ in 0..2 {
        lines.expect("renewed", Duration::from_secs(10));
    }
    let busy = rig.run(&["acquire", "job"]);
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    std::fs::write(rig.path("a.stop"), "").unwrap();
    let st = wait_child(&mut a, Duration::from_secs(20));
    let err = lines.rest();
    assert_eq!(st.code(), Some(0), "the command ran to its end: {err}");
    assert!(!rig.is_held("job"));
}

/// A server that accepts connections but answers nothing: one line after
/// --connect-timeout, without the password, in the words of every backend.
fn an_unresponsive_server_times_out_in_one_line(rig: &Rig) {
    rig.server.pause();
    let t = Instant::now();
    let o = rig.run(&["--connect-timeout", "1s", "status"]);
    rig.server.resume();
    one_line_error(&o, 69, "did not answer within 1s");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    if let Some(pw) = password(rig) {
        assert!(!stderr(&o).contains(&pw), "{}", stderr(&o));
    }
}

/// The server stops answering right after a renewal, when the lease is as
/// long as it gets: the command is stopped before the lease could end on the
/// server, dlock exits 79 saying why, and once the lease has run out a
/// contender gets the lock.
fn paused_server_stops_the_command_before_the_lease_expires(rig: &Rig) {
    let ready = Fifo::new(rig.dir.path(), "ready");
    let script = format!("echo $$ > '{}'; exec sleep 60", ready.path.display());
    let mut dlock = spawn(rig.cmd(&[
        "-v", "exec", "--lease", "2s", "p", "--", "sh", "-c", &script,
    ]));
    let mut lines = Lines::of(&mut dlock);
    let child: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    lines.expect("renewed", Duration::from_secs(5));
    // The server's end of the lease, or a little before it: the time left
    // is counted from before the status request.
    let asked = now_ms();
    let ttl = rig.status_json(&["p"])["locks"][0]["ttl_ms"].as_i64();
    let expires_at = asked + ttl.expect("status --json gives the time left");
    let paused = Instant::now();
    rig.server.pause();
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
        "command stopped {stopped_after:?} after the server paused; lease 2s, {} ms before the server-side expiry",
        expires_at - dead_ms
    );
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
    // Kept paused past the expiry, then a contender must get the lock.
    let wait_ms = (expires_at - now_ms()).max(0) as u64 + 100;
    std::thread::sleep(Duration::from_millis(wait_ms)); // the pause must outlast the lease
    rig.server.resume();
    let o = rig.run(&["acquire", "p", "--wait", "5s"]);
    assert_eq!(
        code(&o),
        0,
        "a second contender gets the lock after SIGCONT: {}",
        stderr(&o)
    );
}

/// The server stops answering while a short job runs: dlock gives up
/// releasing after one --connect-timeout, in one line, and exits.
fn release_at_exit_takes_at_most_one_timeout(rig: &Rig) {
    let go = Fifo::new(rig.dir.path(), "go");
    let started = rig.path("started");
    let job = format!(
        "touch '{}'; read x < '{}'",
        started.display(),
        go.path.display()
    );
    let mut holder = spawn(rig.cmd(&[
        "--connect-timeout",
        "2s",
        "exec",
        "--lease",
        "30s",
        "job",
        "--",
        "sh",
        "-c",
        &job,
    ]));
    wait_for_file(&started, Duration::from_secs(20));
    rig.server.pause();
    let t0 = Instant::now();
    go.write_line("go");
    let st = wait_child(&mut holder, Duration::from_secs(30));
    let took = t0.elapsed();
    rig.server.resume();
    let err = stderr_of(&mut holder);
    eprintln!("release against a paused server: dlock exited {took:?} after the job (timeout 2s)");
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        took < Duration::from_millis(3000),
        "exit took {took:?}, more than 1.5x the 2s timeout: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("could not release 'job'"), "{err}");
}

mod restart {
    use super::*;
    scenarios!(restart, own: a_waiter_survives_a_server_restart);
}

mod durable {
    use super::*;
    scenarios!(
        durable,
        own: server_killed_during_exec_stops_the_command_before_its_lease_ends,
        server_restarted_within_the_lease_keeps_the_hold,
    );
}

mod sessions {
    use super::*;
    scenarios!(sessions, own: killed_session_is_replaced_and_renewals_go_on);
}

mod reset {
    use super::*;
    scenarios!(reset, own: closed_connections_are_replaced_and_renewals_go_on);
}

mod pause {
    use super::*;
    scenarios!(
        pause,
        own: an_unresponsive_server_times_out_in_one_line,
        release_at_exit_takes_at_most_one_timeout,
    );
}

/// It must know when the lease ends on the server.
mod pause_exact {
    use super::*;
    scenarios!(
        pause + exact_ttl,
        own: paused_server_stops_the_command_before_the_lease_expires,
    );
}
