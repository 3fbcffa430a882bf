//! The command-line interface: clap definitions only, no behaviour.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{ArgAction, Args, Parser, Subcommand};

mod usage;
mod values;
mod watch;
pub use usage::subcommand_error;
pub use values::*;
pub use watch::{Until, WatchArgs};

use crate::backend::kinds::MAX_SLOTS;
use crate::backend::{Kind, Mode};
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
#[command(next_help_heading = "Backend and output (any subcommand)")]
pub struct Global {
    /// Backend URL, e.g. redis://host:6379/0 or sqlite:///var/lib/dlock/locks.db (`dlock urls` lists
    /// every scheme) [default: embedded SQLite file]
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
    #[arg(
        long,
        env = "DLOCK_URL_FILE",
        global = true,
        hide_env_values = true,
        value_name = "PATH",
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    pub url_file: Option<PathBuf>,

    /// Namespace for every key, table row and channel dlock uses
    #[arg(
        long,
        env = "DLOCK_PREFIX",
        global = true,
        hide_env_values = true,
        default_value = "dlock"
    )]
    pub prefix: String,

    /// How long to wait for the backend to accept a connection or answer a request
    #[arg(long, env = "DLOCK_CONNECT_TIMEOUT", global = true, hide_env_values = true, default_value = "5s",
          value_parser = parse_connect_timeout, value_name = "DUR")]
    pub connect_timeout: Duration,

    /// Print no messages but errors on stderr; results on stdout (a token, the status) still print
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Report each step (acquired, renewed, released) on stderr
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Format of messages on stderr: text, or one JSON event per line for log shippers
    #[arg(long, env = "DLOCK_LOG_FORMAT", global = true, hide_env_values = true, value_enum,
          default_value_t = LogFormat::Text, value_name = "FORMAT")]
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
    /// Print each change of the named locks as it happens (exit 0 once --until holds)
    #[command(after_help = watch::WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// List the backend URL schemes, each as it is written
    Urls,
    /// Internal: the detached renewer started by `acquire --keepalive-pid`
    #[command(hide = true)]
    Keepalive(KeepaliveArgs),
}

impl Command {
    /// The one lock the subcommand is about, if it names exactly one.
    pub fn lock_name(&self) -> Option<&str> {
        match self {
            Command::Acquire(a) => a.also.is_empty().then_some(a.name.as_str()),
            Command::Release(r) => r.also.is_empty().then_some(r.name.as_str()),
            Command::Exec(e) => e.also.is_empty().then_some(e.name.as_str()),
            Command::Renew(r) => r.also.is_empty().then_some(r.name.as_str()),
            Command::Keepalive(k) => k.also.is_empty().then_some(k.name.as_str()),
            Command::Urls => None,
            Command::Status(s) => match s.names.as_slice() {
                [one] => Some(one),
                _ => None,
            },
            Command::Watch(w) => match w.names.as_slice() {
                [one] => Some(one),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// Lock name: any UTF-8 text without control characters, at most 255 bytes
    pub name: String,

    /// Take this lock too, all or none (repeat for more): the names are taken in one
    /// order, so requests that list them differently never deadlock
    #[arg(long, value_name = "NAME")]
    pub also: Vec<String>,

    /// Use this token instead of a random one; acquiring again with it extends the lease.
    /// Never taken from DLOCK_TOKEN, so an acquire inside `dlock exec` waits like any other
    #[arg(long)]
    pub token: Option<String>,

    /// Print an object with name, token, fence and expiry instead of the bare token
    #[arg(long)]
    pub json: bool,

    /// Keep renewing the lease in a detached dlock while process PID lives
    /// (e.g. `$$`), and release it when PID exits
    #[arg(long, value_name = "PID")]
    pub keepalive_pid: Option<u32>,

    // Last: the headings of a flattened group carry on to the fields after it.
    #[command(flatten)]
    pub lease: LeaseArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Lock name
    pub name: String,

    /// Renew this lock too, taken with the same token by `acquire --also` (repeat for more)
    #[arg(long, value_name = "NAME")]
    pub also: Vec<String>,

    /// The token printed by `acquire`
    #[arg(long, env = "DLOCK_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The new lease, counted from now
    #[arg(long, default_value = DEFAULT_LEASE, value_parser = parse_long, value_name = "DUR",
          allow_hyphen_values = true)]
    pub lease: Duration,
}

#[derive(Debug, Args)]
pub struct KeepaliveArgs {
    pub name: String,
    #[arg(long)]
    pub also: Vec<String>,
    #[arg(long, env = "DLOCK_TOKEN", hide_env_values = true)]
    pub token: String,
    #[arg(long, value_parser = parse_long)]
    pub lease: Duration,
    #[arg(long)]
    pub pid: u32,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Lease and waiting")]
pub struct LeaseArgs {
    /// How long the lease lasts on the server without renewal
    #[arg(long, default_value = DEFAULT_LEASE, value_parser = parse_long, value_name = "DUR",
          allow_hyphen_values = true)]
    pub lease: Duration,

