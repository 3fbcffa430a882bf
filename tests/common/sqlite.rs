//! An SQLite lock file of its own for one test.

use std::path::PathBuf;

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
