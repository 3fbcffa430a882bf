//! A holder's listener for `release --force`. MySQL has no notifications,
//! but a force can end another session: the listener, on a connection of
//! its own opened once the command has run for a moment (`notice::LAZY`),
//! holds the lock `dlock-<hash>-b<token id>` (`GET_LOCK`) and sleeps in the
//! server; a force that breaks that token's lease asks the server which
//! connection holds that lock (`IS_USED_LOCK`) and ends it (`KILL`). The
//! listener, seeing its connection die, reads the row: its lease gone means
//! it was broken. A user may end only its own connections unless granted
//! more (CONNECTION_ADMIN), so a force by another database user reaches the
//! holder only at its next renewal, as before.

use std::time::Duration;

use anyhow::{anyhow, Result};
use mysql::prelude::Queryable;

use super::{interpolate, lock, Db, MysqlBackend};
use crate::backend::sql::Val;
use crate::backend::{notice, Backend, Config, LockInfo, Url};
use crate::names::token_id;

/// How long each sleep in the server lasts; a connection that dies
/// silently is noticed by the next one's read timeout.
const NAP: Duration = Duration::from_secs(60);

impl Db {
    fn break_key(&self, name: &str, id: &str) -> String {
        format!("{}-b{id}", self.wake_key(name))
    }

    /// Ends the listening connection of each broken holder; best effort
    /// (not allowed, or nobody listens: the holder's renewal tells).
    pub(super) fn tell_broken(&mut self, name: &str, broken: &[LockInfo]) {
        for b in broken {
            let key = Val::Text(self.break_key(name, &b.token_id));
            let Ok(q) = interpolate("SELECT IS_USED_LOCK(?)", &[key]) else {
                continue;
            };
            let Ok(Some(Some(id))) = self.run(|c| c.query_first::<Option<u64>, _>(&q)) else {
                continue;
            };
            let _ = self.run(|c| c.query_drop(format!("KILL CONNECTION {id}")));
        }
    }
}

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

/// Whether `id` still holds `name`.
fn holds(b: &mut MysqlBackend, name: &str, id: &str) -> Result<bool> {
    let held = b.status(Some(&[name.to_string()]))?;
    Ok(held.iter().any(|i| i.token_id == id))
}

/// Takes the break lock, checks the lease, sleeps until the connection is
/// ended; the reason to stop, or an error to try again after. One
/// connection, four statements, then one a minute.
fn listen(url: &Url, cfg: &Config, name: &str, id: &str) -> Result<String> {
    let mut b = MysqlBackend::open(url, cfg)?;
    let take = interpolate(
        "SELECT GET_LOCK(?, 0)",
        &[Val::Text(lock(&b.db).break_key(name, id))],
    )?;
    if lock(&b.db).run(|c| c.query_first::<Option<i64>, _>(&take))? != Some(Some(1)) {
        return Err(anyhow!("the break lock is taken"));
    }
    // A force before the lock was taken found nobody to tell.
    if !holds(&mut b, name, id)? {
        return Ok(notice::gone(name));
    }
    notice::listening(name);
    b.set_timeout(NAP + cfg.timeout)?;
    let nap = format!("DO SLEEP({})", NAP.as_secs());
    while lock(&b.db).run(|c| c.query_drop(&nap)).is_ok() {}
    // Ended: by a force, or the server went away (then this fails too).
    b.set_timeout(cfg.timeout)?;
    lock(&b.db).drop_connection();
    if holds(&mut b, name, id)? {
        return Err(anyhow!("the break listener's connection ended"));
    }
    Ok(format!("lock '{name}' was broken with --force"))
}
