//! README.md is read at 3 a.m.: what it shows must work. Its fenced blocks
//! are classified by their info string and each kind is checked here:
//!
//! - `sh`: run with /bin/sh -e in a fresh temp dir and HOME, with the dlock
//!   under test first in PATH and stub scripts for the `./name.sh` it
//!   mentions. The default SQLite file is the user's real one (HOME does not
//!   move it), so each block gets a `DLOCK_PREFIX` of its own, removed after. `sh redis` also gets a private redis-server in place of
//!   127.0.0.1:6379, `sh zookeeper` a private ZooKeeper in place of the
//!   ensemble zk1:2181,zk2:2181,zk3:2181; `sh held=NAME` runs while another process holds NAME.
//!   Every block must exit 0 and leave no lock held.
//! - `sh setup`: the two set-up commands. The second must be exactly
//!   `scripts/test` (what CI runs); the dlock part of the first is run here,
//!   and scripts/check-readme runs the whole line verbatim.
//! - `sh no-run`: install commands; run as written into a temporary root,
//!   with no sudo on PATH for root and a stand-in for anyone else.
//! - `crontab`, `ini NAME` (systemd units), `json status|acquire`, `text`:
//!   parsed with dlock's own clap definition and compared with real output.
//! - `sql`: an illustration for the reader's own database; not run.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use common::sqlite::DefaultPrefix;
use common::{code, stderr, stdout, Redis, Server};
use dlock::cli::Cli;
use serde_json::Value;

const README: &str = include_str!("../README.md");
const KINDS: [&str; 6] = ["sh", "crontab", "ini", "json", "sql", "text"];

struct Block {
    line: usize,
    lang: String,
    tags: Vec<String>,
    body: String,
}

