//! A holder's listener for `release --force`: a bell of its own per name
//! (`<key>.broken` beside the wake-up bells), which a force that broke a
//! live lease rings for every sleeper. The listener starts only once the
//! command has run for a moment (`notice::LAZY`), on a connection of its
//! own, and reads the row after each ring: a ring says "look", the row
//! says whose lease is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::bell::Bell;
use super::place::FileId;
use super::SqliteBackend;
use crate::backend::{notice, sql, Backend, Config};
use crate::names::token_id;

/// The bell that `release --force` rings for `name`'s broken holders.
pub(super) fn file_of(b: &SqliteBackend, name: &str) -> PathBuf {
    let key = sql::wake_key(&b.leases.table, name);
    b.wake_dir().join(format!("{key}.broken"))
}

/// Rings the break bell at `file` if a listener made it; without one, a
/// listener that starts later finds the lease gone by itself.
pub(super) fn ring(file: &Path) {
    if let Ok(b) = Bell::open(file, None) {
        b.ring_all();
    }
}

/// Calls `on_break` once when `token`'s lease on `name` in `b`'s file is
/// found gone after a ring (or once listening); returns at once.
pub(super) fn watch(
    b: &SqliteBackend,
    name: &str,
    token: &str,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    let (path, cfg) = (b.path.clone(), b.cfg.clone());
    let (name, id) = (name.to_string(), token_id(token));
    let Some(file) = b.file else { return };
    notice::listen_lazily(move || listen(&path, file, &cfg, &name, &id), on_break);
}

/// The reason to stop the command; None when the path no longer names the
/// holder's `file` (deleted or replaced: its renewal says so).
fn listen(path: &Path, file: FileId, cfg: &Config, name: &str, id: &str) -> Result<Option<String>> {
    let mut b = SqliteBackend::open_raw(path.to_path_buf(), cfg)?;
    let bell = b.bell_at(&file_of(&b, name))?;
    let mut seen = bell.value();
    let mut said = false;
    loop {
        // After reading the counter: a force that commits from here on rings
        // past `seen`, so the wait below returns at once.
        let held = b.status(Some(&[name.to_string()]))?;
        if b.file != Some(file) {
            return Ok(None);
        }
        if !held.iter().any(|i| i.token_id == id) {
            return Ok(Some(if said {
                format!("lock '{name}' was broken with --force")
            } else {
                notice::gone(name)
            }));
        }
        if !std::mem::replace(&mut said, true) {
            notice::listening(name);
        }
        while bell.value() == seen {
            bell.wait(seen, Duration::from_secs(3600));
        }
        seen = bell.value();
    }
}
