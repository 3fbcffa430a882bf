//! Durations on the command line and in messages, through the real binary.

mod common;

use common::sqlite::Sqlite;
use common::{code, dlock, run, stderr, stdout, Server};

fn acquire_json(db: &Sqlite, name: &str, args: &[&str]) -> serde_json::Value {
    let mut c = dlock(&db.url());
    c.args(["acquire", name, "--json"]).args(args);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn a_bare_number_is_seconds_and_fractions_are_accepted() {
    let db = Sqlite::new();
    // The flock -w / timeout(1) habit.
    let j = acquire_json(&db, "bare", &["--lease", "90", "--wait", "2"]);
    assert_eq!(j["lease_ms"], 90_000);
    let j = acquire_json(&db, "frac", &["--lease", "1.5s"]);
    assert_eq!(j["lease_ms"], 1_500);
    let j = acquire_json(&db, "mixed", &["--lease", "1m30.25s"]);
    assert_eq!(j["lease_ms"], 90_250);
}

#[test]
fn messages_print_durations_as_options_take_them() {
    let db = Sqlite::new();
    let mut c = dlock(&db.url());
    c.args(["acquire", "held", "--lease", "1m30.5s"]);
    assert_eq!(code(&run(c)), 0);
    let mut c = dlock(&db.url());
    c.args(["acquire", "held", "--wait", "1.099"]);
    let o = run(c);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("after waiting 1.099s"), "{err}");
}

#[test]
fn a_duration_without_a_known_unit_names_the_fix() {
    let db = Sqlite::new();
    let mut c = dlock(&db.url());
    c.args(["acquire", "x", "--lease", "5 parsecs"]);
    let o = run(c);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("or 90 for seconds"), "{err}");
}

/// A time left (the busy message, status's LEFT) is written as durations
/// are everywhere else ("4m5s", "29.9s"), never "5m04s" or "30.0s".
#[test]
fn times_left_print_as_other_durations() {
    let db = Sqlite::new();
    for (name, lease) in [("five", "5m5s"), ("half", "30s")] {
        let mut c = dlock(&db.url());
        c.args(["acquire", name, "--lease", lease]);
        assert_eq!(code(&run(c)), 0);
        let mut c = dlock(&db.url());
        c.args(["acquire", name]);
        let o = run(c);
        assert_eq!(code(&o), 75, "{}", stderr(&o));
        let err = stderr(&o);
        let left = err
            .split(", ")
            .find_map(|part| part.strip_suffix(" left (use --wait to wait for it)\n"))
            .unwrap_or_else(|| panic!("no time left in: {err}"));
        let mut c = dlock(&db.url());
        c.args(["status", name]);
        let table = stdout(&run(c));
        let row = table.lines().last().unwrap();
        for (i, shown) in [left, row.split_whitespace().nth(7).unwrap()]
            .iter()
            .enumerate()
        {
            assert!(
                !shown.contains(".0s") && !shown.contains("m0"),
                "{lease}: '{shown}' in {err}{table}"
            );
            let mut c = dlock(&db.url());
            let pasted = format!("{name}-pasted-{i}");
            c.args(["acquire", &pasted, "--lease", shown, "--wait", "0"]);
            assert_eq!(code(&run(c)), 0, "'{shown}' does not parse back");
        }
        if lease == "5m5s" {
            assert!(left.starts_with("5m") && left.len() == 4, "{left}");
        }
    }
}
