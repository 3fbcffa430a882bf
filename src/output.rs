//! Everything dlock prints besides a command's own result: messages on
//! stderr at the chosen verbosity, and the `status` table and JSON.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::backend::{Location, LockInfo};

const QUIET: u8 = 0;
const NORMAL: u8 = 1;
const VERBOSE: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(NORMAL);
static JSON: AtomicBool = AtomicBool::new(false);
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

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
/// (`ts`, `level`, `event`, `lock`, `message` and the event's own fields).
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
    eprintln!("{}", render(level, kind, lock, msg, extra));
}

/// The line `error(msg)` prints, for a signal handler that cannot build one.
pub fn error_line(msg: &str) -> String {
    render(Level::Error, "error", None, msg, Value::Null)
}

fn render(level: Level, kind: &str, lock: Option<&str>, msg: &str, extra: Value) -> String {
    let msg = scrub(msg);
    if JSON.load(Ordering::Relaxed) {
        let mut obj = json!({
            "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "level": match level { Level::Debug => "debug", Level::Info => "info", Level::Error => "error" },
            "event": kind,
            "lock": lock,
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

/// A duration for a message, in whole milliseconds: timeouts cut short to
/// meet a renewal deadline would otherwise read "732ms 996us 307ns".
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

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
pub fn status_json(loc: &Location, prefix: &str, rows: &[Row]) -> Value {
    let locks: Vec<Value> = rows
        .iter()
        .map(|row| match row {
            Row::Held(l) => json!({
                "name": l.name,
                "held": true,
                "holder": l.holder,
                "token_id": l.token_id,
                "fence": l.fence,
                "acquired_at": format_time_us(l.acquired_at_us),
                "ttl_ms": l.ttl.as_millis() as u64,
            }),
            Row::Free(name) => json!({
                "name": name,
                "held": false,
                "holder": null,
                "token_id": null,
                "fence": null,
                "acquired_at": null,
                "ttl_ms": null,
            }),
        })
        .collect();
    json!({
        "backend": loc.backend,
        "location": loc.location,
        "prefix": prefix,
        "locks": locks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holder::Holder;

    #[test]
    fn message_durations_stop_at_milliseconds() {
        let d = Duration::from_nanos(732_996_307);
        assert_eq!(format_duration(d), "732ms");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2s 500ms");
        assert_eq!(format_duration(Duration::from_micros(400)), "0s");
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
        let j = status_json(&loc, "dlock", &[Row::Held(&l), Row::Free("x")]);
        assert_eq!(j["locks"][0]["holder"]["pid"], 42);
        assert_eq!(j["locks"][1]["held"], false);
    }
}
