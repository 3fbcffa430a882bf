//! Several locks in one request (`--also`), on every backend: all or
//! nothing, no deadlock between requests that list the names in opposite
//! orders, a fence per name, and any part lost stops the command as losing
//! one lock does.

use crate::common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::backends::{scenarios, Rig};
use common::*;

/// Two shell loops at once, `each` rounds: one runs `exec a --also b`, the
/// other `exec b --also a`; every section bumps both counters by a read,
/// a pause and a write, which overlapping sections would lose.
fn opposite_orders_finish_with_exact_counts(ctx: &Ctx) {
    let each = 25;
    let (a, b) = (ctx.path("a"), ctx.path("b"));
    for f in [&a, &b] {
        std::fs::write(f, "0").unwrap();
    }
    let bump = |f: &std::path::Path| {
        let f = f.display();
        format!("n=$(cat '{f}'); sleep 0.005; echo $((n+1)) > '{f}'")
    };
    let section = format!("{}; {}", bump(&a), bump(&b));
    let loops: Vec<Child> = [["a", "b"], ["b", "a"]]
        .iter()
        .map(|[first, also]| {
            // A --wait that ran out would exit 75: the loop stops at once with 9.
            let script = format!(
                "i=0; while [ $i -lt {each} ]; do \
                 \"$DLOCK_BIN\" exec --wait 60s {first} --also {also} -- sh -c \"$SECTION\" || exit 9; \
                 i=$((i+1)); done"
            );
            let mut c = Command::new("sh");
            c.args(["-c", &script])
                .env("DLOCK_BIN", dlock_bin())
                .env("DLOCK_URL", ctx.url())
                .env("DLOCK_PREFIX", &ctx.prefix)
                .env("SECTION", &section);
            spawn(c)
        })
        .collect();
    for mut l in loops {
        let st = wait_child(&mut l, Duration::from_secs(120));
        assert!(st.success(), "a loop failed: {st:?}: {}", stderr_of(&mut l));
    }
    for f in [&a, &b] {
        let n: usize = std::fs::read_to_string(f).unwrap().trim().parse().unwrap();
        assert_eq!(
            n,
            2 * each,
            "{}: lost updates, sections overlapped",
            f.display()
        );
    }
    assert!(
        !ctx.is_held("a") && !ctx.is_held("b"),
        "a part is still held"
    );
}