impl Block {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
    }
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in README.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace().map(String::from);
                open = Some(Block {
                    line: i + 1,
                    lang: words.next().unwrap_or_default(),
                    tags: words.collect(),
                    body: String::new(),
                });
            }
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some(b), _) => {
                b.body.push_str(line);
                b.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has an unclosed ``` block");
    out
}

fn section(title: &str) -> &'static str {
    let start = README
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README.md has no section '## {title}'"));
    let rest = &README[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// A scratch world for one block: HOME, a work dir, `dlock` in PATH, and a
/// prefix of its own in the default SQLite file.
struct World {
    dir: tempfile::TempDir,
    default: DefaultPrefix,
}

impl World {
    fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
            default: DefaultPrefix::new(),
        };
        for d in ["home", "work", "bin"] {
            fs::create_dir(w.dir.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink(common::dlock_bin(), w.path("bin/dlock")).unwrap();
        w
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn work(&self) -> PathBuf {
        self.path("work")
    }

    /// A command with the environment a new user would have: no DLOCK_*
    /// but the world's prefix, no XDG_STATE_HOME, a HOME of its own.
    fn command(&self, program: &str) -> Command {
        let mut c = self.default.command(program);
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env("HOME", self.path("home"))
            .env_remove("XDG_STATE_HOME")
            .current_dir(self.work())
            .stdin(Stdio::null());
        c
    }

    fn dlock(&self, args: &[&str]) -> Output {
        self.command("dlock").args(args).output().unwrap()
    }

    /// An executable that reports it ran and records the lock it held.
    fn stub(&self, path: &Path) {
        let name = path.file_name().unwrap().to_string_lossy();
        fs::write(
            path,
            format!(
                "#!/bin/sh\necho \"{name} ran, holding ${{DLOCK_NAME:-no lock}}\"\necho \"$DLOCK_NAME\" >> '{}'\n",
                self.path("ran").display()
            ),
        )
        .unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn ran(&self) -> String {
        fs::read_to_string(self.path("ran")).unwrap_or_default()
    }
}

fn run_sh(w: &World, body: &str, env: &[(&str, &str)]) -> Output {
    let mut c = w.command("sh");
    c.args(["-e", "-c", body]);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out_pipe = child.stdout.take().unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let read = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = p.read_to_end(&mut v);
            v
        })
    };
    let (o, e) = (read(Box::new(out_pipe)), read(Box::new(err_pipe)));
    let status = common::wait_child(&mut child, Duration::from_secs(120));
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        code(o),
        stdout(o),
        stderr(o)
    )
}

fn redis() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(Redis::start)
}

/// `./name.sh` and `/usr/local/bin/name.sh` mentioned in a block.
fn scripts_in(body: &str) -> BTreeSet<String> {
    body.split(|c: char| c.is_whitespace() || "'\";&|()".contains(c))
        .filter(|w| w.ends_with(".sh") && (w.starts_with("./") || w.starts_with('/')))
        .map(String::from)
        .collect()
}

/// Held locks in the world's backend (SQLite default, or `url`).
fn held(w: &World, url: Option<&str>) -> Vec<String> {
    let mut c = w.command("dlock");
    if let Some(u) = url {
        c.env("DLOCK_URL", u);
    }
    let o = c.args(["status", "--json"]).output().unwrap();
    assert_eq!(code(&o), 0, "status: {}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_block_is_of_a_known_kind() {
    for b in blocks() {
        assert!(
            KINDS.contains(&b.lang.as_str()),
            "README.md line {}: block of kind '{}' is neither run nor checked; use one of {KINDS:?}",
            b.line,
            b.lang
        );
    }
}

// The README's recipes use every backend.
#[cfg(all_backends)]
#[test]
fn sh_blocks_run() {
    let mut ran = 0;
    for b in blocks() {
        if b.lang != "sh" || b.has("no-run") || b.has("setup") {
            continue;
        }
        ran += 1;
        let w = World::new();
        let mut body = b.body.clone();
        let mut url = None;
        if b.has("redis") {
            let u = redis().url();
            let port = redis().port;
            body = body.replace("127.0.0.1:6379", &format!("127.0.0.1:{port}"));
            url = Some(u);
        }
        if b.has("zookeeper") {
            let port = common::zookeeper::ZooKeeper::shared().port(0);
            body = body.replace("zk1:2181,zk2:2181,zk3:2181", &format!("127.0.0.1:{port}"));
            url = body
                .lines()
                .find_map(|l| l.strip_prefix("export DLOCK_URL="))
                .map(String::from);
        }
        for s in scripts_in(&body) {
            let stub = w.work().join(s.rsplit('/').next().unwrap());
            w.stub(&stub);
            if s.starts_with('/') {
                body = body.replace(&s, &stub.display().to_string());
            }
        }
        if let Some(name) = b.tag_value("held") {
            let mut c = w.command("dlock");
            if let Some(u) = &url {
                c.env("DLOCK_URL", u);
            }
            let o = c.args(["acquire", name, "--lease", "5m"]).output().unwrap();
            assert_eq!(code(&o), 0, "line {}: holding {name}: {}", b.line, show(&o));
        }
        let o = run_sh(&w, &body, &[]);
        assert_eq!(
            code(&o),
            0,
            "README.md line {}: block failed\n{body}\n{}",
            b.line,
            show(&o)
        );
        // Locks taken by a block are released by it (a keepalive does so when the shell exits).
        common::wait_until(
            &format!("README.md line {}: its locks to be released", b.line),
            Duration::from_secs(15),
            || held(&w, url.as_deref()).is_empty(),
        );
        if url.is_none() {
            // The SQLite default lives where the README says, whatever HOME is.
            let file = w.default.file().expect("status names the default file");
            assert!(
                file.ends_with(".local/state/dlock/locks.db") || file.starts_with("/tmp/dlock-"),
                "line {}: default file {}",
                b.line,
                file.display()
            );
            assert!(!w.path("home/.local").exists(), "line {}", b.line);
        }
    }
    assert!(ran >= 5, "only {ran} runnable sh blocks found");
}

#[test]
fn setup_commands() {
    let setup: Vec<Block> = blocks().into_iter().filter(|b| b.has("setup")).collect();
    assert_eq!(
        setup.len(),
        2,
        "README.md must have exactly two set-up commands"
    );
    let (run_it, test_it) = (setup[0].body.trim(), setup[1].body.trim());
    assert!(
        !run_it.contains('\n'),
        "the first set-up command is one line"
    );
    assert_eq!(test_it, "scripts/test");
    // Both install what is missing through one helper (tests/setup.rs checks
    // it), so a root shell without sudo works for either.
    assert!(
        run_it.starts_with("scripts/prereqs build && "),
        "the first set-up command starts with scripts/prereqs build: {run_it}"
    );
    let test_script =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    assert!(test_script
        .lines()
        .any(|l| l.trim() == "scripts/prereqs test"));
    let ci = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/test"),
        ".ci/run must run the README's test command"
    );
    // The release build is left to scripts/check-readme; the command it runs is checked here.
    let bin = "./target/release/dlock ";
    let at = run_it
        .find(bin)
        .expect("the first set-up command runs ./target/release/dlock");
    assert!(run_it[..at].contains("cargo build --release"));
    let w = World::new();
    let o = run_sh(&w, &format!("dlock {}", &run_it[at + bin.len()..]), &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).starts_with("holding demo, fence "),
        "{}",
        show(&o)
    );
}

#[test]
fn default_sqlite_file_ignores_xdg_state_home() {
    let w = World::new();
    let state = w.path("state");
    let o = w
        .command("dlock")
        .env("XDG_STATE_HOME", &state)
        .args(["exec", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(!state.exists());
    assert!(!w.path("home/.local").exists());
}

#[test]
fn install_commands() {
    let b = blocks()
        .into_iter()
        .find(|b| b.has("no-run") && b.body.contains("cargo install"))
        .expect("README.md has an install block");
    let root = tempfile::tempdir().unwrap();
    // Everything but `cargo install`, as written, into a temporary root.
    let mut script = String::new();
    for line in b.body.lines().filter(|l| !l.starts_with("cargo install")) {
        assert!(
            !line.starts_with("sudo "),
            "fails as root without sudo: {line}"
        );
        let line = line.replace(" /usr/", &format!(" {}/usr/", root.path().display()));
        script.push_str(&line);
        script.push('\n');
    }
    // Only the tools the block needs: no sudo for root (a container has
    // none), a stand-in that runs the command for anyone else.
    let bin = root.path().join("bin");
    fs::create_dir(&bin).unwrap();
    for tool in ["install", "id"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        fs::write(bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
        fs::set_permissions(bin.join("sudo"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = Command::new("/bin/sh")
        .args(["-e", "-c", &script])
        .env("PATH", &bin)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{script}\n{}", show(&o));
    let r = root.path();
    let bash = r.join("usr/share/bash-completion/completions/dlock");
    assert!(r.join("usr/local/share/zsh/site-functions/_dlock").exists());
    assert!(r
        .join("usr/share/fish/vendor_completions.d/dlock.fish")
        .exists());
    assert!(r.join("usr/local/share/man/man1/dlock.1").exists());
    assert!(r.join("usr/local/share/man/man1/dlock-exec.1").exists());
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p dlock", bash.display()))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", show(&o));

    // The package and static-file blocks too: every install line works as root.
    for b in blocks().iter().filter(|b| b.has("no-run")) {
        for line in b.body.lines() {
            assert!(
                !line.starts_with("sudo "),
                "fails as root without sudo: {line}"
            );
        }
    }

    let regen = blocks()
        .into_iter()
        .find(|b| b.has("no-run") && b.body.contains("--example"))
        .expect("README.md names the docs generator");
    assert_eq!(regen.body.trim(), "cargo run --example gen-docs");
}

/// Splits a command line the way the README writes them (plain words and
/// single quotes only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[test]
fn crontab_line() {
    let b = blocks()
        .into_iter()
        .find(|b| b.lang == "crontab")
        .expect("README.md has a crontab example");
    let line = b
        .body
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    for f in &fields[..5] {
        assert!(
            f.chars().all(|c| c.is_ascii_digit() || "*,/-".contains(c)),
            "crontab time field {f:?}"
        );
    }
    let command = fields[5..].join(" ");
    let argv = words(&command);
    assert_eq!(argv[0], "dlock");
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{command}: {e}"));

    let w = World::new();
    let mut body = command.clone();
    for s in scripts_in(&command) {
        let stub = w.work().join(s.rsplit('/').next().unwrap());
        w.stub(&stub);
        body = body.replace(&s, &stub.display().to_string());
    }
    let lock = &argv[argv.iter().position(|a| a == "--").unwrap() - 1];

    // Another host holds the lock: a silent success, and the job does not run.
    let o = w.dlock(&["acquire", lock, "--lease", "1m"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = run_sh(&w, &body, &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "cron would mail this: {}",
        show(&o)
    );
    assert_eq!(w.ran(), "");

    let o = w.dlock(&["release", lock, "--force", "-q"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = run_sh(&w, &body, &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(w.ran().trim(), lock.as_str());
    assert!(stderr(&o).is_empty(), "{}", show(&o));
}

fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn systemd_units() {
    let units: Vec<Block> = blocks().into_iter().filter(|b| b.lang == "ini").collect();
    assert!(units.len() >= 2, "README.md has a service and a timer");
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("backup.sh");
    fs::write(&stub, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    let mut files = Vec::new();
    for u in &units {
        let name = u.tags.first().expect("```ini NAME.service");
        let body = &u.body;
        // The Debian package ships these files as examples: they must be the README's.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/systemd")
            .join(name);
        assert_eq!(
            fs::read_to_string(&shipped).ok().as_ref(),
            Some(body),
            "{} differs from README.md's ```ini {name}",
            shipped.display()
        );
        assert!(body.contains("[Unit]"), "{name}: no [Unit]");
        if name.ends_with(".service") {
            assert!(body.contains("[Service]"), "{name}: no [Service]");
            let exec = unit_value(body, "ExecStart").expect("ExecStart");
            let mut argv = words(exec);
            // A bare name: systemd finds the packaged /usr/bin/dlock and a copied
            // /usr/local/bin/dlock alike.
            assert_eq!(argv[0], "dlock");
            argv[0] = "dlock".into();
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{exec}: {e}"));
            if let dlock::cli::Command::Exec(e) = &cli.command {
                // The unit's lease settings must pass exec's own checks too.
                let lease = e.lease.lease;
                let kill = e.kill_after.unwrap_or(Duration::from_secs(5));
                assert!(
                    kill + lease / 10 <= lease / 2,
                    "{exec}: --kill-after too long"
                );
            } else {
                panic!("{exec}: not dlock exec");
            }
        }
        if name.ends_with(".timer") {
            assert!(body.contains("[Timer]"), "{name}: no [Timer]");
            let service = name.replace(".timer", ".service");
            assert!(
                units.iter().any(|u| u.tags.first() == Some(&service)),
                "{name} starts {service}, which the README does not show"
            );
        }
        // For systemd-analyze: real paths in place of the installed ones.
        let body = body
            .replace(
                "ExecStart=dlock ",
                &format!("ExecStart={} ", common::dlock_bin().display()),
            )
            .replace("/usr/local/bin/backup.sh", &stub.display().to_string());
        let path = dir.path().join(name);
        fs::write(&path, body).unwrap();
        files.push(path);
    }
    // Only where systemd's verifier exists; the checks above run everywhere.
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&files)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = stderr(&o);
        // Complaints about the host (no running systemd, other units) are not ours.
        let ours: Vec<&str> = err
            .lines()
            .filter(|l| {
                files
                    .iter()
                    .any(|f| l.contains(&*f.file_name().unwrap().to_string_lossy()))
            })
            .collect();
        assert!(
            code(&o) == 0 && ours.is_empty(),
            "systemd-analyze verify: {}",
            show(&o)
        );
    }
}

