//! The lock kinds (--slots, --shared, --fair) against every backend, through
//! the real binary only: the contract in KINDS-SPEC (issue 14), on every
//! backend whose row in tests/common/backends.rs has `kinds`.

use crate::common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::backends::scenarios;
use common::*;

#[path = "kinds/queue.rs"]
mod queue;
use queue::{
    fair_hand_off_without_stalls, fair_order, fair_order_survives_a_killed_waiter,
    releasing_a_ticket_is_not_held,
};

/// `acquire --json --lease 30s EXTRA NAME`: the grant (token, fence, slot).
pub fn take(ctx: &Ctx, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["acquire", "--json", "--lease", "30s"];
    args.extend_from_slice(extra);
    args.push(name);
    let o = ctx.run(&args);
    assert_eq!(code(&o), 0, "acquire {extra:?} {name}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("acquire --json prints JSON")
}

pub fn token(grant: &Value) -> String {
    grant["token"].as_str().expect("a token").to_string()
}

pub fn fence(grant: &Value) -> u64 {
    grant["fence"].as_u64().expect("a fence")
}

pub fn release(ctx: &Ctx, name: &str, tok: &str) {
    let o = ctx.run(&["release", name, "--token", tok]);
    assert_eq!(code(&o), 0, "release {name}: {}", stderr(&o));
}

/// The one lock `status --json NAME` reports.
pub fn lock(ctx: &Ctx, name: &str) -> Value {
    ctx.status_json(&[name])["locks"][0].clone()
}

pub fn holders(lock: &Value) -> Vec<Value> {
    lock["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has a holders array: {lock}"))
        .clone()
}

pub fn queued(ctx: &Ctx, name: &str) -> u64 {
    let l = lock(ctx, name);
    l["queued"]
        .as_u64()
        .unwrap_or_else(|| panic!("status --json has a queued count: {l}"))
}

/// `dlock exec EXTRA --wait forever NAME -- sh -c SCRIPT` in the background,
/// with DLOCK_BIN set so that the script can run dlock itself.
pub fn spawn_exec(ctx: &Ctx, name: &str, extra: &[&str], script: &str) -> Child {
    let mut args = vec!["exec"];
    args.extend_from_slice(extra);
    args.extend(["--wait", "forever", name, "--", "sh", "-c", script]);
    let mut c = ctx.cmd(&args);
    c.env("DLOCK_BIN", dlock_bin());
    spawn(c)
}

/// Waits for a background dlock and asserts it succeeded, showing its stderr if not.
pub fn finish(child: &mut Child, timeout: Duration) {
    let st = wait_child(child, timeout);
    assert!(
        st.success(),
        "dlock ended {st:?}: {}",
        rest_of_stderr(child)
    );
}

/// Panics, with its stderr, if a background dlock that should be waiting has ended.
pub fn still_waiting(child: &mut Child) {
    if let Some(st) = child.try_wait().unwrap() {
        panic!(
            "dlock ended {st:?} while it should wait: {}",
            rest_of_stderr(child)
        );
    }
}

/// What an ended process wrote to its piped stderr.
fn rest_of_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// A child script that records `status --json NAME` as seen while it holds
/// the lock, into `marker` (written whole, so it exists only once complete).
fn snapshot(name: &str, marker: &Path) -> String {
    let m = marker.display();
    format!("\"$DLOCK_BIN\" status --json '{name}' > '{m}.tmp' && mv '{m}.tmp' '{m}'")
}

/// The exclusive command saw itself as the only holder.
fn ran_alone(marker: &Path) {
    let seen = std::fs::read(marker).expect("the command recorded `status --json`");
    let seen: Value = serde_json::from_slice(&seen).unwrap();
    let l = &seen["locks"][0];
    assert_eq!(l["kind"], "exclusive", "{l}");
    let hs = holders(l);
    assert_eq!(hs.len(), 1, "the writer ran beside others: {l}");
    assert_eq!(hs[0]["mode"], "exclusive", "{l}");
}

