//! Opening the SQLite file, and what its errors mean.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rusqlite::config::DbConfig;
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::place::{file_id, FileId};
use crate::backend::sql;
use crate::backoff::Backoff;
use crate::error::{fail, INTERNAL, UNAVAILABLE};

pub fn now_us() -> i64 {
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

pub fn create_table(table: &str) -> String {
    sql::create_table(&super::DIALECT, table)
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

/// Opens the file at `path`, setting it up unless its header says WAL;
/// returns the connection, the file's permission bits and which file it is.
pub fn open_file(
    path: &Path,
    table: &str,
    timeout: Duration,
) -> Result<(Connection, Option<u32>, Option<FileId>)> {
    let (ready, mode) = wal_header(path);
    super::place::check_dir(path)?;
    let conn = connect(path, table, timeout, !ready)?;
    Ok((conn, mode, file_id(path)))
}

/// An empty database in memory with the lease table: what a file that
/// does not exist holds.
pub fn in_memory(table: &str, timeout: Duration) -> Result<Connection> {
    let path = Path::new(":memory:");
    try_connect(path, table, timeout, true).map_err(|e| db_error(path, timeout, e))
}

/// SQLite's own check that the path still names the file it has open
/// (SQLITE_FCNTL_HAS_MOVED: the file was unlinked, or another renamed over it).
pub fn has_moved(conn: &Connection) -> bool {
    let mut moved: std::ffi::c_int = 0;
    // SAFETY: a live handle, the schema "main", and the int pointer that opcode writes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_HAS_MOVED,
            (&mut moved as *mut std::ffi::c_int).cast(),
        )
    };
    rc == rusqlite::ffi::SQLITE_OK && moved != 0
}

/// Opens the file and, with `set_up`, switches it to WAL and creates the
/// table. A fresh file opened by many processes at once can report "busy"
/// before any busy handler applies, so the whole setup is retried until the
/// timeout.
pub fn connect(path: &Path, table: &str, timeout: Duration, set_up: bool) -> Result<Connection> {
    let deadline = Instant::now() + timeout;
    let mut pause =
        Backoff::new(Duration::from_millis(1), 2, Duration::from_millis(50)).until(deadline);
    loop {
        match try_connect(path, table, timeout, set_up) {
            Ok(c) => return Ok(c),
            Err(e) if is_busy(&e) && pause.sleep() => {}
            Err(e) => return Err(db_error(path, timeout, e)),
        }
    }
}

pub fn try_connect(
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

/// SQLite's message for an error in a statement (prepare reports some with
/// their offset in the SQL, a variant of their own).
fn sql_message(e: &rusqlite::Error) -> Option<&str> {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(m)) if f.code == ErrorCode::Unknown => Some(m),
        rusqlite::Error::SqlInputError { error, msg, .. } if error.code == ErrorCode::Unknown => {
            Some(msg)
        }
        _ => None,
    }
}

/// The error of a statement naming a table that does not exist.
pub fn is_no_table(e: &rusqlite::Error) -> bool {
    sql_message(e).is_some_and(|m| m.starts_with("no such table"))
}

/// The error of a statement on a table made before the `state` column.
pub fn is_no_state(e: &rusqlite::Error) -> bool {
    sql_message(e).is_some_and(|m| {
        m.starts_with("no such column: state") || m.starts_with("no such column: l.state")
    })
}

/// Adds the `state` column to a table made by an older dlock; another
/// process that just did the same leaves nothing to do.
pub fn add_state_column(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    match conn.execute_batch(&sql::add_state_column(&super::DIALECT, table)) {
        Err(e) if sql_message(&e).is_some_and(|m| m.starts_with("duplicate column name")) => Ok(()),
        r => r,
    }
}

/// A failed SQLite transaction changed nothing (it is rolled back), so
/// every one of these errors is a definite answer, never an unanswered request.
pub fn db_error(path: &Path, timeout: Duration, e: rusqlite::Error) -> anyhow::Error {
    crate::error::mark_unsent(db_failure(path, timeout, e))
}

fn db_failure(path: &Path, timeout: Duration, e: rusqlite::Error) -> anyhow::Error {
    let at = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => fail(
            UNAVAILABLE,
            format!(
                "SQLite file {at} stayed busy for {}: another process kept a transaction open (a stopped dlock?)",
                crate::duration::format(timeout)
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
