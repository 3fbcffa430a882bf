//! dlock's integration tests, as one test binary: each file in tests/ is a
//! module of it (one link instead of one per file, and one set of shared test
//! servers for the whole run). tests/common is the harness.
//!
//! A new file in tests/ must be listed here: `every_test_file_is_a_module`
//! fails until it is (Cargo.toml turns off cargo's own discovery of tests/*.rs,
//! which would build each file as a binary of its own again).

mod common;

mod breaks;
mod build_script;
mod cli;
mod completions;
mod conformance;
mod cron;
mod docs;
mod durations;
mod etcd;
mod etcd_faults;
mod exec_faults;
mod faults;
mod help;
mod json_log;
mod kinds;
mod mysql_faults;
mod mysql_kinds;
mod postgres;
mod postgres_faults;
mod readme;
mod redis;
mod redis_cluster;
mod redis_safety;
mod redis_sentinel;
mod redlock;
mod setup;
mod sqlite;
mod wait_faults;
mod zk_faults;

#[test]
fn every_test_file_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let root = std::fs::read_to_string(dir.join("it.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs")
            && stem != "it"
            && !root.lines().any(|l| l == format!("mod {stem};"))
        {
            missing.push(stem.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "tests/{{{}}}.rs would not run: add `mod NAME;` for each to tests/it.rs",
        missing.join(",")
    );
}