    /// How long to wait for a busy lock: 0 fails at once, `forever` waits without limit
    #[arg(long, default_value = "0", value_parser = parse_wait, value_name = "DUR",
          allow_hyphen_values = true)]
    pub wait: Wait,

    /// Let up to N holders in at once (a counting semaphore); each has its own token,
    /// lease and fence, and `exec` sets DLOCK_SLOT to its slot number (0..N-1)
    #[arg(help_heading = "Lock kind", long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SLOTS as i64))]
    pub slots: u32,

    /// Take a shared (read) lock: shared holders run together, an exclusive holder excludes
    /// them all, and new shared requests wait behind a waiting exclusive one
    #[arg(help_heading = "Lock kind", long, conflicts_with = "slots")]
    pub shared: bool,

    /// Wait in arrival order: no later request takes the lock ahead of this one
    #[arg(help_heading = "Lock kind", long)]
    pub fair: bool,
}

impl LeaseArgs {
    pub fn kind(&self) -> Kind {
        Kind {
            mode: if self.shared {
                Mode::Shared
            } else {
                Mode::Exclusive
            },
            slots: self.slots,
            fair: self.fair,
        }
    }

    /// True when `--slots` was given, so that `exec` exports DLOCK_SLOT.
    pub fn counts_slots(&self) -> bool {
        self.slots > 1
    }
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Lock name
    pub name: String,

    /// Release (or with --force, break) this lock too, e.g. one taken by `acquire --also`
    /// (repeat for more)
    #[arg(long, value_name = "NAME")]
    pub also: Vec<String>,