/// 8 workers run `exec --slots 3` sections that count themselves in a
/// directory: never more than 3 at once, 3 reached, slots 0..=2 and distinct.
fn semaphore_3_slots_8_workers(ctx: &Ctx) {
    let (workers, each) = (8, 4);
    let (inside, slots, log) = (ctx.path("inside"), ctx.path("slots"), ctx.path("log"));
    std::fs::create_dir(&inside).unwrap();
    std::fs::create_dir(&slots).unwrap();
    // mkdir of the slot fails if a concurrent holder has the same slot.
    let section = format!(
        "case \"$DLOCK_SLOT\" in 0|1|2) ;; *) echo \"bad-slot:$DLOCK_SLOT\" >> '{l}'; exit 1;; esac
         mkdir '{s}/'\"$DLOCK_SLOT\" 2>/dev/null || {{ echo \"dup-slot:$DLOCK_SLOT\" >> '{l}'; exit 1; }}
         : > '{i}/'$$
         echo \"in:$(ls '{i}' | wc -l)\" >> '{l}'
         sleep 0.1
         echo \"out:$(ls '{i}' | wc -l)\" >> '{l}'
         rm '{i}/'$$; rmdir '{s}/'\"$DLOCK_SLOT\"",
        i = inside.display(),
        s = slots.display(),
        l = log.display(),
    );
    let ended = ctx.run_workers(workers, each, "--slots 3 --wait forever sem", &section);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains("slot"),
        "DLOCK_SLOT out of 0..=2 or shared by two holders: {log}"
    );
    for (st, err) in ended {
        assert!(st.success(), "a worker ended {st:?}: {err}");
    }
    let counts: Vec<usize> = log
        .lines()
        .map(|l| l.split(':').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2 * workers * each, "every section ran: {log}");
    let max = counts.iter().copied().max().unwrap();
    assert!(max <= 3, "{max} holders of a 3-slot semaphore at once");
    assert_eq!(max, 3, "8 workers never filled 3 slots: {log}");
    assert!(!ctx.is_held("sem"), "free after the last worker");
}

/// 4 shared holders coexist; an exclusive exec waits for the last one.
fn shared_holders_overlap_and_exclusive_waits(ctx: &Ctx) {
    let toks: Vec<String> = (0..4)
        .map(|_| token(&take(ctx, "rw", &["--shared"])))
        .collect();
    let l = lock(ctx, "rw");
    assert_eq!(l["kind"], "shared", "{l}");
    let hs = holders(&l);
    assert_eq!(hs.len(), 4, "{l}");
    for h in &hs {
        assert_eq!(h["mode"], "shared", "{l}");
        assert!(h["slot"].is_null(), "{l}");
        assert!(toks.iter().any(|t| h["token_id"] == t[..8]), "{l}");
    }
    let marker = ctx.path("writer.json");
    let mut writer = spawn_exec(ctx, "rw", &[], &snapshot("rw", &marker));
    wait_until("the writer to queue", Duration::from_secs(5), || {
        still_waiting(&mut writer);
        queued(ctx, "rw") >= 1
    });
    for (i, t) in toks.iter().enumerate() {
        let left = holders(&lock(ctx, "rw"));
        assert_eq!(left.len(), 4 - i, "{left:?}");
        assert!(left.iter().all(|h| h["mode"] == "shared"), "{left:?}");
        assert!(!marker.exists(), "the writer ran beside {} readers", 4 - i);
        still_waiting(&mut writer);
        release(ctx, "rw", t);
    }
    finish(&mut writer, Duration::from_secs(5));
    ran_alone(&marker);

    let tok = token(&take(ctx, "rw", &[]));
    let o = ctx.run(&["acquire", "--shared", "--wait", "0", "rw"]);
    assert_eq!(
        code(&o),
        75,
        "a reader while a writer holds: {}",
        stderr(&o)
    );
    release(ctx, "rw", &tok);
}

