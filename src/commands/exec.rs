//! `dlock exec`: take the lock, run the command under it while renewing,
//! release it when the command ends.

use std::ffi::OsString;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::{announce_acquired, connect, describe, report_busy};
use crate::backend::{self, Backend, Check, Request, Url};
use crate::cli::{ExecArgs, Global};
use crate::error;
use crate::event::Event;
use crate::holder::Holder;
use crate::lease::own_release::OwnRelease;
use crate::lease::{self, Keeper, Part, TakenAll, Timing};
use crate::names;
use crate::output::{self, Level};
use crate::signals;
use crate::supervise::{self, Job};

pub fn exec(g: &Global, url: Option<Url>, e: &ExecArgs) -> Result<i32> {
    let names = names::check_names(&e.name, &e.also)?;
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
    let template = Request {
        name: &names[0],
        token: &token,
        lease: timing.lease,
        holder: &holder,
        kind: e.lease.kind(),
    };
    let parts = match lease::acquire_all(b.as_mut(), &names, &template, e.lease.wait, &cfg)? {
        TakenAll::Held(parts) => parts,
        TakenAll::Busy(name, info) => {
            report_busy(b.as_mut(), &name, &info, e.lease.wait);
            return Ok(e.conflict_exit_code);
        }
    };
    // Every part's deadline counts from the earliest grant, in the shortest lease granted.
    let sent = parts
        .iter()
        .map(|p| p.sent)
        .min()
        .unwrap_or_else(Instant::now);
    let granted = parts.iter().map(|p| p.grant.lease).min();
    let timing = timing.granted(granted.unwrap_or(timing.lease));
    for p in &parts {
        announce_acquired(&p.name, &p.grant);
    }
    hold(
        e,
        b,
        argv,
        Held {
            token,
            parts,
            sent,
            timing,
            fences,
            timeout: cfg.timeout,
        },
    )
}

/// What exec holds once the locks are taken.
struct Held {
    token: String,
    /// Every name's grant, in the order the names were given.
    parts: Vec<Part>,
    /// When the earliest granting request was sent: the leases count from there.
    sent: Instant,
    timing: Timing,
    fences: bool,
    timeout: Duration,
}

/// Runs the command under the held locks: renewing, supervising, then
/// releasing (or keeping them for the rest of --min-hold).
fn hold(e: &ExecArgs, mut b: Box<dyn Backend>, argv: Vec<OsString>, h: Held) -> Result<i32> {
    let (tx, rx) = mpsc::channel();
    signals::forward_to(tx.clone());
    let own = Arc::new(OwnRelease::open(&h.token));
    // Beside the command, not before it: the listener connects on its own thread.
    for p in &h.parts {
        let (lost, own_seen) = (tx.clone(), Arc::clone(&own));
        b.watch_breaks(
            &p.name,
            &h.token,
            Box::new(move |why| {
                // The lease's end that the command itself asked for is no loss.
                if !own_seen.seen() {
                    let _ = lost.send(Event::Lost(why));
                }
            }),
        );
    }
    let names: Vec<String> = h.parts.iter().map(|p| p.name.clone()).collect();
    let label = names::label(&names);
    let env = job_env(&h, own.env());
    let keeper = Keeper::new(b, names, h.token, h.timing, h.sent, h.timeout, tx);
    keeper.allow_own_release(Arc::clone(&own));
    let job = Job {
        name: label.clone(),
        argv,
        env,
        on_lost: e.on_lost_signal,
        max_runtime: e.max_runtime,
    };
    let end = supervise::run(&job, rx, &keeper);
    signals::exit_on_signal();
    // --min-hold: a job that ended early keeps the locks until min-hold after
    // acquisition, so a late host's identical cron tick finds them busy.
    let hold_left = match (&end, e.min_hold) {
        (Ok(end), Some(min)) if !end.lost && !own.seen() => min.checked_sub(h.sent.elapsed()),
        _ => None,
    };
    let released = match hold_left {
        Some(left) => keeper.lapse_after(left),
        None => keeper.release(),
    };
    let end = end?;
    if own.seen() {
        // Released on purpose; a release of ours found only what came after.
        own.tell(&label);
    } else {
        for (name, r) in released {
            report_release(&name, r, hold_left, end.lost);
        }
    }
    Ok(if end.lost {
        error::LOST
    } else if end.timed_out {
        error::TIMED_OUT
    } else {
        end.status
    })
}

/// The command's environment: the first name as DLOCK_NAME, DLOCK_FENCE and
/// DLOCK_SLOT (as without --also), and every part by its index in the order
/// given (DLOCK_NAME_<i>, DLOCK_FENCE_<i>, DLOCK_SLOT_<i>), with the names
/// one per line in DLOCK_NAMES and the fences in DLOCK_FENCES.
fn job_env(h: &Held, own: Option<(String, String)>) -> Vec<(String, String)> {
    let first = &h.parts[0];
    let mut env = vec![
        ("DLOCK_NAME".into(), first.name.clone()),
        ("DLOCK_TOKEN".into(), h.token.clone()),
        ("DLOCK_HELD".into(), "1".into()),
    ];
    env.extend(own);
    let all = |f: &dyn Fn(&Part) -> String, sep: &str| {
        h.parts.iter().map(f).collect::<Vec<_>>().join(sep)
    };
    env.push(("DLOCK_NAMES".into(), all(&|p| p.name.clone(), "\n")));
    if h.fences {
        env.push(("DLOCK_FENCE".into(), first.grant.fence.to_string()));
        env.push((
            "DLOCK_FENCES".into(),
            all(&|p| p.grant.fence.to_string(), " "),
        ));
    }
    if let Some(slot) = first.grant.slot {
        env.push(("DLOCK_SLOT".into(), slot.to_string()));
    }
    for (i, p) in h.parts.iter().enumerate() {
        env.push((format!("DLOCK_NAME_{i}"), p.name.clone()));
        if h.fences {
            env.push((format!("DLOCK_FENCE_{i}"), p.grant.fence.to_string()));
        }
        if let Some(slot) = p.grant.slot {
            env.push((format!("DLOCK_SLOT_{i}"), slot.to_string()));
        }
    }
    env
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
