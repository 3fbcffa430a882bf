//! Embedded SQLite backend, the default: one file guards the locks of one host.
//!
//! URL: `sqlite:///abs/path/locks.db`, `sqlite://relative/path.db` (from the
//! current directory) or `sqlite://` for the default file, which is
//! `~/.local/state/dlock/locks.db` in the effective user's home directory from
//! the password database, else `/tmp/dlock-$EUID/locks.db` (see `place.rs`).
//! The path is percent-decoded; there are no parameters.
//!
//! The lease logic is in `sql/`; the clock is this host's wall clock, read
//! inside each `BEGIN IMMEDIATE` transaction. WAL mode and a busy timeout let
//! many processes share the file; a process killed at any point leaves either
//! its last transaction or nothing, and every lease carries its expiry.
//! Every `dlock` is a new process, so opening is kept cheap: a file whose
//! header already says WAL gets only the per-connection pragmas, and the
//! table is created when a statement finds it missing (another prefix), and
//! given its `state` column when a statement finds that missing (a table
//! made by a dlock from before the lock kinds).
//!
//! Waking waiters: each name has a 4-byte counter file in `<db>-wake/`,
//! mapped shared by every process. Release (by any process: `dlock exec`,
//! `dlock release`, `--force`) bumps the counter and wakes one sleeper in
//! FUTEX_WAKE; a waiter sleeps in FUTEX_WAIT on the value it read before its
//! last attempt, so a release in between is never missed (the wait returns
//! at once), and nothing polls. One sleeper is enough: a woken waiter always
//! tries right away (lease.rs tries before it looks at its deadline); if it
//! wins it releases later, and if it loses, the winner does, and each
//! release wakes the next one. A waiter whose attempt fails with an error
//! passes the wake-up on. A woken waiter that dies before it tries (SIGKILL,
//! or a stopping signal in the microseconds between waking and trying)
//! takes its wake-up with it: the others then sleep on until the holder's
//! lease would have run out, as they last saw it; late, never wrong. A
//! lease that simply runs out is noticed by the waiter's timeout, which
//! lease.rs sets to the holder's TTL.
//! The lock kinds ring the same bell: a grant that leaves room (a reader, a
//! free slot) wakes one more waiter, so readers wake in a chain; a woken
//! waiter that is not first in line while a waiter ahead of it could go
//! passes its wake-up on, to the same waiter at most once a second
//! (`pass_on`), and a queued waiter also tries every second, so a wake-up
//! that went astray costs at most that.
//!
//! A file deleted or replaced under a running dlock (tmp cleaners remove
//! /tmp/dlock-$EUID) would let a newcomer take the lock in a new file while
//! the holder renews in the old one. So every request first checks that the
//! path still names the open file: a lease taken in a file that is gone is
//! lost (renew and release fail with NOT_HELD, which stops `exec`), and
//! other requests re-open the path. A bell whose file was replaced is
//! re-opened by its waiter.

mod bell;
mod breaks;
mod changes;
mod conn;
mod exec;
mod place;

/// Opens the file a `sqlite://` URL names.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    SqliteBackend::open(place::resolve(Some(&url.path))?, cfg)
}

/// Opens the default file (no URL), in a directory made if missing.
pub fn open_default(cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    SqliteBackend::open(place::resolve(None)?, cfg)
}

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use super::sql::{self, Dialect, Exec, Leases, Val};
use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use crate::error::{fail, NOT_HELD, UNAVAILABLE};
use bell::Bell;
use conn::{
    add_state_column, create_table, db_error, has_moved, is_no_state, is_no_table, open_file,
};
use place::{file_id, FileId};

const DIALECT: Dialect = Dialect {
    now_us: "dlock_now_us()",
    insert_ignore: "INSERT OR IGNORE",
    insert_tail: "",
    quote: '`',
    name_type: "TEXT",
    token_type: "TEXT",
    text_type: |_| "TEXT".to_string(),
    int_type: "INTEGER",
    state_type: "TEXT",
    table_options: " WITHOUT ROWID",
};

pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    /// Device and inode of the file `conn` has open.
    file: Option<FileId>,
    /// Set when a re-open found another file at the path: a lease this
    /// process took is in the old one, and gone.
    replaced: bool,
    leases: Leases,
    timeout: Duration,
    /// The database file's permission bits when it was opened, for the wake-up files.
    mode: Option<u32>,
    /// The name this process waited for, if any: see `acquire`.
    waited: Option<String>,
    /// When a busy attempt last passed a wake-up on to a waiter ahead of it, to whom.
    passed: super::engine::PassOn,
    /// For the break listener's connection of its own.
    cfg: Config,
}

impl SqliteBackend {
    /// Opens the file at `path`. A file that does not exist yet is created
    /// by the first acquisition, not here: until then requests read an
    /// empty database in memory, so that `status` creates nothing.
    fn open(path: PathBuf, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
        let loc = Location {
            backend: "sqlite",
            location: path.display().to_string(),
        };
        Ok((Box::new(SqliteBackend::open_raw(path, cfg)?), loc))
    }

    fn open_raw(path: PathBuf, cfg: &Config) -> Result<SqliteBackend> {
        bell::report_bus_errors(&path);
        let table = sql::table_name(&cfg.prefix);
        let (conn, mode, file) = match file_id(&path) {
            Some(_) => open_file(&path, &table, cfg.timeout)?,
            None => {
                place::check_dir(&path)?;
                (conn::in_memory(&table, cfg.timeout)?, None, None)
            }
        };
        Ok(SqliteBackend {
            conn,
            leases: Leases::new(&DIALECT, &table),
            path,
            file,
            replaced: false,
            timeout: cfg.timeout,
            mode,
            waited: None,
            passed: Default::default(),
            cfg: cfg.clone(),
        })
    }

