//! `dlock watch`'s arguments.

use clap::Args;

use super::values::{parse_wait, Wait};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Lock names to watch; without names, every lock under the prefix
    pub names: Vec<String>,

    /// Print one JSON object per event (schema in README) instead of a line of text
    #[arg(long)]
    pub json: bool,

    /// Exit 0 as soon as every named lock is free (or held); without names, as soon as no
    /// lock (or some lock) under the prefix is held. Checked at once too
    #[arg(long, value_enum, value_name = "STATE")]
    pub until: Option<Until>,

    /// With --until, how long to wait for it: exit 75 when this runs out first
    #[arg(long, default_value = "forever", value_parser = parse_wait, value_name = "DUR",
          allow_hyphen_values = true, requires = "until")]
    pub wait: Wait,
}

/// What `--until` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Nobody holds it
    Free,
    /// Somebody holds it
    Held,
}

pub const WATCH_EXAMPLES: &str = "\
Examples:
  dlock watch deploy                          # one line per change, until Ctrl-C
  dlock watch deploy --until free --wait 30m  # a CI step: wait for a deploy to end
  dlock watch --json >> locks.log             # every lock under the prefix, as JSON

Events: granted, released, expired (the lease ran out), broken (release --force, with
who broke it), queued and dequeued (waiters in the lock's queue). A watcher only reads: it never takes a lock nor a place in a queue.";
