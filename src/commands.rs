//! The subcommands, each a function from parsed arguments to an exit code.

use anyhow::{Context, Result};
use serde_json::json;

use crate::backend::{self, Backend, Check, Config, Grant, Location, LockInfo, Request, Url};
use crate::cli::{AcquireArgs, Global, ReleaseArgs, RenewArgs, StatusArgs};
use crate::error::{self, fail};
use crate::holder::Holder;
use crate::lease::own_release::{self, inside_exec_of};
use crate::lease::{self, Part, TakenAll, Timing};
use crate::names;
use crate::output::{self, Level};
use crate::report::{self, Row};

mod busy;
mod exec;
mod keepalive;
mod watch;
use busy::report_busy;
pub use exec::exec;
pub use keepalive::keepalive;
use keepalive::spawn_keepalive;
pub use watch::watch;

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

fn connect(g: &Global, url: Option<Url>) -> Result<(Box<dyn Backend>, Location, Config)> {
    let cfg = Config {
        url,
        prefix: g.prefix.clone(),
        timeout: g.connect_timeout,
    };
    let (b, loc) = backend::open(&cfg)?;
    output::set_location(&loc.location);
    output::verbose(&format!("{} backend at {}", loc.backend, loc.location));
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
    // Zero: the lease ran out between reading the holder and asking its
    // time left (etcd's lease lookup); "0ms left" would read as a bug.
    let left = match info.ttl.is_zero() {
        true => "its lease just ran out".to_string(),
        false => format!("{} left", crate::duration::format_left(info.ttl)),
    };
    s.push_str(&format!(", fence {}, {left}", info.fence));
    s
}

pub fn acquire(g: &Global, url: Option<Url>, a: &AcquireArgs) -> Result<i32> {
    if a.keepalive_pid.is_some() {
        // The detached renewer needs room for its schedule.
        Timing::new(a.lease.lease, None)?;
    }
    let names = names::check_names(&a.name, &a.also)?;
    let token = match &a.token {
        Some(t) => {
            names::check_token(t)?;
            t.clone()
        }
        None => names::new_token(),
    };
    if let Some(pid) = a.keepalive_pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(fail(
                error::USAGE,
                format!("--keepalive-pid {pid}: no such process"),
            ));
        }
    }
    let (mut b, loc, cfg) = connect(g, url.clone())?;
    let want = backend::Use {
        kind: &a.lease.kind(),
        detached: a.keepalive_pid.is_none(),
    };
    backend::check_capable(b.capabilities(), loc.backend, &want)?;
    let holder = match a.keepalive_pid {
        Some(pid) => Holder::process(pid),
        None => Holder::parent_process(),
    };
    let template = Request {
        name: &names[0],
        token: &token,
        lease: a.lease.lease,
        holder: &holder,
        kind: a.lease.kind(),
    };
    let parts = match lease::acquire_all(b.as_mut(), &names, &template, a.lease.wait, &cfg)? {
        TakenAll::Held(parts) => parts,
        TakenAll::Busy(name, info) => {
            report_busy(b.as_mut(), &name, &info, a.lease.wait);
            return Ok(error::BUSY);
        }
    };
    for p in &parts {
        announce_acquired(&p.name, &p.grant);
    }
    if let Some(pid) = a.keepalive_pid {
        let lease = parts.iter().map(|p| p.grant.lease).min();
        let url = url.as_ref().map(Url::as_str);
        let lease = lease.unwrap_or(a.lease.lease);
        if let Err(e) = spawn_keepalive(g, url, &names, &token, lease, pid) {
            for p in parts.iter().rev() {
                let _ = b.release(&p.name, &token);
            }
            return Err(e);
        }
    }
    let text = if a.json {
        report::acquired_json(&token, &parts)
    } else {
        token.clone()
    };
    match output::result(&format!("{text}\n")) {
        Ok(()) => Ok(error::OK),
        Err(why) => Err(token_unwritten(
            b.as_mut(),
            &parts,
            &token,
            &why.to_string(),
        )),
    }
}

/// A token nobody received must not keep the locks: release them, unless
/// this call only extended leases the caller already held with its own token.
fn token_unwritten(b: &mut dyn Backend, parts: &[Part], token: &str, why: &str) -> anyhow::Error {
    let what: Vec<String> = parts
        .iter()
        .rev()
        .map(|p| {
            let name = &p.name;
            if p.grant.extended {
                return format!("kept lock '{name}', which --token already held");
            }
            match b.release(name, token) {
                Ok(_) => {
                    format!("released lock '{name}' so that it is not held with its token lost")
                }
                Err(e) => format!(
                    "could not release lock '{name}' either ({e:#}); it frees itself when the lease runs out"
                ),
            }
        })
        .collect();
    fail(
        error::OUTPUT,
        format!(
            "could not write the token to stdout ({why}); {}",
            what.join("; ")
        ),
    )
}

