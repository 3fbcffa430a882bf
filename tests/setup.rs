//! scripts/prereqs, which both README set-up commands run: it installs what is
//! missing with apt-get as root without sudo, through sudo otherwise, and says
//! in one line what to do when it cannot. apt-get itself is a stand-in that
//! records its arguments (installing for real would change this machine);
//! everything else is the real script under bash with a PATH that lacks `cc`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prereqs");

/// A bin directory with the tools the script uses, but no `cc` and no `sudo`,
/// and an `apt-get` that appends its arguments to `apt.log` beside it.
fn bin_dir(rustc_version: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // World-readable: one test runs the script as an unprivileged user.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for tool in [
        "bash", "env", "sed", "sort", "head", "dirname", "tee", "chmod", "rm",
    ] {
        let real = which(tool).unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
    }
    let log = dir.path().join("apt.log");
    script(
        dir.path(),
        "apt-get",
        &format!("echo \"$*\" >> {}", log.display()),
    );
    script(dir.path(), "cargo", "echo cargo 1.95.0");
    let v = rustc_version.unwrap_or("1.95.0");
    script(
        dir.path(),
        "rustc",
        &format!("echo 'rustc {v} (0 2026-01-01)'"),
    );
    dir
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn prereqs(bin: &Path, mode: &str, as_nobody: bool) -> Output {
    let mut c = if as_nobody {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(bin.join("bash"));
        c
    } else {
        Command::new(bin.join("bash"))
    };
    c.arg(SCRIPT)
        .arg(mode)
        .env_clear()
        .env("PATH", bin)
        .output()
        .unwrap()
}

fn apt_log(bin: &Path) -> String {
    fs::read_to_string(bin.join("apt.log")).unwrap_or_default()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn root_without_sudo_installs_with_apt_get_directly() {
    if !is_root() {
        eprintln!("skipped: needs root to be the root-without-sudo case");
        return;
    }
    let bin = bin_dir(None);
    let o = prereqs(bin.path(), "build", false);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let log = apt_log(bin.path());
    assert!(log.lines().any(|l| l.contains("update")), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("install") && l.contains("build-essential")),
        "{log}"
    );
    // Building needs no protoc (the etcd messages are Rust).
    assert!(!log.contains("protobuf"), "{log}");
}

#[test]
fn a_user_without_sudo_is_told_what_to_run() {
    if !is_root() {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return;
    }
    let bin = bin_dir(None);
    let o = prereqs(bin.path(), "build", true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
    assert!(
        err.contains("sudo apt-get install build-essential"),
        "{}",
        text(&o)
    );
    assert_eq!(apt_log(bin.path()), "", "apt-get must not run");
}

#[test]
fn a_rust_older_than_the_minimum_is_named_with_the_fix() {
    let bin = bin_dir(Some("1.63.0"));
    // cc present: the check of the toolchain is what is left.
    script(bin.path(), "cc", "true");
    let o = prereqs(bin.path(), "build", false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let msrv = include_str!("../Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    assert!(err.contains("rustc 1.63"), "{}", text(&o));
    assert!(err.contains(msrv) && err.contains("rustup"), "{}", text(&o));
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
}

#[test]
fn a_bad_mode_is_a_usage_error() {
    let bin = bin_dir(None);
    let o = prereqs(bin.path(), "bogus", false);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