/// A reader arriving after a queued writer waits behind it.
fn writer_not_starved(ctx: &Ctx) {
    let reader = token(&take(ctx, "ws", &["--shared"]));
    let marker = ctx.path("writer.json");
    let mut writer = spawn_exec(ctx, "ws", &[], &snapshot("ws", &marker));
    wait_until("the writer to queue", Duration::from_secs(5), || {
        still_waiting(&mut writer);
        queued(ctx, "ws") >= 1
    });
    for wait in ["0", "300ms"] {
        let o = ctx.run(&["acquire", "--shared", "--wait", wait, "ws"]);
        assert_eq!(
            code(&o),
            75,
            "a reader (--wait {wait}) overtook a waiting writer: {}",
            stderr(&o)
        );
    }
    let l = lock(ctx, "ws");
    assert_eq!(holders(&l).len(), 1, "{l}");
    assert_eq!(l["queued"], 1, "a reader that gave up left a ticket: {l}");
    assert!(!marker.exists(), "the writer ran beside a reader");
    still_waiting(&mut writer);
    release(ctx, "ws", &reader);
    finish(&mut writer, Duration::from_secs(5));
    ran_alone(&marker);
    let again = token(&take(ctx, "ws", &["--shared"]));
    release(ctx, "ws", &again);
}

