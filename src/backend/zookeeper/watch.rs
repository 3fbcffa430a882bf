//! What an `exec` holder learns besides its renewals' answers: a break of
//! its lease with `release --force`, which writes a record naming the
//! breaker into the lock's node; a watch on that node hears of it at once.

use std::sync::Arc;

use zookeeper_client::Error as ZkError;

use super::run;
use super::store::{Store, Stored};
use crate::backend::notice;

/// Watches `name`'s node on a thread of its own, once the command has run
/// for a moment (see `notice`), and calls `on_break` once when a break
/// record names `token`. Ends quietly when the token no longer holds the
/// lock for another reason (a renewal reports that).
pub fn listen(
    store: Arc<Store>,
    name: String,
    token: String,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    let mut said = false;
    let heard = move || {
        let by = wait_for_break(&store, &name, &token, &mut said)
            .map_err(|()| anyhow::anyhow!("the ZooKeeper session failed"))?;
        Ok(by.map(|by| notice::broken(&name, &by)))
    };
    notice::listen_lazily(heard, on_break);
}

/// Who broke `token`'s lease once a change of the node says so; None when
/// the token is simply no longer a holder; Err on a transport failure.
/// Says once (`said`) that it listens: the first read with a watch.
fn wait_for_break(
    store: &Store,
    name: &str,
    token: &str,
    said: &mut bool,
) -> Result<Option<String>, ()> {
    let path = store.paths.lock(name);
    loop {
        let client = store.conn.client().map_err(|_| ())?;
        let watch = client.get_and_watch_data(&path);
        let reply = run::within(store.conn.timeout(), watch).ok_or(())?;
        let (data, _, watcher) = match reply {
            Ok(r) => r,
            Err(ZkError::NoNode) => return Ok(None),
            Err(_) => return Err(()),
        };
        let stored: Stored = serde_json::from_slice(&data).map_err(|_| ())?;
        if let Some(by) = stored.broken_by(token) {
            return Ok(Some(by));
        }
        if stored.state.holders.iter().all(|h| h.token != token) {
            return Ok(None);
        }
        if !std::mem::replace(said, true) {
            crate::backend::notice::listening(name);
        }
        drop(client);
        // A session event (disconnected, expired) also ends the wait: look again.
        async_io::block_on(watcher.changed());
    }
}
