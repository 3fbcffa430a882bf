//! The subcommands, each a function from parsed arguments to an exit code.

use std::sync::mpsc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::backend::{self, Backend, Check, Config, Location, LockInfo, Request};
use crate::cli::{AcquireArgs, ExecArgs, Global, ReleaseArgs, StatusArgs};
use crate::error::{self, fail};
use crate::holder::Holder;
use crate::lease::{self, Keeper, Taken, Timing};
use crate::names;
use crate::output::{self, Row};
use crate::signals;
use crate::supervise::{self, Job};

/// The backend URL from --url, DLOCK_URL or --url-file.
pub fn resolve_url(g: &Global) -> Result<Option<String>> {
    if let Some(path) = &g.url_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(
                error::USAGE,
                format!("cannot read --url-file {}: {e}", path.display()),
            )
        })?;
        let url = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        return match url {
            Some(u) => Ok(Some(u.to_string())),
            None => Err(fail(
                error::USAGE,
                format!("--url-file {} holds no URL", path.display()),
            )),
        };
    }
    Ok(g.url.clone())
}

fn connect(g: &Global, url: Option<String>) -> Result<(Box<dyn Backend>, Location, Config)> {
    let cfg = Config {
        url,
        prefix: g.prefix.clone(),
        timeout: g.connect_timeout,
    };
    let (b, loc) = backend::open(&cfg)?;
    Ok((b, loc, cfg))
}

/// "held by host:pid (user) running 'cmd', 12.3s left"
fn describe(info: &LockInfo) -> String {
    let mut s = format!(
        "{}:{} ({})",
        info.holder.host, info.holder.pid, info.holder.user
    );
    if !info.holder.command.is_empty() {
        s.push_str(&format!(" running '{}'", info.holder.command));
    }
    s.push_str(&format!(
        ", fence {}, {} left",
        info.fence,
        output::format_left(info.ttl)
    ));
    s
}

fn busy_message(name: &str, info: &Option<LockInfo>, waited: crate::cli::Wait) -> String {
    let who = info
        .as_ref()
        .map_or_else(|| "another holder".to_string(), describe);
    match waited {
        crate::cli::Wait::For(d) if !d.is_zero() => format!(
            "lock '{name}' is still busy after waiting {}: held by {who}",
            humantime::format_duration(d)
        ),
        _ => format!("lock '{name}' is busy: held by {who} (use --wait to wait for it)"),
    }
}

pub fn acquire(g: &Global, url: Option<String>, a: &AcquireArgs) -> Result<i32> {
    names::check_name(&a.name)?;
    let token = match &a.token {
        Some(t) => {
            names::check_token(t)?;
            t.clone()
        }
        None => names::new_token(),
    };
    let (mut b, _loc, _) = connect(g, url)?;
    let holder = Holder::parent_process();
    let req = Request {
        name: &a.name,
        token: &token,
        lease: a.lease.lease,
        holder: &holder,
    };
    match lease::acquire(b.as_mut(), &req, a.lease.wait)? {
        Taken::Held(grant, _) => {
            let expires_us = grant.server_now_us + a.lease.lease.as_micros() as i64;
            output::verbose(&format!(
                "{} '{}' with fence {} until {}",
                if grant.extended {
                    "extended"
                } else {
                    "acquired"
                },
                a.name,
                grant.fence,
                output::format_time_us(expires_us)
            ));
            if a.json {
                println!(
                    "{}",
                    json!({
                        "name": a.name,
                        "token": token,
                        "fence": grant.fence,
                        "lease_ms": a.lease.lease.as_millis() as u64,
                        "expires_at": output::format_time_us(expires_us),
                        "extended": grant.extended,
                    })
                );
            } else {
                println!("{token}");
            }
            Ok(error::OK)
        }
        Taken::Busy(info) => {
            output::info(&busy_message(&a.name, &info, a.lease.wait));
            Ok(error::BUSY)
        }
    }
}

