//! The command-line interface: clap definitions only, no behaviour.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::error;

/// Default lease: long enough to ride out a short network blip, short enough
/// that a crashed holder frees the lock within half a minute.
pub const DEFAULT_LEASE: &str = "30s";

#[derive(Debug, Parser)]
#[command(
    name = "dlock",
    version,
    about = "A distributed mutex for shell scripts, cron jobs and CI pipelines",
    long_about = "A distributed mutex for shell scripts, cron jobs and CI pipelines.\n\n\
        dlock holds a named lease on a shared backend chosen by URL, so that two machines \
        never run the same job at once. Without a URL it uses an embedded SQLite file, \
        ~/.local/state/dlock/locks.db in the effective user's home directory from the \
        password database (HOME and XDG_STATE_HOME do not move it; else \
        /tmp/dlock-$EUID/locks.db), which only excludes processes on one host that use the \
        same file: by default, one user's.",
    after_help = error::TABLE,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Backend URL: redis://, rediss://, redis+unix://, mysql://, sqlite:// [default: embedded SQLite file]
    #[arg(
        long,
        env = "DLOCK_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Read the backend URL from this file, keeping passwords out of argv and the environment
    /// (given on the command line, it overrides DLOCK_URL, and --url overrides DLOCK_URL_FILE)
    #[arg(long, env = "DLOCK_URL_FILE", global = true, value_name = "PATH")]
    pub url_file: Option<PathBuf>,

    /// Namespace for every key, table row and channel dlock uses
    #[arg(long, env = "DLOCK_PREFIX", global = true, default_value = "dlock")]
    pub prefix: String,

    /// How long to wait for the backend to accept a connection or answer a request
    #[arg(long, env = "DLOCK_CONNECT_TIMEOUT", global = true, default_value = "5s",
          value_parser = parse_positive, value_name = "DUR")]
    pub connect_timeout: Duration,

    /// Print no messages but errors on stderr; results on stdout (a token, the status) still print
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Report each step (acquired, renewed, released) on stderr
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Format of messages on stderr: text, or one JSON event per line for log shippers
    #[arg(long, env = "DLOCK_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a lock and print its token; the lease runs out unless renewed (`renew`, --keepalive-pid) or released
    #[command(after_help = ACQUIRE_EXAMPLES)]
    Acquire(AcquireArgs),
    /// Release a lock held by a token
    #[command(after_help = RELEASE_EXAMPLES)]
    Release(ReleaseArgs),
    /// Show who holds which lock (exit 1 when a named lock is free)
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Run a command while holding a lock, renewing the lease until it exits
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Extend a lease held by a token (exit 3 or 4 when the token no longer holds it)
    #[command(after_help = RENEW_EXAMPLES)]
    Renew(RenewArgs),
    /// Internal: the detached renewer started by `acquire --keepalive-pid`
    #[command(hide = true)]
    Keepalive(KeepaliveArgs),
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// Lock name: any UTF-8 text without control characters, at most 255 bytes
    pub name: String,

    #[command(flatten)]
    pub lease: LeaseArgs,

    /// Use this token instead of a random one; acquiring again with it extends the lease
    #[arg(long, env = "DLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print an object with name, token, fence and expiry instead of the bare token
    #[arg(long)]
    pub json: bool,

    /// Keep renewing the lease in a detached dlock while process PID lives
    /// (e.g. `$$`), and release it when PID exits
    #[arg(long, value_name = "PID")]
    pub keepalive_pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Lock name
    pub name: String,

    /// The token printed by `acquire`
    #[arg(long, env = "DLOCK_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The new lease, counted from now
    #[arg(long, default_value = DEFAULT_LEASE, value_parser = parse_positive, value_name = "DUR",
          allow_hyphen_values = true)]
    pub lease: Duration,
}

