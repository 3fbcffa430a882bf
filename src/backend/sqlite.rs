//! Embedded SQLite backend, the default: one file guards the locks of one host.
//!
//! URL: `sqlite:///abs/path/locks.db`, `sqlite://relative/path.db` (from the
//! current directory) or `sqlite://` for the default file, which is
//! `$XDG_STATE_HOME/dlock/locks.db`, else `$HOME/.local/state/dlock/locks.db`,
//! else `/tmp/dlock-$UID/locks.db`. The path is percent-decoded; there are no
//! parameters.
//!
//! The lease logic is in `sql.rs`; the clock is this host's wall clock, read
//! inside each `BEGIN IMMEDIATE` transaction. WAL mode and a busy timeout let
//! many processes share the file; a process killed at any point leaves either
//! its last transaction or nothing, and every lease carries its expiry.
//! Every `dlock` is a new process, so opening is kept cheap: a file whose
//! header already says WAL gets only the per-connection pragmas, and the
//! table is created when a statement finds it missing (another prefix).
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

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rusqlite::config::DbConfig;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::sql::{self, Backoff, Dialect, Exec, Leases, Val};
use super::{Acquire, Backend, Check, Config, Location, LockInfo, Request, Waiter};
use crate::error::{fail, INTERNAL, UNAVAILABLE, USAGE};

const DIALECT: Dialect = Dialect {
    now_us: "dlock_now_us()",
    insert_ignore: "INSERT OR IGNORE",
};

pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    leases: Leases,
    timeout: Duration,
    /// The database file's permission bits when it was opened, for the wake-up files.
    mode: Option<u32>,
    /// The name this process waited for, if any: see `acquire`.
    waited: Option<String>,
}