/// Kind mismatches are usage errors (exit 2, one line), not waits.
fn mismatched_kinds_exit_2(ctx: &Ctx) {
    let sem = token(&take(ctx, "mm", &["--slots", "3"]));
    let mismatch = |args: &[&str], what: &str| {
        let started = Instant::now();
        let o = ctx.run(args);
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert!(err.starts_with("dlock: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: expected '{what}' in {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} waited"
        );
    };
    mismatch(
        &["acquire", "--slots", "5", "--wait", "0", "mm"],
        "3-slot semaphore",
    );
    mismatch(&["acquire", "--slots", "5", "--wait", "20s", "mm"], "'mm'");
    mismatch(
        &["acquire", "--shared", "--wait", "0", "mm"],
        "3-slot semaphore",
    );
    mismatch(&["acquire", "--wait", "0", "mm"], "3-slot semaphore");
    let marker = ctx.path("ran");
    let touch = format!("touch '{}'", marker.display());
    mismatch(
        &["exec", "--slots", "2", "mm", "--", "sh", "-c", &touch],
        "semaphore",
    );
    assert!(!marker.exists(), "a mismatched exec ran its command");
    let l = lock(ctx, "mm");
    assert_eq!(
        (l["slots"].as_u64(), holders(&l).len()),
        (Some(3), 1),
        "{l}"
    );
    release(ctx, "mm", &sem);

    // Usage errors need no lock at all.
    mismatch(&["acquire", "--shared", "--slots", "2", "mu"], "--slots");
    mismatch(&["acquire", "--slots", "0", "mu"], "--slots");
    mismatch(&["acquire", "--slots", "10001", "mu"], "--slots");

    let reader = token(&take(ctx, "mr", &["--shared"]));
    mismatch(&["acquire", "--slots", "3", "--wait", "0", "mr"], "shared");
    release(ctx, "mr", &reader);

    // Exclusive and shared on one name is the read/write lock: just busy.
    let writer = token(&take(ctx, "mx", &[]));
    let o = ctx.run(&["acquire", "--shared", "--wait", "0", "mx"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    mismatch(&["acquire", "--slots", "3", "--wait", "0", "mx"], "'mx'");
    release(ctx, "mx", &writer);
}

/// Release, renew and force work per holder of a semaphore.
fn per_holder_release_and_force(ctx: &Ctx) {
    let grants: Vec<Value> = (0..3).map(|_| take(ctx, "ph", &["--slots", "3"])).collect();
    let toks: Vec<String> = grants.iter().map(token).collect();
    // A full semaphore says how full it is, not who one of its holders is.
    let o = ctx.run(&["acquire", "--slots", "3", "ph"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(stderr(&o).contains("3 of 3 slots taken"), "{}", stderr(&o));
    release(ctx, "ph", &toks[0]);
    assert_eq!(holders(&lock(ctx, "ph")).len(), 2);

    let o = ctx.run(&["renew", "ph", "--token", &toks[1], "--lease", "90s"]);
    assert_eq!(code(&o), 0, "renew one holder: {}", stderr(&o));
    let hs = holders(&lock(ctx, "ph"));
    let renewed = hs.iter().find(|h| h["token_id"] == toks[1][..8]).unwrap();
    assert!(renewed["ttl_ms"].as_u64().unwrap() > 60_000, "{hs:?}");

    // The id status shows breaks exactly that holder.
    let target = hs.iter().find(|h| h["token_id"] == toks[2][..8]).unwrap();
    let id = target["token_id"].as_str().unwrap();
    let o = ctx.run(&["release", "--force", "ph", "--token-id", id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(said.matches("broke lock 'ph'").count(), 1, "{said}");
    assert!(
        said.contains(&format!("fence {}", fence(&grants[2]))),
        "{said}"
    );
    let hs = holders(&lock(ctx, "ph"));
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0]["token_id"], toks[1][..8]);
    let o = ctx.run(&["release", "--force", "ph", "--token-id", "00000000"]);
    assert_eq!(code(&o), 3, "no holder has that id: {}", stderr(&o));
    assert_eq!(holders(&lock(ctx, "ph")).len(), 1);
    // The whole token names its holder as well as the id does.
    let whole = token(&take(ctx, "ph", &["--slots", "3"]));
    let o = ctx.run(&["release", "--force", "ph", "--token-id", &whole]);
    assert_eq!(code(&o), 0, "the whole token as --token-id: {}", stderr(&o));
    let hs = holders(&lock(ctx, "ph"));
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0]["token_id"], toks[1][..8]);

    // A plain force breaks everyone, one line each.
    let extra = take(ctx, "ph", &["--slots", "3"]);
    let o = ctx.run(&["release", "--force", "ph"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let said = format!("{}{}", stdout(&o), stderr(&o));
    let lines: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("broke lock 'ph'"))
        .collect();
    assert_eq!(lines.len(), 2, "{said}");
    for f in [fence(&grants[1]), fence(&extra)] {
        assert!(said.contains(&format!("fence {f},")), "{said}");
    }
    assert!(!ctx.is_held("ph"));
    for t in [&toks[1], &toks[2], &token(&extra)] {
        let o = ctx.run(&["release", "ph", "--token", t]);
        assert_eq!(code(&o), 3, "a broken token: {}", stderr(&o));
    }
}

/// Fences increase over every grant of a name, whatever its kind; slots are
/// the lowest free one, in `acquire --json` and exec's DLOCK_SLOT.
fn semaphore_fences_strictly_increase(ctx: &Ctx) {
    let mut last = 0;
    let mut grant = |extra: &[&str], slot: Value| {
        let g = take(ctx, "fs", extra);
        assert!(fence(&g) > last, "fence {} after {last}: {g}", fence(&g));
        assert_eq!(g["slot"], slot, "{extra:?}: {g}");
        last = fence(&g);
        token(&g)
    };
    let a = grant(&["--slots", "3"], 0.into());
    let b = grant(&["--slots", "3"], 1.into());
    let c = grant(&["--slots", "3"], 2.into());
    release(ctx, "fs", &b);
    let d = grant(&["--slots", "3"], 1.into());
    for t in [&a, &c, &d] {
        release(ctx, "fs", t);
    }
    let e = grant(&["--shared"], Value::Null);
    let f = grant(&["--shared"], Value::Null);
    release(ctx, "fs", &e);
    release(ctx, "fs", &f);
    let x = grant(&[], Value::Null);
    release(ctx, "fs", &x);

    let o = ctx.run(&["acquire", "--json", "--slots", "2", "fo"]);
    let line = stdout(&o);
    let (fp, sp) = (line.find("\"fence\":"), line.find("\"slot\":"));
    assert!(
        fp.is_some() && sp > fp,
        "\"slot\" follows \"fence\": {line}"
    );
    assert!(
        !line[fp.unwrap()..sp.unwrap()].contains("\"lease_ms\""),
        "{line}"
    );

    let show = "printf '%s %s' \"$DLOCK_FENCE\" \"${DLOCK_SLOT-unset}\"";
    let o = ctx.run(&["exec", "--slots", "2", "fs", "--", "sh", "-c", show]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let (f, slot) = out.split_once(' ').unwrap();
    assert!(f.parse::<u64>().unwrap() > last, "{out} after fence {last}");
    assert_eq!(slot, "0", "{out}");
    let o = ctx.run(&["exec", "fs", "--", "sh", "-c", show]);
    assert!(
        stdout(&o).ends_with(" unset"),
        "no --slots, no DLOCK_SLOT: {}",
        stdout(&o)
    );
}

/// The table has a KIND column and one row per holder; the JSON is schema 2
/// and keeps the first holder's fields at the top level.
fn status_table_rows(ctx: &Ctx) {
    let g: Vec<Value> = (0..2)
        .map(|_| take(ctx, "tbl", &["--slots", "3"]))
        .collect();
    let o = ctx.run(&["status", "tbl", "nothing"]);
    assert_eq!(code(&o), 1, "one name is free: {}", stderr(&o));
    let table = stdout(&o);
    let header = table.lines().find(|l| l.starts_with("NAME"));
    let header = header.unwrap_or_else(|| panic!("no header: {table}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(cols[..2], ["NAME", "KIND"], "{table}");
    for (k, grant) in g.iter().enumerate() {
        let row = table
            .lines()
            .find(|l| l.contains(&token(grant)[..8]))
            .unwrap_or_else(|| panic!("no row for holder {k}: {table}"));
        assert!(row.starts_with("tbl "), "{row}");
        assert!(row.contains(&format!("slot {k} of 3")), "{table}");
    }
    assert_eq!(table.lines().filter(|l| l.starts_with("tbl ")).count(), 2);
    assert!(table
        .lines()
        .any(|l| l.starts_with("nothing") && l.contains("(free)")));

    let o = ctx.run(&["status", "--json", "tbl", "nothing"]);
    let text = stdout(&o);
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        compact.starts_with("{\"schema\":2,"),
        "schema first: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let (l, free) = (&v["locks"][0], &v["locks"][1]);
    assert_eq!(
        (&l["kind"], &l["slots"], &l["held"]),
        (&"semaphore".into(), &3.into(), &true.into()),
        "{l}"
    );
    assert_eq!(l["queued"], 0, "{l}");
    let hs = holders(l);
    assert_eq!(hs.len(), 2, "{l}");
    for (k, h) in hs.iter().enumerate() {
        assert_eq!(h["slot"], k, "sorted by fence: {l}");
        assert_eq!(h["fence"], g[k]["fence"], "{l}");
        assert_eq!(h["token_id"], token(&g[k])[..8], "{l}");
        assert!(h["mode"] == "exclusive" || h["mode"] == "shared", "{l}");
        assert!(h["holder"]["pid"].as_u64().unwrap() > 0, "{l}");
        assert!(h["acquired_at"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    for key in ["holder", "token_id", "fence", "acquired_at", "ttl_ms"] {
        assert_eq!(l[key], hs[0][key], "legacy top-level {key}: {l}");
    }
    assert_eq!(free["held"], false, "{free}");
    for key in ["kind", "slots", "holder", "token_id", "fence"] {
        assert!(free[key].is_null(), "free lock's {key}: {free}");
    }
    assert_eq!(free["holders"], Value::Array(vec![]), "{free}");
}

scenarios!(
    kinds,
    shared: semaphore_3_slots_8_workers,
    shared_holders_overlap_and_exclusive_waits,
    writer_not_starved,
    fair_order,
    fair_order_survives_a_killed_waiter,
    fair_hand_off_without_stalls,
    releasing_a_ticket_is_not_held,
    mismatched_kinds_exit_2,
    per_holder_release_and_force,
    semaphore_fences_strictly_increase,
    status_table_rows,
);
