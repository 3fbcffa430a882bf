//! dlock's integration tests, as one test binary: each file in tests/ is a
//! module of it (one link instead of one per file, and one set of shared test
//! servers for the whole run). tests/common is the harness.
//!
//! A file about one backend is built only with that backend's cargo feature
//! (`cargo test --no-default-features --features sqlite,redis` tests the
//! minimal build); scenarios over the backend table skip the rows whose
//! feature is off.
//!
//! A new file in tests/ must be listed here: `every_test_file_is_a_module`
//! fails until it is (Cargo.toml turns off cargo's own discovery of tests/*.rs,
//! which would build each file as a binary of its own again).

// Scenarios that only left-out backends run are unused in such a build.
#![cfg_attr(not(all_backends), allow(dead_code, unused_imports))]

mod common;

mod breaks;
mod build_script;
mod cli;
mod completions;
mod conformance;
mod cron;
mod docs;
mod durations;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_faults;
mod exec_faults;
mod faults;
mod help;
mod json_log;
mod kinds;
#[cfg(feature = "mysql")]
mod mysql_faults;
#[cfg(feature = "mysql")]
mod mysql_kinds;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_faults;
mod readme;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_safety;
#[cfg(feature = "redis")]
mod redis_sentinel;
#[cfg(feature = "redis")]
mod redlock;
mod setup;
mod several;
#[cfg(feature = "sqlite")]
mod sqlite;
mod wait_faults;
mod watch;
#[cfg(feature = "zookeeper")]
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
