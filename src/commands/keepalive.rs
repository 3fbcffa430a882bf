//! `acquire --keepalive-pid`: a detached dlock that renews the lease while a
//! process lives and releases it when that process exits.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;

use super::connect;
use crate::backend::Check;
use crate::cli::{Global, KeepaliveArgs};
use crate::error;
use crate::event::Event;
use crate::lease::{Keeper, Timing};
use crate::output::{self, Level};
use crate::signals;

/// Starts the detached renewer for `acquire --keepalive-pid`: a new session,
/// so the caller's Ctrl-C or job control does not reach it.
pub(super) fn spawn_keepalive(
    g: &Global,
    url: Option<&str>,
    names: &[String],
    token: &str,
    lease: Duration,
    pid: u32,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the dlock executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("keepalive").arg(&names[0]);
    for also in &names[1..] {
        cmd.arg("--also").arg(also);
    }
    cmd.arg("--lease")
        .arg(format!("{}ms", lease.as_millis()))
        .arg("--pid")
        .arg(pid.to_string())
        // Secrets travel in the environment, never in argv where `ps` shows them.
        .env("DLOCK_TOKEN", token)
        .env("DLOCK_PREFIX", &g.prefix)
        .env(
            "DLOCK_CONNECT_TIMEOUT",
            format!("{}ms", g.connect_timeout.as_millis()),
        )
        .env_remove("DLOCK_URL_FILE")
        // No inherited stdout or stderr either: a caller that captures them
        // (`$(dlock acquire … 2>&1)`, a CI log pipe) would wait for EOF until
        // the watched process exits. Trouble shows as `release`/`renew` exit 3.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match url {
        Some(u) => cmd.env("DLOCK_URL", u),
        None => cmd.env_remove("DLOCK_URL"),
    };
    if g.quiet {
        cmd.arg("--quiet");
    }
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed: setsid is one, and it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the keep-alive process")?;
    Ok(())
}

/// A descriptor that becomes readable when process `pid` exits; None if it
/// has already (nix has no pidfd_open).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The hidden `keepalive` subcommand: renew while `pid` lives, then release.
pub fn keepalive(g: &Global, url: Option<crate::backend::Url>, k: &KeepaliveArgs) -> Result<i32> {
    let timing = Timing::new(k.lease, None)?;
    let pidfd = pidfd_open(k.pid);
    let names = crate::names::check_names(&k.name, &k.also)?;
    let label = crate::names::label(&names);
    let (b, _loc, cfg) = connect(g, url)?;
    let (tx, rx) = mpsc::channel();
    if let Some(pidfd) = pidfd {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // A pidfd becomes readable when its process exits.
            let mut p = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            while poll(&mut p, PollTimeout::NONE).is_err() {}
            let _ = tx.send(Event::Watched);
        });
    } else {
        let _ = tx.send(Event::Watched); // already gone
    }
    signals::forward_to(tx.clone());
    // Renew at once: the lease was granted a moment ago by the parent.
    let keeper = Keeper::new(
        b,
        names,
        k.token.clone(),
        timing,
        Instant::now() - timing.period,
        cfg.timeout,
        tx,
    );
    keeper.start_now();
    loop {
        let wait = keeper.stop_by().saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Watched) => {
                let r = crate::lease::worst(keeper.release())?;
                if matches!(r, Check::Done) {
                    output::event(
                        Level::Debug,
                        "released",
                        Some(&label),
                        &format!("process {} exited; released '{label}'", k.pid),
                        Value::Null,
                    );
                }
                return Ok(error::OK);
            }
            Ok(Event::Lost(msg)) => {
                output::event(
                    Level::Error,
                    "lost",
                    Some(&label),
                    &format!("keep-alive for '{label}' stopped: {msg}"),
                    Value::Null,
                );
                return Ok(error::LOST);
            }
            Ok(Event::Signal(sig))
                if signals::FORWARDED.contains(&sig)
                    && sig != nix::sys::signal::Signal::SIGUSR1
                    && sig != nix::sys::signal::Signal::SIGUSR2 =>
            {
                // Stopped deliberately: release, as the owner would.
                let _ = keeper.release();
                return Ok(signals::exit_code(sig));
            }
            Ok(Event::Signal(_)) => {}
            Err(_) => {
                if keeper.lose_if_due(Instant::now()) {
                    output::event(
                        Level::Error,
                        "lost",
                        Some(&label),
                        &format!(
                            "keep-alive for '{label}' could not renew in time; the lease lapses"
                        ),
                        Value::Null,
                    );
                    return Ok(error::LOST);
                }
            }
        }
    }
}
