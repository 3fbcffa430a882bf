//! An SQLite lock file of its own for one test, or a prefix of its own in the
//! user's default file.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Server;

pub struct Sqlite {
    pub dir: tempfile::TempDir,
}

impl Sqlite {
    pub fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("locks.db")
    }
}

impl Default for Sqlite {
    fn default() -> Self {
        Self::new()
    }
}

impl Server for Sqlite {
    fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }
}

/// A prefix of its own in the default SQLite file, which a test cannot
/// redirect (it depends only on the user, not on HOME): whatever was stored
/// under it (the table and the wake files of its names) is removed on drop,
/// so that tests leave nothing in the user's real file.
pub struct DefaultPrefix {
    pub prefix: String,
}

impl DefaultPrefix {
    pub fn new() -> DefaultPrefix {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Lowercase letters and digits only: the table is then `<prefix>_leases`.
        DefaultPrefix {
            prefix: format!("d{}x{n}", std::process::id()),
        }
    }

    /// `program` with no DLOCK_* but this prefix: the default backend.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("DLOCK_") {
                c.env_remove(k);
            }
        }
        c.env("DLOCK_PREFIX", &self.prefix);
        c
    }

    /// The default file, as dlock names it.
    pub fn file(&self) -> Option<PathBuf> {
        let o = self
            .command(super::dlock_bin())
            .args(["status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["location"].as_str().map(PathBuf::from)
    }
}

impl Default for DefaultPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DefaultPrefix {
    fn drop(&mut self) {
        let Some(db) = self.file() else { return };
        let table = format!("{}_leases", self.prefix);
        let Ok(conn) = rusqlite::Connection::open(&db) else {
            return;
        };
        let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
        let names: Vec<String> = conn
            .prepare(&format!("SELECT name FROM \"{table}\""))
            .and_then(|mut st| {
                st.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .unwrap_or_default();
        let mut wake = db.into_os_string();
        wake.push("-wake");
        for name in names {
            let _ = std::fs::remove_file(Path::new(&wake).join(wake_key(&table, &name)));
        }
        let _ = conn.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""));
    }
}

/// The name of a lock's wake file, as src/backend/sql/mod.rs computes it
/// (FNV-1a, 128 bits, of "table\0name").
fn wake_key(table: &str, name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in format!("{table}\0{name}").bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}