#[derive(Debug, Args)]
pub struct KeepaliveArgs {
    pub name: String,
    #[arg(long, env = "DLOCK_TOKEN", hide_env_values = true)]
    pub token: String,
    #[arg(long, value_parser = parse_positive)]
    pub lease: Duration,
    #[arg(long)]
    pub pid: u32,
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// How long the lease lasts on the server without renewal
    #[arg(long, default_value = DEFAULT_LEASE, value_parser = parse_positive, value_name = "DUR",
          allow_hyphen_values = true)]
    pub lease: Duration,

    /// How long to wait for a busy lock: 0 fails at once, `forever` waits without limit
    #[arg(long, default_value = "0", value_parser = parse_wait, value_name = "DUR",
          allow_hyphen_values = true)]
    pub wait: Wait,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Lock name
    pub name: String,

    /// The token printed by `acquire`
    #[arg(
        long,
        env = "DLOCK_TOKEN",
        hide_env_values = true,
        required_unless_present = "force"
    )]
    pub token: Option<String>,

    /// Break the lock whoever holds it, and say whom it broke
    #[arg(long, conflicts_with = "token")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lock names to show; without names, every held lock under the prefix
    pub names: Vec<String>,

    /// Print a JSON object (schema in README) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Lock name
    pub name: String,

    #[command(flatten)]
    pub lease: LeaseArgs,

    /// Exit code when the lock is busy after --wait (like flock -E)
    #[arg(long, short = 'E', default_value_t = error::BUSY, value_name = "N",
          value_parser = clap::value_parser!(i32).range(0..=255))]
    pub conflict_exit_code: i32,

    /// Signal sent to the command's process group when the lease is lost
    #[arg(long, default_value = "TERM", value_parser = parse_signal, value_name = "SIG")]
    pub on_lost_signal: nix::sys::signal::Signal,

    /// Grace period between that signal and SIGKILL [default: a fifth of the lease, at most 5s]
    #[arg(long, value_parser = parse_positive, value_name = "DUR", allow_hyphen_values = true)]
    pub kill_after: Option<Duration>,

    /// Keep the lease at least this long after acquiring it, even if the command ends
    /// sooner, so one cron tick runs once across hosts whose clocks differ
    #[arg(long, value_parser = parse_positive, value_name = "DUR", allow_hyphen_values = true)]
    pub min_hold: Option<Duration>,

    /// Stop the whole job (signal, then SIGKILL after --kill-after) when it runs longer; exit 124
    #[arg(long, value_parser = parse_positive, value_name = "DUR", allow_hyphen_values = true)]
    pub max_runtime: Option<Duration>,

    /// Sleep a random time up to DUR before trying, to spread hosts started by the same cron tick
    #[arg(long, value_parser = parse_duration, value_name = "DUR", allow_hyphen_values = true)]
    pub jitter: Option<Duration>,

    /// Run this string with /bin/sh -c instead of CMD
    #[arg(long, short = 'c', value_name = "STRING", conflicts_with = "command")]
    pub shell: Option<String>,

    /// The command and its arguments, run without a shell (never re-split)
    #[arg(
        required_unless_present = "shell",
        trailing_var_arg = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// How long to wait for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    For(Duration),
    Forever,
}

pub fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

pub fn parse_wait(s: &str) -> Result<Wait, String> {
    match s.trim() {
        "forever" | "inf" | "infinite" => Ok(Wait::Forever),
        other => parse_duration(other).map(Wait::For),
    }
}

/// humantime, plus a bare `0`; a leading `-` gets its own message because
/// humantime's "expected number" hides what was wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!(
            "'{s}' is negative; durations are like 500ms, 5s, 2m, 1h"
        ));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 500ms, 5s, 2m, 1h"))
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

const ACQUIRE_EXAMPLES: &str = "\
Examples:
  tok=$(dlock acquire deploy --lease 10m) || exit
  trap 'dlock release deploy --token \"$tok\"' EXIT
  dlock acquire deploy --wait 30s --json";

const RELEASE_EXAMPLES: &str = "\
Examples:
  dlock release deploy --token \"$tok\"
  DLOCK_TOKEN=$tok dlock release deploy
  dlock release deploy --force        # break a stuck lock; says whom it broke";

const STATUS_EXAMPLES: &str = "\
Examples:
  dlock status                        # every held lock under the prefix
  dlock status deploy && echo held    # exit 1 when free
  dlock status --json | jq -r '.locks[] | .name'";

const RENEW_EXAMPLES: &str = "\
Examples:
  dlock renew deploy --token \"$tok\" --lease 10m || exit   # 3/4: the lock is no longer ours";

const EXEC_EXAMPLES: &str = "\
Examples:
  dlock exec nightly -- ./backup.sh
  dlock exec --wait 1s --lease 5s db-migrate -- ./migrate.sh
  dlock exec --wait forever deploy -- make deploy
  dlock exec -E 0 report -- ./report.sh   # a busy lock is not an error for cron
  dlock exec --min-hold 30s --jitter 2s -E 0 hourly -c 'run-parts /etc/cron.hourly'
  dlock exec --max-runtime 1h backup -- ./backup.sh

The command gets DLOCK_NAME, DLOCK_TOKEN, DLOCK_FENCE and DLOCK_HELD=1 in its
environment and runs in its own process group. The lease is renewed every third
of --lease; if it cannot be renewed in time the whole group gets --on-lost-signal,
then SIGKILL after --kill-after, before the lease can expire on the server.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive("0s").is_err());
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0"), Ok(Wait::For(Duration::ZERO)));
    }

    #[test]
    fn signals() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGINT"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn exec_takes_the_command_verbatim() {
        let cli = Cli::try_parse_from([
            "dlock", "exec", "n", "--wait", "1s", "--", "ls", "-l", "--wait",
        ])
        .unwrap();
        let Command::Exec(e) = cli.command else {
            panic!()
        };
        assert_eq!(e.lease.wait, Wait::For(Duration::from_secs(1)));
        assert_eq!(e.command, ["ls", "-l", "--wait"]);
        let cli = Cli::try_parse_from(["dlock", "exec", "n", "sh", "-c", "x"]).unwrap();
        let Command::Exec(e) = cli.command else {
            panic!()
        };
        assert_eq!(e.command, ["sh", "-c", "x"]);
        let cli = Cli::try_parse_from(["dlock", "exec", "n", "-c", "echo a b"]).unwrap();
        let Command::Exec(e) = cli.command else {
            panic!()
        };
        assert_eq!(e.shell.as_deref(), Some("echo a b"));
        assert!(e.command.is_empty());
        assert!(Cli::try_parse_from(["dlock", "exec", "n", "-c", "x", "--", "ls"]).is_err());
    }
}
