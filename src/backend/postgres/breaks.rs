//! A holder's listener for `release --force`: LISTEN on the name's break
//! channel, on a connection of its own, opened only once the command has run
//! for a moment (`notice::LAZY`). The force sends the broken token's id and
//! its breaker there as it writes the row (`sql::Leases::notifying`).

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::{lock, PgBackend};
use crate::backend::{notice, sql, Backend, Config, Url};
use crate::names::token_id;

/// Calls `on_break` once if `token`'s lease on `name` is broken (or found
/// gone once listening); returns at once.
pub(super) fn watch(
    url: &Url,
    cfg: &Config,
    name: &str,
    token: &str,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    let (url, cfg, name, id) = (url.clone(), cfg.clone(), name.to_string(), token_id(token));
    notice::listen_lazily(move || listen(&url, &cfg, &name, &id).map(Some), on_break);
}

/// Listens, checks that the lease is still `id`'s, then waits for a notice
/// naming it; the reason to stop, or an error when the connection failed.
fn listen(url: &Url, cfg: &Config, name: &str, id: &str) -> Result<String> {
    let mut b = PgBackend::open(url, cfg)?;
    {
        let mut db = lock(&b.db);
        let chan = sql::break_channel(&db.scope(), name);
        db.simple(&format!("LISTEN {chan}"), None)
            .map_err(|_| anyhow!("LISTEN failed"))?;
    }
    // A break before the LISTEN took effect sent its notice to nobody.
    let held = b.status(Some(&[name.to_string()]))?;
    if !held.iter().any(|i| i.token_id == id) {
        return Ok(notice::gone(name));
    }
    notice::listening(name);
    loop {
        let mut guard = lock(&b.db);
        let db = &mut *guard;
        let note = match db.link.as_mut() {
            Some(l) if !l.is_closed() => l.next_note(&db.rt, Duration::from_secs(3600)),
            _ => return Err(anyhow!("the break listener's connection closed")),
        };
        if let Some((who, by)) = note.as_deref().and_then(|n| n.split_once('\n')) {
            if who == id {
                return Ok(notice::broken(name, by));
            }
        }
    }
}
