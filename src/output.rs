//! Everything dlock prints besides a command's own result: messages on
//! stderr at the chosen verbosity, and the `status` table and JSON.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::backend::{Location, LockInfo};

const QUIET: u8 = 0;
const NORMAL: u8 = 1;
const VERBOSE: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(NORMAL);
static JSON: AtomicBool = AtomicBool::new(false);
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();
/// The lock the command is about and where the backend is, for JSON events
/// whose call site does not name them.
static LOCK: OnceLock<String> = OnceLock::new();
static LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// Every `event` name a JSON log line can carry; README.md lists the same
/// names with their meaning, and tests/json_log.rs produces each one.
pub const EVENTS: &[&str] = &[
    "usage",
    "error",
    "message",
    "waiting",
    "retrying",
    "reconnected",
    "busy",
    "acquired",
    "renewed",
    "renewal_failed",
    "lost",
    "max_runtime",
    "child_exited",
    "released",
    "release_failed",
    "held",
    "broken",
    "eviction_risk",
];

/// The lock this run is about (the one lock a subcommand names).
pub fn set_lock(name: &str) {
    let _ = LOCK.set(name.to_string());
}

/// Where the backend is, already without passwords: the URL at first, the
/// resolved place (the SQLite file) once the backend is open.
pub fn set_location(location: &str) {
    *LOCATION.lock().unwrap_or_else(|e| e.into_inner()) = Some(location.to_string());
}

/// Whether stdout was closed when dlock started. std quietly puts /dev/null
/// on a closed stdout before `main`, where a token written to it would be
/// lost without an error; this records the truth before that.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

// glibc runs `.init_array` entries before `main`, and so before std's set-up.
#[used]
#[link_section = ".init_array"]
static RECORD_STDOUT: extern "C" fn() = record_stdout;

extern "C" fn record_stdout() {
    // SAFETY: F_GETFD only reads descriptor 1's flags; it touches no memory.
    let closed = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1;
    STDOUT_CLOSED.store(closed, Ordering::Relaxed);
}

pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes a command's result to stdout and flushes it, or says why it could not.
pub fn result(text: &str) -> Result<(), String> {
    if stdout_closed() {
        return Err("stdout is closed".into());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

/// A line on stderr that never panics: with stderr closed or its pipe gone,
/// there is nobody left to tell, and dlock carries on to its exit code.
pub fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn init(quiet: bool, verbose: u8, json: bool, secrets: Vec<String>) {
    let level = if quiet {
        QUIET
    } else if verbose > 0 {
        VERBOSE
    } else {
        NORMAL
    };
    LEVEL.store(level, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
    let _ = SECRETS.set(secrets);
}

/// Removes every known secret from a line before it is printed, as a last
/// guard against a driver that echoes a password back in an error.
pub fn scrub(line: &str) -> String {
    let mut out = line.to_string();
    for s in SECRETS.get().map(Vec::as_slice).unwrap_or(&[]) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// Longest run without whitespace that a message quotes whole.
const MAX_QUOTED: usize = 200;

/// Shortens every run of non-space characters longer than [`MAX_QUOTED`] to
/// that many plus "…": a 100 KB host name, URL or value echoed by clap or a
/// driver would otherwise make a 100 KB error line. Done here, once, for
/// every message.
pub fn cap_quotes(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(4096));
    let mut run = 0;
    for c in line.chars() {
        if c.is_whitespace() {
            run = 0;
        } else {
            run += 1;
            if run == MAX_QUOTED + 1 {
                out.push('…');
            }
            if run > MAX_QUOTED {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A step report: text only with --verbose.
    Debug,
    /// Suppressed by --quiet.
    Info,
    /// Always shown.
    Error,
}

/// One line on stderr: text, or with `--log-format json` one JSON object
/// (`ts`, `level`, `event`, `lock`, `location`, `message` and the event's
/// own fields).
/// Lifecycle events (any `kind` but "message") are always in the JSON log
/// unless --quiet, since log shippers want them without -v.
pub fn event(level: Level, kind: &str, lock: Option<&str>, msg: &str, extra: Value) {
    let shown = LEVEL.load(Ordering::Relaxed);
    let json = JSON.load(Ordering::Relaxed);
    let visible = match level {
        Level::Error => true,
        Level::Info => shown >= NORMAL,
        Level::Debug if json && kind != "message" => shown >= NORMAL,
        Level::Debug => shown >= VERBOSE,
    };
    if !visible {
        return;
    }
    debug_assert!(EVENTS.contains(&kind), "event '{kind}' is not in EVENTS");
    stderr_line(&render(level, kind, lock, msg, extra));
}

/// The line `error(msg)` prints, for a signal handler that cannot build one.
pub fn error_line(msg: &str) -> String {
    render(Level::Error, "error", None, msg, Value::Null)
}

fn render(level: Level, kind: &str, lock: Option<&str>, msg: &str, extra: Value) -> String {
    let msg = cap_quotes(&scrub(msg));
    if JSON.load(Ordering::Relaxed) {
        let mut obj = json!({
            "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "level": match level { Level::Debug => "debug", Level::Info => "info", Level::Error => "error" },
            "event": kind,
            "lock": lock.or(LOCK.get().map(String::as_str)),
            "location": *LOCATION.lock().unwrap_or_else(|e| e.into_inner()),
            "message": msg,
        });
        if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
            o.extend(e);
        }
        obj.to_string()
    } else {
        format!("dlock: {msg}")
    }
}

/// A normal message (suppressed by --quiet).
pub fn info(msg: &str) {
    event(Level::Info, "message", None, msg, Value::Null);
}

/// A step report (only with --verbose).
pub fn verbose(msg: &str) {
    event(Level::Debug, "message", None, msg, Value::Null);
}

/// A message that must reach the operator even with --quiet.
pub fn error(msg: &str) {
    event(Level::Error, "error", None, msg, Value::Null);
}

/// RFC 3339 UTC with milliseconds, from µs since the epoch.
pub fn format_time_us(us: i64) -> String {
    if us <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_micros(us as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub use crate::duration::format as format_duration;

/// Short human duration: 850ms, 12.3s, 4m05s, 2h10m.
pub fn format_left(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// One status entry: a held lock, or a named lock that is free.
pub enum Row<'a> {
    Held(&'a LockInfo),
    Free(&'a str),
}

pub fn status_table(loc: &Location, prefix: &str, rows: &[Row]) -> String {
    let header = [
        "NAME", "HOLDER", "USER", "TOKEN", "FENCE", "ACQUIRED", "LEFT", "COMMAND",
    ];
    let mut table: Vec<[String; 8]> = vec![header.map(String::from)];
    for row in rows {
        table.push(match row {
            Row::Held(l) => [
                l.name.clone(),
                format!("{}:{}", l.holder.host, l.holder.pid),
                l.holder.user.clone(),
                l.token_id.clone(),
                l.fence.to_string(),
                format_time_us(l.acquired_at_us),
                format_left(l.ttl),
                l.holder.command.clone(),
            ],
            Row::Free(name) => [
                name.to_string(),
                "(free)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    let mut widths = [0usize; 8];
    for r in &table {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "# {} backend at {} (prefix '{}')\n",
        loc.backend, loc.location, prefix
    );
    if rows.is_empty() {
        out.push_str("no locks held\n");
        return out;
    }
    for r in &table {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The documented `status --json` schema (see README).
/// `acquire --json`: one line, keys in the order README.md documents them.
pub fn acquired_json(
    name: &str,
    token: &str,
    grant: &crate::backend::Grant,
    lease: Duration,
    expires_us: i64,
) -> String {
    #[derive(Serialize)]
    struct Acquired<'a> {
        name: &'a str,
        token: &'a str,
        fence: u64,
        lease_ms: u64,
        expires_at: String,
        extended: bool,
    }
    serde_json::to_string(&Acquired {
        name,
        token,
        fence: grant.fence,
        lease_ms: lease.as_millis() as u64,
        expires_at: format_time_us(expires_us),
        extended: grant.extended,
    })
    .expect("plain data serializes")
}

/// `status --json`: one line, keys in the order README.md documents them
/// (structs, since serde_json's own maps sort their keys).
pub fn status_json(loc: &Location, prefix: &str, rows: &[Row]) -> String {
    #[derive(Serialize)]
    struct Status<'a> {
        backend: &'a str,
        location: &'a str,
        prefix: &'a str,
        locks: Vec<Entry<'a>>,
    }
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        held: bool,
        holder: Option<&'a crate::holder::Holder>,
        token_id: Option<&'a str>,
        fence: Option<u64>,
        acquired_at: Option<String>,
        ttl_ms: Option<u64>,
    }
    let locks = rows
        .iter()
        .map(|row| match row {
            Row::Held(l) => Entry {
                name: &l.name,
                held: true,
                holder: Some(&l.holder),
                token_id: Some(&l.token_id),
                fence: Some(l.fence),
                acquired_at: Some(format_time_us(l.acquired_at_us)),
                ttl_ms: Some(l.ttl.as_millis() as u64),
            },
            Row::Free(name) => Entry {
                name,
                held: false,
                holder: None,
                token_id: None,
                fence: None,
                acquired_at: None,
                ttl_ms: None,
            },
        })
        .collect();
    let status = Status {
        backend: loc.backend,
        location: &loc.location,
        prefix,
        locks,
    };
    serde_json::to_string(&status).expect("plain data serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holder::Holder;

    #[test]
    fn long_quotes_are_capped() {
        let long = "a".repeat(1000);
        let capped = cap_quotes(&format!("bad '{long}': fix {long}"));
        assert_eq!(
            capped,
            format!("bad '{}… fix {}…", "a".repeat(199), "a".repeat(200))
        );
        assert_eq!(cap_quotes("short words stay"), "short words stay");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_left(Duration::from_millis(850)), "850ms");
        assert_eq!(format_left(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_left(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_left(Duration::from_secs(7800)), "2h10m");
    }

    #[test]
    fn table_is_aligned() {
        let l = LockInfo {
            name: "deploy job".into(),
            holder: Holder {
                host: "h".into(),
                pid: 42,
                user: "ops".into(),
                command: "make".into(),
            },
            token_id: "abcd1234".into(),
            fence: 7,
            acquired_at_us: 1_700_000_000_000_000,
            ttl: Duration::from_secs(3),
        };
        let loc = Location {
            backend: "redis",
            location: "redis://x".into(),
        };
        let t = status_table(&loc, "dlock", &[Row::Held(&l), Row::Free("x")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let col = |s: &str| {
            s.find("USER")
                .or_else(|| s.find("ops"))
                .or_else(|| s.find(" -"))
        };
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(t.contains("2023-11-14T22:13:20.000Z"), "{t}");
        let j: Value = serde_json::from_str(&status_json(
            &loc,
            "dlock",
            &[Row::Held(&l), Row::Free("x")],
        ))
        .unwrap();
        assert_eq!(j["locks"][0]["holder"]["pid"], 42);
        assert_eq!(j["locks"][1]["held"], false);
    }
}
