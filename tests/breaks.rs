//! `release --force` against a live `exec` holder, on every backend: where
//! the backend pushes a notice (the `notices` capability) the holder's
//! command is stopped within 250 ms of the force returning; everywhere else
//! by the holder's next renewal.

use crate::common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::backends::scenarios;
use common::*;

/// An `exec` holder of `name` whose command runs until stopped, with
/// --verbose (its listener says when it listens); returns it and its stderr
/// once the command is up.
fn exec_holder(ctx: &Ctx, name: &str, lease: &str) -> (Child, Lines) {
    exec_holder_with(ctx, name, name, &["--lease", lease])
}

/// As [`exec_holder`], with these options of `exec`; `tag` tells the
/// holders of one lock apart.
fn exec_holder_with(ctx: &Ctx, name: &str, tag: &str, opts: &[&str]) -> (Child, Lines) {
    let ready = Fifo::new(ctx.dir.path(), &format!("{tag}.ready"));
    let script = format!("echo up > '{}'; exec sleep 60", ready.path.display());
    let mut args = vec!["-v", "exec"];
    args.extend(opts);
    args.extend([name, "--", "sh", "-c", &script]);
    let mut child = spawn(ctx.cmd(&args));
    let lines = Lines::of(&mut child);
    ready.read_line(Duration::from_secs(20));
    (child, lines)
}

/// Breaks `name` and returns when the force returned.
fn force(ctx: &Ctx, name: &str) -> Instant {
    let o = ctx.run(&["release", name, "--force"]);
    let done = Instant::now();
    assert_eq!(code(&o), 0, "release --force: {}", stderr(&o));
    assert!(stderr(&o).contains("broke lock"), "{}", stderr(&o));
    done
}

/// Waits for the holder to stop its command over the break; how long after `from`.
fn stopped(holder: &mut Child, lines: &mut Lines, from: Instant) -> Duration {
    // Polled every millisecond: the figure is the latency, not the poll.
    let deadline = from + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = holder.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the holder never stopped");
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = from.elapsed();
    let err = lines.rest();
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("broken with --force"), "{err}");
    took
}

mod pushed {
    use super::*;

    /// The renewal is 10 s away: only a notice can stop it in time.
    fn a_forced_break_stops_an_exec_holder_within_250ms(ctx: &Ctx) {
        let (mut holder, mut lines) = exec_holder(ctx, "pushed", "30s");
        lines.expect(
            "listening for breaks of lock 'pushed'",
            Duration::from_secs(20),
        );
        let done = force(ctx, "pushed");
        let took = stopped(&mut holder, &mut lines, done);
        eprintln!("force→stop: {:.1} ms", took.as_secs_f64() * 1000.0);
        assert!(
            took < Duration::from_millis(250),
            "the command was stopped {took:?} after the force returned"
        );
    }

    scenarios!(notices, shared: a_forced_break_stops_an_exec_holder_within_250ms);

    /// Every holder of a shared lock is told, each by its own notice.
    fn a_forced_break_stops_every_shared_exec_holder_within_250ms(ctx: &Ctx) {
        let opts = ["--lease", "30s", "--shared"];
        let (mut one, mut one_err) = exec_holder_with(ctx, "readers", "one", &opts);
        let (mut two, mut two_err) = exec_holder_with(ctx, "readers", "two", &opts);
        for err in [&mut one_err, &mut two_err] {
            err.expect(
                "listening for breaks of lock 'readers'",
                Duration::from_secs(20),
            );
        }
        let done = force(ctx, "readers");
        for (holder, err) in [(&mut one, &mut one_err), (&mut two, &mut two_err)] {
            let took = stopped(holder, err, done);
            assert!(
                took < Duration::from_millis(250),
                "a reader was stopped {took:?} after the force returned"
            );
        }
    }

    mod shared {
        use super::*;
        scenarios!(kinds + notices, shared: a_forced_break_stops_every_shared_exec_holder_within_250ms);
    }
}

mod renewed {
    use super::*;

    /// With or without notices, the next renewal (every 1 s with a 3 s
    /// lease) finds the lease gone; the command never outlives the lease.
    fn a_forced_break_stops_an_exec_holder_by_its_next_renewal(ctx: &Ctx) {
        let (mut holder, mut lines) = exec_holder(ctx, "renewed", "3s");
        let done = force(ctx, "renewed");
        let took = stopped(&mut holder, &mut lines, done);
        assert!(
            took < Duration::from_secs(3),
            "the command was stopped {took:?} after the force returned"
        );
    }

    scenarios!(any, shared: a_forced_break_stops_an_exec_holder_by_its_next_renewal);
}

/// A token whose lease was broken hears who broke it when it renews or
/// releases ("user@host (pid N)" of the force), and who holds the lock now
/// if anyone does; another token is not taken for it.
fn a_broken_token_is_told_who_broke_it(ctx: &Ctx) {
    let tok = ctx.acquire("told", "60s");
    let o = ctx.run(&["release", "told", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let told = |o: &std::process::Output, want: i32| {
        let err = stderr(o);
        assert_eq!(code(o), want, "{err}");
        let by = err
            .split_once("was broken with --force by ")
            .unwrap_or_else(|| panic!("not told who broke it: {err}"))
            .1;
        assert!(by.contains('@') && by.contains(" (pid "), "{err}");
    };
    told(
        &ctx.run(&["renew", "told", "--token", &tok, "--lease", "60s"]),
        3,
    );
    let other = ctx.acquire("told", "60s");
    let o = ctx.run(&["release", "told", "--token", &tok]);
    told(&o, 4);
    assert!(stderr(&o).contains("is now held by"), "{}", stderr(&o));
    let o = ctx.run(&["release", "told", "--token", "never-held-token"]);
    assert!(
        !stderr(&o).contains("broken with --force by"),
        "{}",
        stderr(&o)
    );
    assert_eq!(code(&ctx.run(&["release", "told", "--token", &other])), 0);
}

mod told {
    use super::*;
    scenarios!(any, shared: a_broken_token_is_told_who_broke_it);
}
