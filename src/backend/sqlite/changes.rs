//! `dlock watch` on SQLite: in WAL mode every committed change is written
//! to the database's `-wal` file (and a checkpoint copies it into the
//! database), so an inotify watch of their directory for writes to those
//! two files hears of every change, with no cost to the writers. A write
//! about another name is a spurious notice: the watcher reads and finds
//! nothing new.

use std::ffi::OsString;
use std::path::Path;

use anyhow::Result;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::backend::notice::{self, Notices};

/// Watches the database's directory; returns once the watch is set, so
/// that a read after this misses no change.
pub fn subscribe(db: &Path) -> Result<Notices> {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => ".".into(),
    };
    let file = db.file_name().map(OsString::from).unwrap_or_default();
    let mut wal = file.clone();
    wal.push("-wal");
    let (tx, notices) = notice::notices();
    notice::spawn_notices("sqlite-watch", move |ready| {
        let set = Inotify::init(InitFlags::IN_CLOEXEC).and_then(|ino| {
            let what = AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE;
            ino.add_watch(&dir, what).map(|_| ino)
        });
        let ino = match set {
            Ok(ino) => ino,
            Err(e) => {
                let why = format!("cannot watch {} ({e})", dir.display());
                return drop(ready.send(Err(anyhow::anyhow!(why))));
            }
        };
        let _ = ready.send(Ok(()));
        loop {
            let Ok(events) = ino.read_events() else {
                return; // the sender goes: the watcher polls
            };
            let ours = |n: &Option<OsString>| n.as_ref().is_some_and(|n| *n == file || *n == wal);
            if events.iter().any(|e| ours(&e.name)) && tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(notices)
}
