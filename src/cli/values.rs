//! Parsers of option values: durations with their bounds, --wait, signals.

use std::time::Duration;

/// How long to wait for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    For(Duration),
    Forever,
}

/// Upper bound of leases, waits and the other job durations: a year is far
/// beyond any real job, yet keeps every backend's arithmetic in range (Redis
/// PX milliseconds and SQL microseconds as 64-bit integers, DATETIME and
/// `Instant` sums), which durations near humantime's limit overflow.
pub const MAX_LONG: Duration = Duration::from_secs(31_557_600);
/// Upper bound of --connect-timeout: an hour is more than any request should
/// take; SQLite's busy timeout is an `int` of milliseconds (under 25 days).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration in (0, MAX_LONG]: --lease, --kill-after, --min-hold, --max-runtime.
pub fn parse_long(s: &str) -> Result<Duration, String> {
    positive(bounded(s, MAX_LONG, "1y")?)
}

/// --jitter: like [`parse_long`], but 0 is allowed.
pub fn parse_long_or_zero(s: &str) -> Result<Duration, String> {
    bounded(s, MAX_LONG, "1y")
}

pub fn parse_connect_timeout(s: &str) -> Result<Duration, String> {
    positive(bounded(s, MAX_CONNECT_TIMEOUT, "1h")?)
}

pub fn parse_wait(s: &str) -> Result<Wait, String> {
    match s.trim() {
        "forever" | "inf" | "infinite" => Ok(Wait::Forever),
        other => bounded(other, MAX_LONG, "1y (or `forever`)").map(Wait::For),
    }
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn bounded(s: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > max {
        return Err(format!("too long: at most {max_text}"));
    }
    Ok(d)
}

/// See [`crate::duration::parse`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s)
}

/// Signal names for shell completion; [`parse_signal`] also takes numbers
/// and the `SIG` prefix.
const SIGNAL_NAMES: [&str; 10] = [
    "TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2", "ALRM", "ABRT", "PWR",
];

/// [`parse_signal`] with the common names offered to shell completion.
#[derive(Clone)]
pub struct SignalParser;

impl clap::builder::TypedValueParser for SignalParser {
    type Value = nix::sys::signal::Signal;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let text = value.to_string_lossy();
        parse_signal(&text).map_err(|why| {
            let name = arg.map_or("SIG".to_string(), |a| a.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value '{text}' for '{name}': {why}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            SIGNAL_NAMES
                .iter()
                .map(|n| clap::builder::PossibleValue::new(*n)),
        ))
    }
}

pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    use std::str::FromStr;
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| format!("no signal numbered {n}"));
    }
    let name = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| format!("unknown signal '{s}'"))
}