/// The database file a `sqlite://` URL (or no URL) names, made absolute.
pub fn resolve(url: Option<&str>) -> Result<PathBuf> {
    let rest = match url {
        None => "",
        Some(u) => u.strip_prefix("sqlite://").unwrap_or(u),
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(fail(
            USAGE,
            "sqlite URLs take no parameters: use sqlite:///path/to/locks.db (write '?' as %3F)",
        ));
    }
    if rest.is_empty() {
        return default_path();
    }
    let p = PathBuf::from(std::ffi::OsString::from_vec(percent_decode(rest)));
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| {
        fail(
            USAGE,
            format!("cannot resolve the relative path in the sqlite URL: {e}"),
        )
    })?;
    Ok(cwd.join(p))
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if let (b'%', Some(Some(hi)), Some(Some(lo))) = (
            b[i],
            b.get(i + 1).map(|&c| hex(c)),
            b.get(i + 2).map(|&c| hex(c)),
        ) {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The first of the default locations whose directory can be created.
fn default_path() -> Result<PathBuf> {
    let abs = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let mut tried = Vec::new();
    for dir in [
        abs("XDG_STATE_HOME").map(|d| d.join("dlock")),
        abs("HOME").map(|d| d.join(".local/state/dlock")),
    ]
    .into_iter()
    .flatten()
    {
        // One stat in the usual case instead of mkdir, EEXIST and a stat.
        if dir.is_dir() {
            return Ok(dir.join("locks.db"));
        }
        match DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir.join("locks.db")),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    let uid = nix::unistd::getuid();
    let dir = PathBuf::from(format!("/tmp/dlock-{uid}"));
    let _ = DirBuilder::new().mode(0o700).create(&dir);
    // /tmp is shared: use the directory only if it is really ours and private.
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == uid.as_raw() && m.mode() & 0o022 == 0 => {
            Ok(dir.join("locks.db"))
        }
        Ok(_) => Err(fail(
            UNAVAILABLE,
            format!(
                "{} is not a private directory of this user; remove it or set HOME or XDG_STATE_HOME",
                dir.display()
            ),
        )),
        Err(e) => {
            tried.push(format!("{}: {e}", dir.display()));
            Err(fail(
                UNAVAILABLE,
                format!("no place for the default lock file ({})", tried.join("; ")),
            ))
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (
            name TEXT NOT NULL PRIMARY KEY,
            token TEXT,
            fence INTEGER NOT NULL DEFAULT 0,
            holder_host TEXT NOT NULL DEFAULT '',
            holder_pid INTEGER NOT NULL DEFAULT 0,
            holder_user TEXT NOT NULL DEFAULT '',
            holder_command TEXT NOT NULL DEFAULT '',
            acquired_us INTEGER NOT NULL DEFAULT 0,
            expires_us INTEGER NOT NULL DEFAULT 0,
            version INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"
    )
}

/// Whether the file at `path` is an SQLite database already in WAL mode
/// (header bytes 18 and 19, the file format versions, are 2), and its
/// permission bits. Anything else (no file, an empty or foreign file) goes
/// through the full set-up, which also reports unusable files.
fn wal_header(path: &Path) -> (bool, Option<u32>) {
    let Ok(mut f) = File::open(path) else {
        return (false, None);
    };
    let mode = f.metadata().ok().map(|m| m.mode() & 0o666);
    let mut h = [0u8; 20];
    let wal = f.read_exact(&mut h).is_ok()
        && h.starts_with(b"SQLite format 3\0")
        && h[18] == 2
        && h[19] == 2;
    // Closed here, before SQLite opens the file: closing any descriptor of
    // a file drops the process's fcntl locks on it.
    drop(f);
    (wal, mode)
}

impl SqliteBackend {
    pub fn open(url: Option<&str>, cfg: &Config) -> Result<(SqliteBackend, Location)> {
        let path = resolve(url)?;
        let (ready, mode) = wal_header(&path);
        if let Some(dir) = path.parent().filter(|_| !ready) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    fail(
                        UNAVAILABLE,
                        format!("cannot create the directory {}: {e}", dir.display()),
                    )
                })?;
        }
        let table = sql::table_name(&cfg.prefix);
        let conn = connect(&path, &table, cfg.timeout, !ready)?;
        let loc = Location {
            backend: "sqlite",
            location: path.display().to_string(),
        };
        Ok((
            SqliteBackend {
                conn,
                leases: Leases::new(&DIALECT, &table),
                path,
                timeout: cfg.timeout,
                mode,
                waited: None,
            },
            loc,
        ))
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
        let file = self.wake_file(name);
        // Usually the bell exists: open it without creating anything.
        match Bell::open(&file, self.mode) {
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
        Bell::create(&file, file_mode)
    }

    /// Wakes one waiter of `name`; best effort, since a waiter also wakes at the TTL.
    fn wake(&self, name: &str) {
        if let Ok(b) = self.bell(name) {
            b.ring();
        }
    }
}

/// A 32-bit counter in a file mapped shared between processes, with a futex
/// on it: futexes on shared file mappings work across processes.
struct Bell {
    ptr: std::ptr::NonNull<AtomicU32>,
    /// False for another user's file that we may only read: we can wait on
    /// it but not ring it.
    writable: bool,
}

// SAFETY: the mapping is owned by the Bell and only accessed atomically.
unsafe impl Send for Bell {}

impl Bell {
    /// Opens an existing bell; with `mode`, gives it those permission bits
    /// if it lacks them and is ours (a database file made shared later).
    fn open(path: &Path, mode: Option<u32>) -> std::io::Result<Bell> {
        let (file, writable) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => (f, true),
            // Another user's file that we may only read: enough to wait on.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                (File::open(path)?, false)
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if let Some(mode) = mode.filter(|&m| writable && meta.mode() & 0o666 != m) {
            let _ = file.set_permissions(Permissions::from_mode(mode));
        }
        if meta.len() < 4 {
            // A bell being created right now by another process.
            if !writable {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            // Only ever grown: shrinking a mapped file would fault its users.
            file.set_len(4)?;
        }
        Bell::map(&file, writable)
    }

    /// Creates the bell with `mode` (whatever the umask), or opens it if
    /// another process just did.
    fn create(path: &Path, mode: u32) -> std::io::Result<Bell> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Bell::open(path, Some(mode))
            }
            Err(e) => return Err(e),
        };
        let _ = file.set_permissions(Permissions::from_mode(mode));
        file.set_len(4)?;
        Bell::map(&file, true)
    }

    fn map(file: &File, writable: bool) -> std::io::Result<Bell> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps 4 bytes of a file at least 4 bytes long; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bell {
            ptr: std::ptr::NonNull::new(p.cast()).expect("mmap never returns null here"),
            writable,
        })
    }

    fn counter(&self) -> &AtomicU32 {
        // SAFETY: a live, 4-byte-aligned (page-aligned) mapping.
        unsafe { self.ptr.as_ref() }
    }

    fn value(&self) -> u32 {
        self.counter().load(Ordering::SeqCst)
    }

    /// Bumps the counter and wakes one sleeper, if any; returns how many
    /// woke. One is enough (see the module comment), and waking all of
    /// them had each run an attempt that could only find the lock taken.
    fn ring(&self) -> i64 {
        if !self.writable {
            return 0;
        }
        self.counter().fetch_add(1, Ordering::SeqCst);
        // SAFETY: FUTEX_WAKE on our mapping; no other memory is touched.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ptr.as_ptr(),
                libc::FUTEX_WAKE,
                1,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0,
            )
        }
    }

    /// Sleeps while the counter still reads `seen`, at most `timeout`.
    fn wait(&self, seen: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT only reads our mapping; returns at once if it no longer reads `seen`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ptr.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0,
            );
        }
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what open mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), 4) };
    }
}