/// The shape of a JSON value: object keys (recursively), array element
/// shapes, and scalar kinds.
fn shape(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            let mut keys: Vec<_> = o
                .iter()
                .map(|(k, v)| format!("{k}: {}", shape(v)))
                .collect();
            keys.sort();
            format!("{{{}}}", keys.join(", "))
        }
    }
}

fn json_block(kind: &str) -> Value {
    let b = blocks()
        .into_iter()
        .find(|b| b.lang == "json" && b.has(kind))
        .unwrap_or_else(|| panic!("README.md has no ```json {kind} block"));
    serde_json::from_str(&b.body).unwrap_or_else(|e| panic!("line {}: {e}", b.line))
}

/// Compact JSON text laid out as `jq .` does, keys in the order printed.
fn jq_layout(compact: &str) -> String {
    let (mut out, mut depth, mut in_str, mut esc) = (String::new(), 0usize, false, false);
    let mut chars = compact.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' if matches!(chars.peek(), Some('}' | ']')) => {
                out.push(c);
                out.push(chars.next().unwrap());
            }
            '{' | '[' => {
                out.push(c);
                depth += 1;
                newline(&mut out, depth);
            }
            '}' | ']' => {
                depth -= 1;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

/// The README's JSON block must be dlock's real output laid out by `jq .`,
/// line for line: the same keys in the same order and the same values, but
/// for values that differ from run to run (tokens, times, pids...).
fn assert_json_example(kind: &str, real: &[u8], volatile: &[&str]) {
    let b = blocks()
        .into_iter()
        .find(|b| b.lang == "json" && b.has(kind))
        .unwrap_or_else(|| panic!("README.md has no ```json {kind} block"));
    let real = String::from_utf8_lossy(real);
    assert_eq!(
        real.trim().lines().count(),
        1,
        "dlock prints one line: {real}"
    );
    let want = jq_layout(&real);
    let mismatch = || {
        format!(
            "README.md line {} differs from dlock's output through `jq .`:\n{want}",
            b.line
        )
    };
    assert_eq!(
        b.body.trim().lines().count(),
        want.lines().count(),
        "{}",
        mismatch()
    );
    for (doc, out) in b.body.trim().lines().zip(want.lines()) {
        let key = |l: &str| l.trim().split(':').next().unwrap_or("").to_string();
        let is_volatile = volatile.iter().any(|v| key(out) == format!("\"{v}\""));
        if is_volatile {
            assert_eq!(key(doc), key(out), "{}", mismatch());
        } else {
            assert_eq!(doc, out, "{}", mismatch());
        }
    }
}

#[test]
fn json_examples_are_real_output() {
    let w = World::new();
    let o = w.dlock(&["acquire", "--json", "deploy", "--lease", "10m"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let acquired: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shape(&json_block("acquire")), shape(&acquired));
    assert_json_example("acquire", &o.stdout, &["token", "fence", "expires_at"]);

    let o = w.dlock(&["status", "--json", "deploy", "nightly"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shape(&json_block("status")), shape(&status));
    let volatile = [
        "backend",
        "location",
        "prefix",
        "host",
        "pid",
        "user",
        "command",
        "token_id",
        "fence",
        "acquired_at",
        "ttl_ms",
    ];
    assert_json_example("status", &o.stdout, &volatile);

    let token = acquired["token"].as_str().unwrap();
    let o = w.dlock(&["release", "deploy", "--token", token]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn status_table_example_has_the_real_columns() {
    let b = blocks()
        .into_iter()
        .find(|b| b.lang == "text" && b.body.contains("NAME"))
        .expect("README.md shows a status table");
    let header = |s: &str| -> Vec<String> {
        s.lines()
            .find(|l| l.starts_with("NAME"))
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let w = World::new();
    let o = w.dlock(&["status", "x"]);
    assert_eq!(code(&o), 1);
    assert_eq!(header(&b.body), header(&stdout(&o)));
    assert!(
        b.body.starts_with("# "),
        "the table starts with its backend line"
    );
}

#[test]
fn exit_codes_match_error_rs() {
    let from_table = |text: &str, row: fn(&str) -> Option<String>| -> BTreeSet<String> {
        text.lines().filter_map(row).collect()
    };
    let ours = from_table(dlock::error::TABLE, |l| {
        let first = l.split_whitespace().next()?;
        (first.parse::<u32>().is_ok() || first == "128+N").then(|| first.to_string())
    });
    let readme = from_table(section("Exit codes"), |l| {
        let first = l.strip_prefix('|')?.split('|').next()?.trim();
        (first.parse::<u32>().is_ok() || first == "128+N").then(|| first.to_string())
    });
    assert!(ours.len() > 5);
    assert_eq!(
        readme, ours,
        "README's exit codes differ from src/error.rs TABLE"
    );
}

/// Each visible option, subcommand and environment variable is mentioned.
#[test]
fn every_option_is_documented() {
    fn walk(cmd: &clap::Command, missing: &mut Vec<String>) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = a.get_long() {
                if !["help", "version"].contains(&long) && !README.contains(&format!("--{long}")) {
                    missing.push(format!("--{long} ({})", cmd.get_name()));
                }
            }
            if let Some(env) = a.get_env() {
                let env = env.to_string_lossy();
                if !README.contains(&*env) {
                    missing.push(env.into_owned());
                }
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if !README.contains(&format!("dlock {}", sub.get_name())) {
                missing.push(format!("dlock {}", sub.get_name()));
            }
            walk(sub, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), &mut missing);
    missing.dedup();
    assert!(
        missing.is_empty(),
        "README.md does not mention: {missing:?}"
    );
}

/// The `backend` values the JSON section lists are the ones `status --json`
/// prints, one per backend; the introduction, the Quick start and Cargo.toml's
/// description name every backend.
#[cfg(all_backends)]
#[test]
fn every_backend_is_named_and_its_json_value_listed() {
    use common::*;
    use std::sync::Arc;
    let servers: Vec<Arc<dyn Server>> = vec![
        Arc::new(sqlite::Sqlite::new()),
        Arc::new(Redis::start()),
        sentinel::SentinelSet::shared(),
        cluster::ClusterSet::shared(),
        redlock::RedlockSet::shared(),
        mariadb::MariaDb::shared(),
        postgres::Postgres::shared(),
        etcd::Etcd::shared(),
        zookeeper::ZooKeeper::shared(),
    ];
    let real: BTreeSet<String> = servers
        .into_iter()
        .map(|s| {
            Ctx::new(s).status_json(&[])["backend"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(real.len(), 9, "{real:?}");

    let json = section("JSON output");
    let at = json
        .find("\n- `backend`: ")
        .expect("the JSON section lists `backend`");
    let item = &json[at + 1..];
    let item = &item[..item.find("`location`").expect("then `location`")];
    let listed: BTreeSet<String> = item
        .split('`')
        .skip(3)
        .step_by(2)
        .map(String::from)
        .collect();
    assert_eq!(listed, real, "README's `backend` values");

    let intro = &README[..README.find("\n## ").unwrap()];
    let quick = section("Quick start");
    let manifest = include_str!("../Cargo.toml");
    let description = manifest
        .lines()
        .find(|l| l.starts_with("description = "))
        .unwrap();
    for backend in &real {
        let product = match backend.split('+').next().unwrap() {
            "redis" | "redlock" => "Redis",
            "mysql" => "MySQL",
            "postgres" => "PostgreSQL",
            "etcd" => "etcd",
            "zookeeper" => "ZooKeeper",
            "sqlite" => "SQLite",
            other => panic!("no product name for backend '{other}'"),
        };
        for (place, text) in [
            ("intro", intro),
            ("Quick start", quick),
            ("Cargo.toml", description),
        ] {
            assert!(text.contains(product), "{place} does not name {product}");
        }
    }
}

/// Step messages depend on the log format: text lines only with -v, JSON
/// events without it; --quiet keeps only errors in both. The options table
/// and the JSON section both say so.
#[test]
fn step_messages_depend_on_the_log_format() {
    let w = World::new();
    let steps = |args: &[&str]| -> String {
        let mut a = args.to_vec();
        a.extend(["exec", "steps", "--", "true"]);
        let o = w.dlock(&a);
        assert_eq!(code(&o), 0, "{args:?}: {}", show(&o));
        stderr(&o)
    };
    assert_eq!(steps(&[]), "", "text without -v");
    assert!(steps(&["-v"]).contains("acquired"), "text with -v");
    let json = steps(&["--log-format", "json"]);
    assert!(json.contains(r#""event":"acquired""#), "{json}");
    assert!(json.contains(r#""event":"released""#), "{json}");
    assert_eq!(steps(&["--log-format", "json", "-q"]), "", "JSON with -q");

    let options = section("Options, environment and defaults");
    let row = options
        .lines()
        .find(|l| l.starts_with("| `-v`, `--verbose` |"))
        .expect("the options table has -v");
    assert!(
        row.contains("--log-format json") && row.contains("without `-v`"),
        "{row}"
    );
    let json_section = section("JSON output");
    assert!(
        json_section.contains("In JSON, the steps")
            && json_section.contains("as text, they are lines only with `-v`"),
        "the JSON section says steps depend on the format"
    );
}
