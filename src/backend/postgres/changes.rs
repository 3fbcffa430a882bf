//! `dlock watch` on PostgreSQL, for named locks: LISTEN, on a connection
//! of its own, on each name's wake channel (every release, and a grant
//! that leaves room, notify it: see `wake.rs`) and break channel (`release
//! --force`). Grants that leave no room and queue changes send nothing, and
//! channels are per name (no pattern): those, and a watch of every lock,
//! are left to the watcher's poll.

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::{lock, PgBackend};
use crate::backend::notice::{self, Notices};
use crate::backend::{sql, Config, Url};

/// Listens; returns once the server has taken the LISTENs, so that a read
/// after this misses no notice.
pub(super) fn subscribe(url: &Url, cfg: &Config, names: &[String]) -> Result<Notices> {
    let b = PgBackend::open(url, cfg)?;
    {
        let mut db = lock(&b.db);
        let scope = db.scope();
        let listen: Vec<String> = names
            .iter()
            .flat_map(|n| [db.channel(n), sql::break_channel(&scope, n)])
            .map(|c| format!("LISTEN {c}"))
            .collect();
        db.simple(&listen.join("; "), None)
            .map_err(|_| anyhow!("LISTEN failed"))?;
    }
    let (tx, notices) = notice::notices();
    notice::spawn_notices("pg-watch", move |ready| {
        let _ = ready.send(Ok(()));
        loop {
            let mut guard = lock(&b.db);
            let db = &mut *guard;
            let heard = match db.link.as_mut() {
                Some(l) if !l.is_closed() => l.next_note(&db.rt, Duration::from_secs(1)),
                _ => return, // the sender goes: the watcher polls
            };
            if heard.is_some() && tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(notices)
}
