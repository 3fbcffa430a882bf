//! `dlock watch`: prints each change of the watched locks as it happens.
//!
//! One loop: read `status`, turn the difference from the last read into
//! events (`crate::watch`), print them, and sleep until the earliest of a
//! notice from the backend (`Backend::changes`, where it can push), the
//! next lease expiry seen, and [`POLL`]. A watcher only reads: no acquire,
//! no place in a queue. Signals end it as they end any dlock that holds
//! nothing (128+N).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::json;

use crate::backend::Url;
use crate::backoff::Backoff;
use crate::cli::{Global, Until, Wait, WatchArgs};
use crate::error::{self, fail};
use crate::names;
use crate::output::{self, Level};
use crate::report;
use crate::watch::{holds, Change, Seen};

/// The longest a watcher goes without reading, pushed notices or not: a
/// backend without them is polled this often, and one with them is read
/// again should a notice have been lost.
pub const POLL: Duration = Duration::from_secs(1);

/// How often a watcher whose notices stopped tries to subscribe again
/// (it polls meanwhile).
const RESUBSCRIBE: Duration = Duration::from_secs(10);

pub fn watch(g: &Global, url: Option<Url>, w: &WatchArgs) -> Result<i32> {
    for n in &w.names {
        names::check_name(n)?;
    }
    let (mut b, _loc, _) = super::connect(g, url)?;
    let named = (!w.names.is_empty()).then_some(w.names.as_slice());
    let deadline = match (w.until, w.wait) {
        (Some(_), Wait::For(d)) => Some(Instant::now() + d),
        _ => None,
    };
    // Subscribed before the first read, so that no change after it is missed.
    let mut notice = b.changes(named).unwrap_or_else(|e| {
        output::verbose(&format!("no change notices from the backend ({e:#})"));
        None
    });
    let pushed = notice.is_some();
    let started = Instant::now();
    let mut seen = Seen::new(b.status(named)?, started, b.ttl_grain());
    output::verbose(match pushed {
        true => "watching, with change notices from the backend",
        false => "watching, reading the backend every second",
    });
    let mut backoff = Backoff::new(Duration::from_millis(100), 2, Duration::from_secs(5));
    let mut resubscribe = Instant::now();
    let mut failures = 0;
    loop {
        if let Some(until) = w.until.filter(|u| holds(*u, &seen, named)) {
            output::verbose(&format!("--until {} holds", word(until)));
            return Ok(error::OK);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(ran_out(w));
        }
        let wake = [Some(now + POLL), seen.next_expiry(now), deadline]
            .into_iter()
            .flatten()
            .min()
            .expect("the poll is always there");
        let left = wake.saturating_duration_since(now);
        match notice.as_mut().map(|n| n.wait(left)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                output::verbose(&format!("lost the backend's notices ({e:#}); polling"));
                notice = None;
                std::thread::sleep(left);
            }
            None => std::thread::sleep(left),
        }
        let started = Instant::now();
        let infos = match b.status(named) {
            Ok(infos) => infos,
            Err(e) => {
                failures += 1;
                retrying(&e, failures);
                std::thread::sleep(backoff.next_within(Duration::from_secs(5)));
                let _ = b.reconnect();
                continue;
            }
        };
        reconnected(std::mem::take(&mut failures));
        backoff.reset();
        let done = Instant::now();
        let changes = seen.next(infos, started, done, |i| {
            b.broken_by(&i.name, &i.token_id).ok().flatten()
        });
        print(&changes, w.json)?;
        if pushed && notice.is_none() && Instant::now() >= resubscribe {
            // Not in every round: subscribing to a server that is down may
            // take the whole --connect-timeout.
            notice = b.changes(named).ok().flatten();
            resubscribe = Instant::now() + RESUBSCRIBE;
        }
    }
}

/// A read failed: said once per outage (then with -v), as a waiting
/// `exec` says it, with the same JSON event.
fn retrying(e: &anyhow::Error, failures: u32) {
    let level = match failures {
        1 => Level::Info,
        _ => Level::Debug,
    };
    let msg = format!("{e:#} (still watching; reading again)");
    output::event(
        level,
        "retrying",
        None,
        &msg,
        json!({ "attempt": failures }),
    );
}

/// A read succeeded after `failures` failed ones.
fn reconnected(failures: u32) {
    if failures > 0 {
        let msg = "the backend answers again; still watching";
        output::event(
            Level::Info,
            "reconnected",
            None,
            msg,
            json!({ "failures": failures }),
        );
    }
}

fn word(until: Until) -> &'static str {
    match until {
        Until::Free => "free",
        Until::Held => "held",
    }
}

/// Says that --wait ran out before --until held; returns the exit code.
fn ran_out(w: &WatchArgs) -> i32 {
    let Wait::For(d) = w.wait else {
        unreachable!("only a bounded --wait runs out")
    };
    let state = match w.until {
        Some(Until::Free) => "free",
        _ => "held",
    };
    let which = match w.names.as_slice() {
        [] => "the locks under the prefix".to_string(),
        [one] => format!("lock '{one}'"),
        many => format!("locks '{}'", many.join("', '")),
    };
    output::error(&format!(
        "--until {state}: {which} did not become {state} within --wait {}",
        crate::duration::format(d)
    ));
    error::BUSY
}

/// Writes the events, a line each, as soon as they are known.
fn print(changes: &[Change], json: bool) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let text: String = changes
        .iter()
        .map(|c| match json {
            true => report::watch_json(c, now_us),
            false => report::watch_line(c, now_us),
        })
        .collect();
    match output::result(&text) {
        Err(why) if why.kind() == std::io::ErrorKind::BrokenPipe => output::die_of_broken_pipe(),
        Err(why) => Err(fail(
            error::OUTPUT,
            format!("could not write the events to stdout ({why})"),
        )),
        Ok(()) => Ok(()),
    }
}
