//! `dlock watch` on SQLite: in WAL mode every committed change is written
//! to the database's `-wal` file (and a checkpoint copies it into the
//! database), so an inotify watch of their directory for writes to those
//! two files hears of every change, with no cost to the writers. A write
//! about another name is a spurious notice: the watcher reads and finds
//! nothing new.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::backend::notice::{self, Notices};

/// A commit writes the `-wal` file (which inotify sees) and then publishes
/// it in the `-shm` index, a memory map (which it does not): a read at the
/// first notice may come between the two and see nothing new. So a notice is
/// repeated this long after the last write, when the commit has long been
/// published (soonest last).
const SECOND_LOOKS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(15)];

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
        let ours = |n: &Option<OsString>| n.as_ref().is_some_and(|n| *n == file || *n == wal);
        // Second looks still due, soonest last.
        let mut looks: Vec<Duration> = Vec::new();
        loop {
            let wait = looks.last().map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(*d).unwrap_or(PollTimeout::MAX)
            });
            let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                // No write since: the commit is surely visible now.
                Ok(0) => {
                    looks.pop();
                    if tx.send(()).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return, // the sender goes: the watcher polls
            }
            let Ok(events) = ino.read_events() else {
                return;
            };
            if events.iter().any(|e| ours(&e.name)) {
                if tx.send(()).is_err() {
                    return;
                }
                looks = SECOND_LOOKS.to_vec();
            }
        }
    })?;
    Ok(notices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// One write, and nothing after it: besides the notices of the write
    /// itself, one comes later, when its commit is surely published.
    #[test]
    fn a_write_is_told_again_once_its_commit_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let notices = subscribe(&dir.path().join("locks.db")).unwrap();
        std::fs::write(dir.path().join("locks.db-wal"), b"frames").unwrap();
        let written = Instant::now();
        let mut last = None;
        while notices.heard(Duration::from_millis(500)) {
            last = Some(written.elapsed());
        }
        let last = last.expect("no notice of the write");
        assert!(
            last >= Duration::from_millis(15),
            "no later look: the last notice came {last:?} after the write"
        );
    }
}