pub fn release(g: &Global, url: Option<Url>, r: &ReleaseArgs) -> Result<i32> {
    let names = names::check_names(&r.name, &r.also)?;
    let enclosing = names.iter().find(|n| inside_exec_of(n));
    if let Some(name) = enclosing.filter(|_| r.token_from_env) {
        // A job's `dlock release NAME` would otherwise free the lock that the
        // enclosing exec holds for it while the job still runs.
        return Err(fail(
            error::USAGE,
            format!(
                "not releasing '{name}' with DLOCK_TOKEN: it belongs to the enclosing `dlock exec`, \
                 which releases the lock when its command ends; pass --token to release it early on purpose"
            ),
        ));
    }
    let (mut b, _loc, _) = connect(g, url)?;
    if r.force {
        let codes: Result<Vec<i32>> = names
            .iter()
            .map(|n| force_release(b.as_mut(), n, r.token_id.as_deref()))
            .collect();
        return Ok(first_failure(codes?));
    }
    let token = r.token.as_deref().context("--token is required")?;
    names::check_token(token)?;
    let mut codes = Vec::new();
    // Reverse order, as exec releases: a waiter for the first name then finds the rest free.
    for name in names.iter().rev() {
        own_release::announce(name, token);
        codes.push(match b.release(name, token)? {
            Check::Done => {
                output::verbose(&format!("released '{name}'"));
                error::OK
            }
            refused => token_refused(name, refused, "; use --force to break it"),
        });
    }
    Ok(first_failure(codes))
}

/// The exit code of a command over several names: the first failure's.
fn first_failure(codes: Vec<i32>) -> i32 {
    codes
        .into_iter()
        .find(|c| *c != error::OK)
        .unwrap_or(error::OK)
}

/// `release --force`: breaks every holder, or the one with token id `only`,
/// and says whom.
fn force_release(b: &mut dyn Backend, name: &str, only: Option<&str>) -> Result<i32> {
    // The TOKEN column of `status` shows a token's first characters; the
    // whole token names the same holder.
    let only = only.map(names::token_id);
    let broken = b.force_release(name, only.as_deref())?;
    for info in &broken {
        output::event(
            Level::Info,
            "broken",
            Some(name),
            &format!("broke lock '{name}' held by {}", describe(info)),
            json!({ "holder": info.holder, "fence": info.fence, "token_id": info.token_id }),
        );
    }
    if !broken.is_empty() {
        return Ok(error::OK);
    }
    match only {
        Some(id) => {
            output::error(&format!(
                "lock '{name}' has no holder with token id '{id}'; see `dlock status {name}`"
            ));
            Ok(error::NOT_HELD)
        }
        None => {
            output::info(&format!("lock '{name}' was not held; nothing to break"));
            Ok(error::OK)
        }
    }
}

/// Reports a release or renew that the token was not entitled to; returns its exit code.
fn token_refused(name: &str, check: Check, hint_other: &str) -> i32 {
    match check {
        Check::HeldByOther(info) => {
            output::error(&format!(
                "lock '{name}' is held by another token: {}{hint_other}",
                describe(&info)
            ));
            error::HELD_BY_OTHER
        }
        Check::Broken(b) => {
            match &b.now {
                Some(info) => output::error(&format!(
                    "lock '{name}' is not held by this token: it was broken with --force by {} and is now held by {}",
                    b.by,
                    describe(info)
                )),
                None => output::error(&format!(
                    "lock '{name}' is not held by this token: it was broken with --force by {}",
                    b.by
                )),
            }
            if b.now.is_some() {
                error::HELD_BY_OTHER
            } else {
                error::NOT_HELD
            }
        }
        _ => {
            output::error(&format!(
                "lock '{name}' is not held by this token: its lease expired, or it was released or broken with --force"
            ));
            error::NOT_HELD
        }
    }
}

pub fn status(g: &Global, url: Option<Url>, s: &StatusArgs) -> Result<i32> {
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
                let of_n: Vec<&LockInfo> = held.iter().filter(|l| &l.name == n).collect();
                if of_n.is_empty() {
                    all_held = false;
                    rows.push(Row::Free(n));
                }
                rows.extend(of_n.into_iter().map(Row::Held));
            }
        }
        None => rows.extend(held.iter().map(Row::Held)),
    }
    let text = if s.names_only {
        let mut names: Vec<&str> = held.iter().map(|l| l.name.as_str()).collect();
        names.dedup();
        names.iter().map(|n| format!("{n}\n")).collect()
    } else if s.json {
        format!("{}\n", report::status_json(&loc, &g.prefix, &rows))
    } else {
        report::status_table(&loc, &g.prefix, &rows)
    };
    match output::result(&text) {
        Err(why) if why.kind() == std::io::ErrorKind::BrokenPipe => output::die_of_broken_pipe(),
        Err(why) => {
            return Err(fail(
                error::OUTPUT,
                format!("could not write the status to stdout ({why})"),
            ))
        }
        Ok(()) => {}
    }
    Ok(if all_held { error::OK } else { error::FREE })
}

fn announce_acquired(name: &str, grant: &Grant) {
    output::event(
        Level::Debug,
        "acquired",
        Some(name),
        &format!(
            "{} '{name}' with fence {}",
            if grant.extended {
                "extended"
            } else {
                "acquired"
            },
            grant.fence
        ),
        json!({ "fence": grant.fence, "lease_ms": grant.lease.as_millis() as u64, "slot": grant.slot }),
    );
}

pub fn renew(g: &Global, url: Option<Url>, r: &RenewArgs) -> Result<i32> {
    let names = names::check_names(&r.name, &r.also)?;
    names::check_token(&r.token)?;
    let (mut b, _loc, _) = connect(g, url)?;
    let mut codes = Vec::new();
    for name in &names {
        codes.push(match b.renew(name, &r.token, r.lease)? {
            Check::Done => {
                output::event(
                    Level::Debug,
                    "renewed",
                    Some(name),
                    &format!("renewed '{name}' for {}", crate::duration::format(r.lease)),
                    json!({ "lease_ms": r.lease.as_millis() as u64 }),
                );
                error::OK
            }
            refused => token_refused(name, refused, ""),
        });
    }
    Ok(first_failure(codes))
}
