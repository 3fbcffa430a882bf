//! `dlock watch` on PostgreSQL: LISTEN, on a connection of its own, on the
//! table's changes channel (every statement that grants, releases, breaks
//! or queues announces the name there as it writes: `sql::Leases::announcing`)
//! and, for named locks, on each name's break channel (`release --force`,
//! whose notice names the broken token's id and the breaker, kept for
//! `broken_by`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::{lock, PgBackend};
use crate::backend::notice::{self, Notices};
use crate::backend::{sql, Config, Url};

/// Who broke which token id (the last few), from the break notices heard.
pub(super) type Breaks = Arc<Mutex<HashMap<String, String>>>;

/// Break notices kept: a watcher asks about a break right after its notice.
const KEPT: usize = 64;

/// Listens; returns once the server has taken the LISTENs, so that a read
/// after this misses no notice.
pub(super) fn subscribe(
    url: &Url,
    cfg: &Config,
    names: Option<&[String]>,
    breaks: Breaks,
) -> Result<Notices> {
    let b = PgBackend::open(url, cfg)?;
    {
        let mut db = lock(&b.db);
        let scope = db.scope();
        let named = names.unwrap_or_default().iter();
        let listen: Vec<String> = std::iter::once(sql::changes_channel(&scope))
            .chain(named.map(|n| sql::break_channel(&scope, n)))
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
            let Some(note) = heard else { continue };
            // Kept before the notice goes, so that the read it causes can ask.
            if let Some((id, by)) = note.split_once('\n') {
                let mut kept = breaks.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() >= KEPT {
                    kept.clear();
                }
                kept.insert(id.to_string(), by.to_string());
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(notices)
}

/// Who broke the lease of token id `id`, if a break notice said.
pub(super) fn broken_by(breaks: &Breaks, id: &str) -> Option<String> {
    let kept = breaks.lock().unwrap_or_else(|e| e.into_inner());
    kept.get(id).cloned()
}