    /// Creates the file if it does not exist yet (see [`SqliteBackend::open`]).
    fn create(&mut self) -> Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        Ok(())
    }

    /// Whether the path no longer names the file that is open.
    fn moved(&self) -> bool {
        has_moved(&self.conn) || file_id(&self.path) != self.file
    }

    fn reopen(&mut self) -> Result<()> {
        let (conn, mode, file) = open_file(&self.path, &self.leases.table, self.timeout)?;
        // Nothing was held in the stand-in for a file that did not exist.
        self.replaced |= self.file.is_some() && file != self.file;
        (self.conn, self.mode, self.file) = (conn, mode, file);
        Ok(())
    }

    /// Runs `op` on the file the path names, again if that was deleted or
    /// replaced meanwhile, so that no answer comes from a file that is gone.
    fn on_current<T>(&mut self, mut op: impl FnMut(&mut Self) -> Result<T>) -> Result<T> {
        for _ in 0..3 {
            if self.moved() {
                self.reopen()?;
            }
            let r = op(self);
            if !self.moved() {
                return r;
            }
        }
        Err(fail(
            UNAVAILABLE,
            format!(
                "SQLite file {} was deleted or replaced three times during one request: \
                 stop whatever removes it, or give a --url",
                self.path.display()
            ),
        ))
    }

    /// Fails once the file that held this process's lease is gone from the path.
    fn same_file(&self) -> Result<()> {
        if self.replaced || self.moved() {
            return Err(fail(
                NOT_HELD,
                format!(
                    "SQLite file {} was deleted or replaced while the lock was held, so the \
                     lease in it is gone: keep tmp cleaners away from it, or give a --url",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    fn wake_dir(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-wake");
        PathBuf::from(p)
    }

    fn wake_file(&self, name: &str) -> PathBuf {
        self.wake_dir()
            .join(sql::wake_key(&self.leases.table, name))
    }

    /// The bell of `name`, created with the permissions of the database
    /// file (and its directory with those of the database's directory), as
    /// SQLite does for its -wal and -shm files, so that a file shared by
    /// several users works.
    fn bell(&self, name: &str) -> std::io::Result<Bell> {
        self.bell_at(&self.wake_file(name))
    }

    /// The bell at `file` in the wake-up directory, made as [`Self::bell`] says.
    fn bell_at(&self, file: &Path) -> std::io::Result<Bell> {
        // Usually the bell exists: open it without creating anything.
        match Bell::open(file, self.mode) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => return r,
        }
        let dir = self.wake_dir();
        if !dir.is_dir() {
            let dir_mode = self
                .path
                .parent()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0o700, |m| m.mode() & 0o7777);
            match DirBuilder::new().mode(dir_mode).create(&dir) {
                Ok(()) => {
                    let _ = std::fs::set_permissions(&dir, Permissions::from_mode(dir_mode));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let file_mode = self
            .mode
            .unwrap_or_else(|| std::fs::metadata(&self.path).map_or(0o600, |m| m.mode() & 0o666));
        Bell::create(file, file_mode)
    }

    /// Wakes one waiter of `name`; best effort, since a waiter also wakes at the TTL.
    fn wake(&self, name: &str) {
        if let Ok(b) = self.bell(name) {
            b.ring();
        }
    }

    /// A busy attempt found that a waiter ahead of it in the queue could go
    /// now (ticket `owed`): the wake-up that brought us here belonged to it.
    /// Damped (`engine::PassOn`), so that live waiters cannot wake each
    /// other in a loop while a dead waiter's place lapses; the one whose turn
    /// it is also tries at its next refresh.
    fn pass_on(&mut self, name: &str, owed: u64) {
        if self.passed.pass(owed) {
            self.wake(name);
        }
    }
}

impl Backend for SqliteBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        self.create()?;
        let r = self.on_current(|b| b.leases.acquire(&mut b.db_ref(), req));
        match &r {
            Ok((Acquire::Acquired(_), fx)) => {
                // The lease is in the file open now.
                self.replaced = false;
                // Room left for another (a reader, a free slot): wake one more.
                if fx.wake {
                    self.wake(req.name);
                }
            }
            Ok((_, fx)) if fx.wake => self.pass_on(req.name, fx.owed),
            // This attempt may be the one a release woke us for: with the
            // lock perhaps free, hand the wake-up to the next sleeper.
            Err(_) if self.waited.as_deref() == Some(req.name) => self.wake(req.name),
            _ => {}
        }
        r.map(|(a, _)| a)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        self.same_file()?;
        let r = self.leases.renew(&mut self.db_ref(), name, token, lease);
        let r = r.map(|(check, _)| check);
        // Replaced during the renewal: it may have gone to the old file.
        self.same_file()?;
        r
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        self.same_file()?;
        let (r, fx) = self.leases.release(&mut self.db_ref(), name, token)?;
        self.same_file()?;
        if fx.wake {
            self.wake(name);
        }
        Ok(r)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        let (r, fx) = self.on_current(|b| b.leases.force_release(&mut b.db_ref(), name, only))?;
        if fx.wake {
            self.wake(name);
        }
        if !r.is_empty() {
            breaks::ring(&breaks::file_of(self, name));
        }
        Ok(r)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        self.on_current(|b| b.leases.status(&mut b.db_ref(), names))
    }

    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        self.on_current(|b| b.leases.broken_by(&mut b.db_ref(), name, token_id))
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        self.waited = Some(name.to_string());
        let bell = self.bell(name).ok();
        Ok(Box::new(SqliteWaiter {
            seen: bell.as_ref().map_or(0, Bell::value),
            bell,
            at: self.wake_file(name),
            backoff: sql::quiet_backoff(),
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.reopen()
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout.max(Duration::from_millis(1));
        let _ = self.conn.busy_timeout(self.timeout);
        Ok(())
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        breaks::watch(self, name, token, on_break);
    }

    fn changes(&mut self, _: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        Ok(Some(Box::new(changes::subscribe(&self.path)?)))
    }
}

struct SqliteWaiter {
    /// None when the wake-up file cannot be used; then the waiter backs off.
    bell: Option<Bell>,
    /// The bell's path: releases ring whatever file is there now.
    at: PathBuf,
    seen: u32,
    backoff: crate::backoff::Backoff,
}

impl Waiter for SqliteWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let now = file_id(&self.at);
        if now.is_some() && now != self.bell.as_ref().map(|b| b.id) {
            // Deleted and made anew (or made at last): releases ring the new
            // file. Return at once, so that the caller tries before sleeping
            // on it and no release in between is missed.
            self.bell = Bell::open(&self.at, None).ok();
            self.seen = self.bell.as_ref().map_or(0, Bell::value);
            return Ok(());
        }
        match &self.bell {
            Some(b) => {
                b.wait(self.seen, timeout);
                self.seen = b.value();
            }
            None => std::thread::sleep(self.backoff.next_within(timeout)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
