//! `dlock exec`: take the lock, run the command under it while renewing,
//! release it when the command ends.

use std::ffi::OsString;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::{announce_acquired, connect, describe, report_busy};
use crate::backend::{self, Backend, Check, Grant, Request, Url};
use crate::cli::{ExecArgs, Global};
use crate::error;
use crate::event::Event;
use crate::holder::Holder;
use crate::lease::own_release::OwnRelease;
use crate::lease::{self, Keeper, Taken, Timing};
use crate::names;
use crate::output::{self, Level};
use crate::signals;
use crate::supervise::{self, Job};

pub fn exec(g: &Global, url: Option<Url>, e: &ExecArgs) -> Result<i32> {
    names::check_name(&e.name)?;
    let timing = Timing::new(e.lease.lease, e.kill_after)?;
    let argv: Vec<OsString> = match &e.shell {
        Some(script) => vec!["/bin/sh".into(), "-c".into(), script.into()],
        None => e.command.clone(),
    };
    if let Some(j) = e.jitter.filter(|j| !j.is_zero()) {
        sleep_jitter(j);
    }
    let (mut b, loc, cfg) = connect(g, url)?;
    let want = backend::Use {
        kind: &e.lease.kind(),
        detached: false,
    };
    backend::check_capable(b.capabilities(), loc.backend, &want)?;
    let fences = b.capabilities().fences;
    let token = names::new_token();
    let cmdline = argv
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let holder = Holder::new(std::process::id(), cmdline);
    let req = Request {
        name: &e.name,
        token: &token,
        lease: timing.lease,
        holder: &holder,
        kind: e.lease.kind(),
    };
    let (grant, sent) = match lease::acquire(b.as_mut(), &req, e.lease.wait, cfg.timeout)? {
        Taken::Held(grant, sent) => (grant, sent),
        Taken::Busy(info) => {
            report_busy(b.as_mut(), &e.name, &info, e.lease.wait);
            return Ok(e.conflict_exit_code);
        }
    };
    let timing = timing.granted(grant.lease);
    announce_acquired(&e.name, &grant);
    hold(
        e,
        b,
        argv,
        Held {
            token,
            grant,
            sent,
            timing,
            fences,
            timeout: cfg.timeout,
        },
    )
}

/// What exec holds once the lock is taken.
struct Held {
    token: String,
    grant: Grant,
    /// When the granting request was sent: the lease counts from there.
    sent: Instant,
    timing: Timing,
    fences: bool,
    timeout: Duration,
}

/// Runs the command under the held lock: renewing, supervising, then
/// releasing (or keeping it for the rest of --min-hold).
fn hold(e: &ExecArgs, mut b: Box<dyn Backend>, argv: Vec<OsString>, h: Held) -> Result<i32> {
    let Held {
        token,
        grant,
        sent,
        timing,
        fences,
        timeout,
    } = h;
    let (tx, rx) = mpsc::channel();
    signals::forward_to(tx.clone());
    // Beside the command, not before it: the listener connects on its own thread.
    let lost = tx.clone();
    let own = Arc::new(OwnRelease::open(&token));
    let own_seen = Arc::clone(&own);
    b.watch_breaks(
        &e.name,
        &token,
        Box::new(move |why| {
            // The lease's end that the command itself asked for is no loss.
            if !own_seen.seen() {
                let _ = lost.send(Event::Lost(why));
            }
        }),
    );
    let keeper = Keeper::new(b, e.name.clone(), token.clone(), timing, sent, timeout, tx);
    keeper.allow_own_release(Arc::clone(&own));
    let mut env = vec![
        ("DLOCK_NAME".into(), e.name.clone()),
        ("DLOCK_TOKEN".into(), token),
        ("DLOCK_HELD".into(), "1".into()),
    ];
    env.extend(own.env());
    if fences {
        env.push(("DLOCK_FENCE".into(), grant.fence.to_string()));
    }
    if let Some(slot) = grant.slot {
        env.push(("DLOCK_SLOT".into(), slot.to_string()));
    }
    let job = Job {
        name: e.name.clone(),
        argv,
        env,
        on_lost: e.on_lost_signal,
        max_runtime: e.max_runtime,
    };
    let end = supervise::run(&job, rx, &keeper);
    signals::exit_on_signal();
    // --min-hold: a job that ended early keeps the lock until min-hold after
    // acquisition, so a late host's identical cron tick finds it busy.
    let hold_left = match (&end, e.min_hold) {
        (Ok(end), Some(min)) if !end.lost && !own.seen() => min.checked_sub(sent.elapsed()),
        _ => None,
    };
    let released = match hold_left {
        Some(left) => keeper.lapse_after(left),
        None => keeper.release(),
    };
    let end = end?;
    if own.seen() {
        // Released on purpose; a release of ours found only what came after.
        own.tell(&e.name);
    } else {
        report_release(&e.name, released, hold_left, end.lost);
    }
    Ok(if end.lost {
        error::LOST
    } else if end.timed_out {
        error::TIMED_OUT
    } else {
        end.status
    })
}

/// Says how the lock ended once the command did: released, kept for the rest
/// of --min-hold, or already gone (a lost lease was reported when it happened).
fn report_release(name: &str, released: Result<Check>, hold_left: Option<Duration>, lost: bool) {
    match released {
        Ok(Check::Done) => match hold_left {
            Some(left) => output::event(
                Level::Debug,
                "held",
                Some(name),
                &format!(
                    "keeping '{}' for another {} (--min-hold)",
                    name,
                    crate::duration::format_left(left)
                ),
                json!({ "left_ms": left.as_millis() as u64 }),
            ),
            None => output::event(
                Level::Debug,
                "released",
                Some(name),
                &format!("released '{}'", name),
                Value::Null,
            ),
        },
        Ok(_) if lost => {}
        Ok(Check::NotHeld) => output::error(&format!(
            "lock '{}' had already expired or been broken with --force when the command ended",
            name
        )),
        Ok(Check::Broken(b)) => output::error(&format!(
            "lock '{}' was broken with --force by {} before the command ended",
            name, b.by
        )),
        Ok(Check::HeldByOther(info)) => output::error(&format!(
            "lock '{}' was taken over by {} before the command ended",
            name,
            describe(&info)
        )),
        Err(err) if error::code_of(&err) == error::NOT_HELD => {
            output::error(&format!("could not release '{}': {err:#}", name))
        }
        Err(err) => output::event(
            Level::Error,
            "release_failed",
            Some(name),
            &format!(
                "could not release '{}': {err:#}; it frees itself when the lease runs out",
                name
            ),
            Value::Null,
        ),
    }
}

/// --jitter: spreads hosts that a cron tick starts at the same second.
fn sleep_jitter(limit: Duration) {
    let delay = crate::backoff::random_below(limit);
    output::verbose(&format!(
        "jitter: sleeping {}",
        crate::duration::format_left(delay)
    ));
    std::thread::sleep(delay);
}