/// A busy part: nothing is taken, the busy one is named, exit 75.
fn a_busy_part_takes_nothing(ctx: &Ctx) {
    let tok = ctx.acquire("b", "30s");
    let o = ctx.run(&["exec", "a", "--also", "b", "--also", "c", "--", "true"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("lock 'b' is busy"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!ctx.is_held("a") && !ctx.is_held("c"), "a part was kept");
    let o = ctx.run(&["acquire", "c", "--also", "b", "--wait", "300ms"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(!ctx.is_held("c"), "a part was kept after waiting");
    assert_eq!(code(&ctx.run(&["release", "b", "--token", &tok])), 0);
}

/// Each part's fence and name in the command's environment, by the index
/// in the order given, as `status` shows them while the command runs.
fn every_part_has_its_fence_in_the_environment(ctx: &Ctx) {
    let seen = ctx.path("seen");
    let script = format!(
        "\"$DLOCK_BIN\" status --json x y > '{s}.json'; \
         printf '%s|%s|%s|%s|%s|%s|%s' \"$DLOCK_NAME_0\" \"$DLOCK_NAME_1\" \"$DLOCK_FENCE_0\" \
         \"$DLOCK_FENCE_1\" \"$DLOCK_FENCES\" \"$DLOCK_FENCE\" \"$DLOCK_NAMES\" > '{s}'",
        s = seen.display()
    );
    let mut c = ctx.cmd(&["exec", "y", "--also", "x", "--", "sh", "-c", &script]);
    c.env("DLOCK_BIN", dlock_bin());
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = std::fs::read_to_string(&seen).unwrap();
    let f: Vec<&str> = got.split('|').collect();
    let status: Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", seen.display())).unwrap())
            .unwrap();
    let fence_of = |name: &str| {
        let locks = status["locks"].as_array().expect("a locks array");
        let l = locks.iter().find(|l| l["name"] == name);
        l.unwrap_or_else(|| panic!("'{name}' not held: {status}"))["fence"]
            .as_u64()
            .expect("a fence")
            .to_string()
    };
    let (y, x) = (fence_of("y"), fence_of("x"));
    assert_eq!(&f[..2], ["y", "x"], "{got}");
    assert_eq!(f[2..6], [&y, &x, &format!("{y} {x}"), &y], "{got}");
    assert_eq!(f[6], "y\nx", "{got}");
}

/// `acquire --also` prints one token for every part; `renew` and `release`
/// with the same names find them all; a part released alone then fails
/// `renew` of the set with the not-held exit code, naming it.
fn acquire_renew_release_every_part(ctx: &Ctx) {
    let o = ctx.run(&["acquire", "p", "--also", "q", "--json", "--lease", "30s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let tok = v["token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = v["parts"]
        .as_array()
        .expect("a parts array")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["p", "q"], "{v}");
    assert_eq!(v["parts"][0]["fence"], v["fence"], "{v}");
    let renew = [
        "renew", "p", "--also", "q", "--token", &tok, "--lease", "40s",
    ];
    let o = ctx.run(&renew);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ctx.run(&["release", "q", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ctx.run(&renew);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("'q'"), "{}", stderr(&o));
    let o = ctx.run(&["release", "q", "--also", "p", "--token", &tok]);
    assert_eq!(code(&o), 3, "q was released already: {}", stderr(&o));
    assert!(!ctx.is_held("p"), "p was not released with the set");
}

/// `release --force` of one part stops the command (exit 79, naming that
/// part) and the exec frees the other part at once.
fn a_broken_part_stops_the_command(ctx: &Ctx) {
    let ready = Fifo::new(ctx.dir.path(), "ready");
    let script = format!("echo up > '{}'; exec sleep 60", ready.path.display());
    let args = [
        "exec", "--lease", "3s", "m", "--also", "n", "--", "sh", "-c", &script,
    ];
    let mut holder = spawn(ctx.cmd(&args));
    ready.read_line(Duration::from_secs(20));
    let o = ctx.run(&["release", "n", "--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // By a notice, or at the latest the next renewal, a second away.
    let st = wait_child(&mut holder, Duration::from_secs(10));
    let err = stderr_of(&mut holder);
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("'n'"), "the lost part is not named: {err}");
    assert!(!ctx.is_held("m"), "the other part outlived the exec");
}

/// `--shared` on every part: two shared sets run together, an exclusive
/// set (listed in the other order) is refused while they hold and gets both
/// once they are done; `--fair` sets take turns.
fn kinds_apply_to_every_part(ctx: &Ctx) {
    let readers: Vec<(Child, Fifo, Fifo)> = ["one", "two"]
        .iter()
        .map(|tag| {
            let (up, go) = (
                Fifo::new(ctx.dir.path(), &format!("{tag}.up")),
                Fifo::new(ctx.dir.path(), &format!("{tag}.go")),
            );
            let script = format!(
                "echo up > '{}'; read x < '{}'",
                up.path.display(),
                go.path.display()
            );
            let args = [
                "exec", "--shared", "--wait", "20s", "r", "--also", "s", "--",
            ];
            let mut c = ctx.cmd(&args);
            c.args(["sh", "-c", &script]);
            (spawn(c), up, go)
        })
        .collect();
    // Both commands are up at once: each holds both parts, shared.
    for (_, up, _) in &readers {
        up.read_line(Duration::from_secs(20));
    }
    let o = ctx.run(&["acquire", "s", "--also", "r"]);
    assert_eq!(
        code(&o),
        75,
        "an exclusive set beside shared holders: {}",
        stderr(&o)
    );
    for (mut child, _, go) in readers {
        go.write_line("go");
        let st = wait_child(&mut child, Duration::from_secs(20));
        assert!(st.success(), "{st:?}: {}", stderr_of(&mut child));
    }
    let tok = ctx.acquire_args(&["s", "--also", "r", "--wait", "5s"]);
    let o = ctx.run(&["release", "r", "--also", "s", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let fair = ctx.run_workers(2, 5, "--fair --wait 60s f --also g", "true");
    for (st, err) in fair {
        assert!(st.success(), "a --fair worker failed: {st:?}: {err}");
    }
}

/// The server stops answering with two parts held: the command is stopped
/// before either part's lease could end on the server.
fn paused_server_stops_the_command_before_any_part_expires(rig: &Rig) {
    let ready = Fifo::new(rig.dir.path(), "ready");
    let script = format!("echo $$ > '{}'; exec sleep 60", ready.path.display());
    let args = [
        "-v", "exec", "--lease", "2s", "p", "--also", "q", "--", "sh", "-c", &script,
    ];
    let mut dlock = spawn(rig.cmd(&args));
    let mut lines = Lines::of(&mut dlock);
    let child: i32 = ready.read_line(Duration::from_secs(10)).parse().unwrap();
    lines.expect("renewed", Duration::from_secs(5));
    // Each part's end on the server, or a little before it.
    let asked = now_ms();
    let status = rig.status_json(&["p", "q"]);
    let ends: Vec<i64> = status["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            asked
                + l["ttl_ms"]
                    .as_i64()
                    .expect("status --json gives the time left")
        })
        .collect();
    assert_eq!(ends.len(), 2, "{status}");
    let first_end = *ends.iter().min().unwrap();
    let paused = Instant::now();
    rig.server.pause();
    let died = wait_pid_exit(child, Duration::from_secs(5));
    let dead_ms = now_ms();
    rig.server.resume();
    assert!(died, "the command kept running without a lease");
    assert!(
        dead_ms < first_end,
        "the command died at {dead_ms}, after a part's server-side expiry at {first_end}"
    );
    eprintln!(
        "command stopped {:?} after the server paused, {} ms before the first part's expiry",
        paused.elapsed(),
        first_end - dead_ms
    );
    let st = wait_child(&mut dlock, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(79),
        "lost-lease exit code: {}",
        lines.rest()
    );
}

scenarios!(
    any,
    shared: opposite_orders_finish_with_exact_counts,
    a_busy_part_takes_nothing,
    every_part_has_its_fence_in_the_environment,
    acquire_renew_release_every_part,
    a_broken_part_stops_the_command,
);

mod kinds {
    use super::*;
    scenarios!(kinds, shared: kinds_apply_to_every_part);
}

mod pause {
    use super::*;
    scenarios!(
        pause + exact_ttl,
        own: paused_server_stops_the_command_before_any_part_expires,
    );
}