/// Opens the file and, with `set_up`, switches it to WAL and creates the
/// table. A fresh file opened by many processes at once can report "busy"
/// before any busy handler applies, so the whole setup is retried until the
/// timeout.
fn connect(path: &Path, table: &str, timeout: Duration, set_up: bool) -> Result<Connection> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match try_connect(path, table, timeout, set_up) {
            Ok(c) => return Ok(c),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(db_error(path, timeout, e)),
        }
    }
}

fn try_connect(
    path: &Path,
    table: &str,
    timeout: Duration,
    set_up: bool,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(timeout)?;
    // Closing the last connection would checkpoint under an exclusive lock,
    // making the next holder wait in the busy handler; commits checkpoint instead.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.create_scalar_function("dlock_now_us", 0, FunctionFlags::SQLITE_UTF8, |_| {
        Ok(now_us())
    })?;
    // Per connection, so set by every process. In WAL mode NORMAL loses no
    // committed transaction when a process dies, only when the host does, and
    // then every holder died with it. (`synchronous` loads the schema: one
    // read transaction that the first statement would need anyway.)
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=100")?;
    if set_up {
        // WAL mode is stored in the file: this runs once per file (or until
        // the header shows it), not once per process.
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        }
        conn.execute_batch(&create_table(table))?;
    }
    Ok(conn)
}

/// The error of a statement naming a table that does not exist.
fn is_no_table(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(m))
        if f.code == ErrorCode::Unknown && m.starts_with("no such table"))
}

fn db_error(path: &Path, timeout: Duration, e: rusqlite::Error) -> anyhow::Error {
    let at = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => fail(
            UNAVAILABLE,
            format!(
                "SQLite file {at} stayed busy for {}: another process kept a transaction open (a stopped dlock?)",
                crate::output::format_duration(timeout)
            ),
        ),
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport,
        ) => fail(UNAVAILABLE, format!("cannot use SQLite file {at}: {e}")),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => fail(
            UNAVAILABLE,
            format!("{at} is not a usable SQLite database: {e}"),
        ),
        _ => fail(INTERNAL, format!("unexpected error from SQLite file {at}: {e}")),
    }
}

struct Db<'a> {
    conn: &'a Connection,
    path: &'a Path,
    table: &'a str,
    timeout: Duration,
}

impl Db<'_> {
    fn err(&self, e: rusqlite::Error) -> anyhow::Error {
        db_error(self.path, self.timeout, e)
    }

    /// Prepares `sql`, first creating the table if it is missing (a file set
    /// up by another prefix); inside a transaction, the table comes with it.
    fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        match self.conn.prepare_cached(sql) {
            Err(e) if is_no_table(&e) => {
                self.conn.execute_batch(&create_table(self.table))?;
                self.conn.prepare_cached(sql)
            }
            r => r,
        }
    }
}

fn to_value(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Int(i) => Value::Integer(*i),
        Val::Text(s) => Value::Text(s.clone()),
    }
}

