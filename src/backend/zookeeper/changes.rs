//! `dlock watch` on ZooKeeper: one persistent recursive watch (ZooKeeper
//! 3.6 and later) of the prefix's nodes, the lock states and the waiters'
//! queues alike, on a thread of its own; a change under a watched name is
//! a notice. Reads write the clock node, which is no notice.

use std::sync::Arc;

use anyhow::Result;
use zookeeper_client::AddWatchMode;

use super::run;
use super::store::Store;
use crate::backend::notice::{self, Notices};
use crate::error::{fail, UNAVAILABLE};

/// Watches the prefix; returns once the server has set the watch, so
/// that a read after this misses no change.
pub fn subscribe(store: Arc<Store>, names: Option<&[String]>) -> Result<Notices> {
    let wanted: Vec<String> = match names {
        Some(ns) => ns
            .iter()
            .flat_map(|n| [store.paths.lock(n), store.paths.queue(n)])
            .collect(),
        None => vec![store.paths.locks(), store.paths.queues()],
    };
    let (tx, notices) = notice::notices();
    notice::spawn_notices("zk-watch", move |ready| {
        let set = store.conn.client().and_then(|client| {
            let base = store.paths.base().to_string();
            let watch = client.watch(&base, AddWatchMode::PersistentRecursive);
            match run::within(store.conn.timeout(), watch) {
                Some(Ok(w)) => Ok(w),
                Some(Err(e)) => Err(store.conn.error(&e, "setting a watch")),
                None => Err(fail(UNAVAILABLE, "ZooKeeper did not set a watch in time")),
            }
        });
        let mut watcher = match set {
            Ok(w) => w,
            Err(e) => return drop(ready.send(Err(e))),
        };
        let _ = ready.send(Ok(()));
        loop {
            let e = async_io::block_on(watcher.changed());
            // After a terminal session event the watcher must not be polled
            // again; returning drops the sender, and the watcher polls.
            if e.session_state.is_terminated() {
                return;
            }
            let hit = e.path.is_empty()
                || wanted.iter().any(|w| {
                    e.path == *w
                        || e.path
                            .strip_prefix(w.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                });
            if hit && tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(notices)
}