pub fn release(g: &Global, url: Option<String>, r: &ReleaseArgs) -> Result<i32> {
    names::check_name(&r.name)?;
    let (mut b, _loc, _) = connect(g, url)?;
    if r.force {
        return match b.force_release(&r.name)? {
            Some(info) => {
                output::info(&format!(
                    "broke lock '{}' held by {}",
                    r.name,
                    describe(&info)
                ));
                Ok(error::OK)
            }
            None => {
                output::info(&format!("lock '{}' was not held; nothing to break", r.name));
                Ok(error::OK)
            }
        };
    }
    let token = r.token.as_deref().context("--token is required")?;
    names::check_token(token)?;
    match b.release(&r.name, token)? {
        Check::Done => {
            output::verbose(&format!("released '{}'", r.name));
            Ok(error::OK)
        }
        Check::NotHeld => {
            output::error(&format!(
                "lock '{}' is not held by this token: it is free or its lease expired",
                r.name
            ));
            Ok(error::NOT_HELD)
        }
        Check::HeldByOther(info) => {
            output::error(&format!(
                "lock '{}' is held by another token: {}; use --force to break it",
                r.name,
                describe(&info)
            ));
            Ok(error::HELD_BY_OTHER)
        }
    }
}

pub fn status(g: &Global, url: Option<String>, s: &StatusArgs) -> Result<i32> {
    for n in &s.names {
        names::check_name(n)?;
    }
    let (mut b, loc, _) = connect(g, url)?;
    let named = (!s.names.is_empty()).then_some(s.names.as_slice());
    let held = b.status(named)?;
    let mut rows = Vec::new();
    let mut all_held = true;
    match named {
        Some(names) => {
            for n in names {
                match held.iter().find(|l| &l.name == n) {
                    Some(l) => rows.push(Row::Held(l)),
                    None => {
                        all_held = false;
                        rows.push(Row::Free(n));
                    }
                }
            }
        }
        None => rows.extend(held.iter().map(Row::Held)),
    }
    if s.json {
        println!("{}", output::status_json(&loc, &g.prefix, &rows));
    } else {
        print!("{}", output::status_table(&loc, &g.prefix, &rows));
    }
    Ok(if all_held { error::OK } else { error::FREE })
}

pub fn exec(g: &Global, url: Option<String>, e: &ExecArgs) -> Result<i32> {
    names::check_name(&e.name)?;
    let timing = Timing::new(e.lease.lease, e.kill_after)?;
    let (mut b, _loc, cfg) = connect(g, url)?;
    let token = names::new_token();
    let pid = std::process::id();
    let cmdline = e
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let holder = Holder::new(pid, cmdline);
    let req = Request {
        name: &e.name,
        token: &token,
        lease: timing.lease,
        holder: &holder,
    };
    let (grant, sent) = match lease::acquire(b.as_mut(), &req, e.lease.wait)? {
        Taken::Held(grant, sent) => (grant, sent),
        Taken::Busy(info) => {
            output::info(&busy_message(&e.name, &info, e.lease.wait));
            return Ok(e.conflict_exit_code);
        }
    };
    output::verbose(&format!("acquired '{}' with fence {}", e.name, grant.fence));
    let (tx, rx) = mpsc::channel();
    signals::forward_to(tx.clone());
    let keeper = Keeper::start(
        b,
        e.name.clone(),
        token.clone(),
        timing,
        sent,
        cfg.timeout,
        tx,
    );
    let job = Job {
        argv: e.command.clone(),
        env: vec![
            ("DLOCK_NAME".into(), e.name.clone()),
            ("DLOCK_TOKEN".into(), token),
            ("DLOCK_FENCE".into(), grant.fence.to_string()),
            ("DLOCK_HELD".into(), "1".into()),
        ],
        on_lost: e.on_lost_signal,
    };
    let end = supervise::run(&job, rx, &keeper);
    signals::exit_on_signal();
    let released = keeper.release();
    let end = end?;
    match released {
        Ok(Check::Done) => output::verbose(&format!("released '{}'", e.name)),
        Ok(_) if end.lost => {}
        Ok(Check::NotHeld) => output::error(&format!(
            "lock '{}' had already expired when the command ended",
            e.name
        )),
        Ok(Check::HeldByOther(info)) => output::error(&format!(
            "lock '{}' was taken over by {} before the command ended",
            e.name,
            describe(&info)
        )),
        Err(err) => output::error(&format!(
            "could not release '{}': {err:#}; it frees itself when the lease runs out",
            e.name
        )),
    }
    Ok(if end.lost { error::LOST } else { end.status })
}