impl Exec for Db<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        let run = || -> rusqlite::Result<Vec<Vec<Val>>> {
            let mut st = self.prepare(sql)?;
            let n = st.column_count();
            let mut rows = st.query(rusqlite::params_from_iter(params.iter().map(to_value)))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut vals = Vec::with_capacity(n);
                for i in 0..n {
                    vals.push(match r.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(i) => Val::Int(i),
                        ValueRef::Real(f) => Val::Int(f as i64),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Val::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                out.push(vals);
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e))
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let mut st = self.prepare(sql).map_err(|e| self.err(e))?;
        st.execute(rusqlite::params_from_iter(params.iter().map(to_value)))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn begin(&mut self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Backend for SqliteBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let r = self.leases.acquire(&mut self.db_ref(), req);
        // This attempt may be the one a release woke us for: with the lock
        // perhaps free, hand the wake-up to the next sleeper.
        if r.is_err() && self.waited.as_deref() == Some(req.name) {
            self.wake(req.name);
        }
        r
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        self.leases.renew(&mut self.db_ref(), name, token, lease)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let r = self.leases.release(&mut self.db_ref(), name, token)?;
        if matches!(r, Check::Done) {
            self.wake(name);
        }
        Ok(r)
    }

    fn force_release(&mut self, name: &str) -> Result<Option<LockInfo>> {
        let r = self.leases.force_release(&mut self.db_ref(), name)?;
        if r.is_some() {
            self.wake(name);
        }
        Ok(r)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        self.leases.status(&mut self.db_ref(), names)
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        self.waited = Some(name.to_string());
        let bell = self.bell(name).ok();
        Ok(Box::new(SqliteWaiter {
            seen: bell.as_ref().map_or(0, Bell::value),
            bell,
            backoff: Backoff::new(),
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.conn = connect(&self.path, &self.leases.table, self.timeout, false)?;
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout.max(Duration::from_millis(1));
        let _ = self.conn.busy_timeout(self.timeout);
        Ok(())
    }
}

impl SqliteBackend {
    fn db_ref(&self) -> Db<'_> {
        Db {
            conn: &self.conn,
            path: &self.path,
            table: &self.leases.table,
            timeout: self.timeout,
        }
    }
}

struct SqliteWaiter {
    /// None when the wake-up file cannot be used; then the waiter backs off.
    bell: Option<Bell>,
    seen: u32,
    backoff: Backoff,
}

impl Waiter for SqliteWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        match &self.bell {
            Some(b) => {
                b.wait(self.seen, timeout);
                self.seen = b.value();
            }
            None => self.backoff.sleep(timeout),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::holder::Holder;

    #[test]
    fn bells_wake_sleepers_and_remember_rings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let a = Bell::create(&path, 0o600).unwrap();
        let b = Bell::open(&path, None).unwrap();
        // A ring between reading the value and waiting is not lost.
        let seen = b.value();
        a.ring();
        let t = Instant::now();
        b.wait(seen, Duration::from_secs(20));
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_ne!(b.value(), seen);

        let seen = b.value();
        let sleeper = std::thread::spawn(move || {
            let t = Instant::now();
            b.wait(seen, Duration::from_secs(20));
            t.elapsed()
        });
        a.ring();
        assert!(sleeper.join().unwrap() < Duration::from_secs(10));

        let t = Instant::now();
        a.wait(a.value(), Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "a quiet bell times out"
        );
    }

    /// How many threads sleep on `bell`, without waking them: a requeue onto
    /// the same futex counts the sleepers it moves. Only while nobody rings.
    fn sleepers(bell: &Bell) -> i64 {
        // SAFETY: FUTEX_CMP_REQUEUE from our mapping onto itself: wakes none.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                bell.ptr.as_ptr(),
                libc::FUTEX_CMP_REQUEUE,
                0,
                i32::MAX as usize,
                bell.ptr.as_ptr(),
                bell.value(),
            )
        }
    }

    #[test]
    fn a_ring_wakes_one_sleeper_and_the_next_ring_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let ringer = Bell::create(&path, 0o600).unwrap();
        let seen = ringer.value();
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (tx, b) = (tx.clone(), Bell::open(&path, None).unwrap());
                std::thread::spawn(move || {
                    b.wait(seen, Duration::from_secs(60));
                    tx.send(i).unwrap();
                })
            })
            .collect();
        // Both asleep in the kernel (each through its own mapping), so a
        // wake-all would wake both.
        while sleepers(&ringer) < 2 {
            std::thread::yield_now();
        }
        assert_eq!(ringer.ring(), 1, "one release, one sleeper woken");
        let first = rx.recv().unwrap();
        assert_eq!(sleepers(&ringer), 1, "the other sleeps on");
        assert!(rx.try_recv().is_err());
        assert_eq!(ringer.ring(), 1);
        assert_ne!(rx.recv().unwrap(), first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ringer.ring(), 0, "nobody left to wake");
    }

    #[test]
    fn another_users_bell_is_waited_on_but_never_rung() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let owner = Bell::create(&path, 0o600).unwrap();
        let file = File::open(&path).unwrap();
        let reader = Bell::map(&file, false).unwrap();
        let seen = reader.value();
        // A read-only mapping would fault on the increment.
        assert_eq!(reader.ring(), 0);
        assert_eq!(owner.value(), seen);
        owner.ring();
        reader.wait(seen, Duration::from_secs(20));
        assert_ne!(reader.value(), seen);
    }

    /// Runs a statement on another connection just before the first write,
    /// as a concurrent process would (no BEGIN IMMEDIATE, so the race is possible).
    struct Racy<'a> {
        inner: Db<'a>,
        other: Option<(&'a Connection, String)>,
    }

    impl Exec for Racy<'_> {
        fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
            self.inner.query(sql, params)
        }

        fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
            if let Some((c, other)) = self.other.take() {
                c.execute_batch(&other).unwrap();
            }
            self.inner.execute(sql, params)
        }
    }

    #[test]
    fn a_write_that_loses_a_race_starts_again_from_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let t = Duration::from_secs(2);
        let (mine, theirs) = (
            try_connect(&path, "t_leases", t, true).unwrap(),
            try_connect(&path, "t_leases", t, true).unwrap(),
        );
        let leases = Leases::new(&DIALECT, "t_leases");
        let h = Holder::default();
        let req = Request {
            name: "n",
            token: "mine",
            lease: Duration::from_secs(10),
            holder: &h,
        };
        let db = |c| Db {
            conn: c,
            path: &path,
            table: "t_leases",
            timeout: t,
        };
        // Free row first, so that the race is an UPDATE on a known version.
        leases
            .acquire(
                &mut db(&theirs),
                &Request {
                    token: "old",
                    ..req
                },
            )
            .unwrap();
        leases.release(&mut db(&theirs), "n", "old").unwrap();
        let mut racy = Racy {
            inner: db(&mine),
            other: Some((
                &theirs,
                "UPDATE t_leases SET token = 'theirs', expires_us = dlock_now_us() + 10000000, \
                 version = version + 1 WHERE name = 'n'"
                    .into(),
            )),
        };
        match leases.acquire(&mut racy, &req).unwrap() {
            Acquire::Busy(Some(info)) => assert_eq!(info.token_id, "theirs"),
            other => panic!("the lost race must end busy, got {other:?}"),
        }
        // Their write stands and ours never landed: insert, release, theirs.
        let rows = db(&mine)
            .query("SELECT fence, version FROM t_leases", &[])
            .unwrap();
        assert_eq!(rows[0][1], Val::Int(3));
    }

    #[test]
    fn urls_name_files() {
        assert_eq!(
            resolve(Some("sqlite:///var/lib/dlock/locks.db")).unwrap(),
            PathBuf::from("/var/lib/dlock/locks.db")
        );
        assert_eq!(
            resolve(Some("sqlite:///a%20b/x%3Fy.db")).unwrap(),
            PathBuf::from("/a b/x?y.db")
        );
        let rel = resolve(Some("sqlite://locks/here.db")).unwrap();
        assert!(
            rel.is_absolute() && rel.ends_with("locks/here.db"),
            "{rel:?}"
        );
        assert!(resolve(Some("sqlite:///x.db?mode=ro")).is_err());
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }
}
