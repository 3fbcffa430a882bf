//! Everything dlock prints besides a command's own result: messages on
//! stderr at the chosen verbosity, and the `status` table and JSON.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

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
    "pooled",
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
pub fn result(text: &str) -> std::io::Result<()> {
    if stdout_closed() {
        return Err(std::io::Error::other("stdout is closed"));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush())
}

/// Ends dlock as `ls | true` ends ls when the reader of its output has gone:
/// killed by SIGPIPE, without a message, so that a shell sees 128+13 and
/// `set -o pipefail` treats dlock like any other writer. For output whose
/// loss harms nobody (help, status); a lost token is an error instead.
pub fn die_of_broken_pipe() -> ! {
    use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: SIG_DFL installs no handler code; Rust's start-up had set it to
    // SIG_IGN only so that writes fail with EPIPE instead of killing dlock.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&pipe), None);
    // raise() directs the signal at this thread, whose default action ends the process.
    let _ = signal::raise(Signal::SIGPIPE);
    std::process::exit(128 + Signal::SIGPIPE as i32)
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

/// Longest message a line carries; longer ones keep their start and end.
const MAX_LINE: usize = 600;
/// How much of the end a shortened message keeps (where advice usually is).
const KEPT_END: usize = 160;

/// Shortens a message longer than [`MAX_LINE`] characters to its start and
/// its end with " … " between: a backend that lists what each of thousands
/// of servers said would otherwise print one line of hundreds of KB. Done
/// here, once, for every message.
pub fn cap_line(msg: &str) -> String {
    let n = msg.chars().count();
    if n <= MAX_LINE {
        return msg.to_string();
    }
    let head: String = msg.chars().take(MAX_LINE - KEPT_END - 3).collect();
    let tail: String = msg.chars().skip(n - KEPT_END).collect();
    format!("{head} … {tail}")
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
    let msg = cap_line(&cap_quotes(&scrub(msg)));
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn long_lines_keep_their_start_and_end() {
        let long = format!("start {} end", "a b ".repeat(50_000));
        let capped = cap_line(&long);
        assert_eq!(capped.chars().count(), MAX_LINE);
        assert!(capped.starts_with("start a b") && capped.ends_with("a b  end"));
        assert!(capped.contains(" … "));
        let short = "x ".repeat(MAX_LINE / 2);
        assert_eq!(cap_line(&short), short);
    }
}