    /// The token printed by `acquire`. DLOCK_TOKEN set by an enclosing `dlock exec` of
    /// the same lock is refused: that exec releases the lock when its command ends
    #[arg(
        long,
        env = "DLOCK_TOKEN",
        hide_env_values = true,
        required_unless_present = "force"
    )]
    pub token: Option<String>,

    /// Set by main: the token came from DLOCK_TOKEN, not from --token.
    #[arg(skip)]
    pub token_from_env: bool,

    /// Break the lock whoever holds it (every holder of a shared lock or semaphore),
    /// and say whom it broke
    #[arg(long, conflicts_with = "token")]
    pub force: bool,

    /// With --force, break only the holder with this token id (the TOKEN column of `status`,
    /// or the whole token)
    #[arg(long, value_name = "ID", requires = "force")]
    pub token_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lock names to show; without names, every held lock under the prefix
    pub names: Vec<String>,

    /// Print a JSON object (schema in README) instead of a table
    #[arg(long)]
    pub json: bool,

    /// Print only the names of the held locks, one per line (for scripts and shell completion)
    #[arg(long, conflicts_with = "json")]
    pub names_only: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Lock name
    pub name: String,

    /// Hold this lock too, all or none (repeat for more): the names are taken in one
    /// order, so jobs that list them differently never deadlock; each gets its own fence
    #[arg(help_heading = "Lease and waiting", long, value_name = "NAME")]
    pub also: Vec<String>,

    /// The command and its arguments, run without a shell (never re-split)
    #[arg(
        required_unless_present = "shell",
        trailing_var_arg = true,
        value_name = "CMD",
        value_hint = clap::ValueHint::CommandWithArguments
    )]
    pub command: Vec<OsString>,

    #[command(flatten)]
    pub lease: LeaseArgs,

    /// Exit code when the lock is busy after --wait (like flock -E)
    #[arg(help_heading = "Lease and waiting", long, short = 'E', default_value_t = error::BUSY, value_name = "N",
          value_parser = clap::value_parser!(i32).range(0..=255))]
    pub conflict_exit_code: i32,

    /// Signal sent to the command's process group when the lease is lost
    #[arg(help_heading = "Running the command", long, default_value = "TERM", value_parser = SignalParser,
          hide_possible_values = true, value_name = "SIG")]
    pub on_lost_signal: nix::sys::signal::Signal,

    /// Grace period between that signal and SIGKILL [default: a fifth of the lease, at most 5s]
    #[arg(help_heading = "Running the command", long, value_parser = parse_long, value_name = "DUR", allow_hyphen_values = true)]
    pub kill_after: Option<Duration>,

    /// Keep the lease at least this long after acquiring it, even if the command ends
    /// sooner, so one cron tick runs once across hosts whose clocks differ
    #[arg(help_heading = "Lease and waiting", long, value_parser = parse_long, value_name = "DUR", allow_hyphen_values = true)]
    pub min_hold: Option<Duration>,

    /// Stop the whole job (signal, then SIGKILL after --kill-after) when it runs longer; exit 124
    #[arg(help_heading = "Running the command", long, value_parser = parse_long, value_name = "DUR", allow_hyphen_values = true)]
    pub max_runtime: Option<Duration>,

    /// Sleep a random time up to DUR before trying, to spread hosts started by the same cron tick
    #[arg(help_heading = "Lease and waiting", long, value_parser = parse_long_or_zero, value_name = "DUR", allow_hyphen_values = true)]
    pub jitter: Option<Duration>,

    /// Run this string with /bin/sh -c instead of CMD
    #[arg(
        help_heading = "Running the command",
        long,
        short = 'c',
        value_name = "STRING",
        conflicts_with = "command"
    )]
    pub shell: Option<String>,
}

const ACQUIRE_EXAMPLES: &str = "\
Examples:
  tok=$(dlock acquire deploy --lease 10m) || exit
  trap 'dlock release deploy --token \"$tok\"' EXIT
  dlock acquire deploy --wait 30s --json
  tok=$(dlock acquire db --also deploy) && dlock release db --also deploy --token \"$tok\"";

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
  dlock exec --wait 10m db --also deploy -- ./migrate.sh   # both locks, or neither

The command gets DLOCK_NAME, DLOCK_TOKEN, DLOCK_FENCE and DLOCK_HELD=1 in its
environment and runs in its own process group; with --also, every lock i (in
the order given, the first is 0) also as DLOCK_NAME_i and DLOCK_FENCE_i, and
DLOCK_FENCES lists the fences in that order. Inside it, `dlock acquire` of the
same lock waits like any other process, and `dlock release` of it refuses the
inherited DLOCK_TOKEN (pass --token to release early on purpose). The lease is renewed every third
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
        assert!(parse_long("0s").is_err());
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0"), Ok(Wait::For(Duration::ZERO)));
        assert_eq!(parse_long("1y"), Ok(MAX_LONG));
        assert!(parse_long("1y 1s").unwrap_err().contains("at most 1y"));
        assert_eq!(parse_wait("1y"), Ok(Wait::For(MAX_LONG)));
        assert!(parse_wait("300000000000y").is_err());
        assert_eq!(parse_connect_timeout("1h"), Ok(MAX_CONNECT_TIMEOUT));
        assert!(parse_connect_timeout("61m").is_err());
        assert_eq!(parse_long_or_zero("0"), Ok(Duration::ZERO));
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
