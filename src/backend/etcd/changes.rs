//! `dlock watch`'s notices on etcd: one watch of every key under the
//! prefix (holders and queued requests alike), on a thread of its own; an
//! event under a watched name's range is a notice.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use anyhow::Result;

use super::keys;
use super::link::Link;
use super::rpc::WatchCreateRequest;
use crate::backend::notice::{self, Notices};
use crate::error::{fail, UNAVAILABLE};

/// Watches the prefix; returns once etcd has created the watch, so that a
/// read after this misses no change.
pub fn subscribe(link: Arc<Link>, prefix: &str, names: Option<&[String]>) -> Result<Notices> {
    let all = keys::all(prefix).into_bytes();
    let wanted: Vec<Vec<u8>> = match names {
        Some(ns) => ns
            .iter()
            .map(|n| keys::of_name(prefix, n).into_bytes())
            .collect(),
        None => vec![all.clone()],
    };
    let (tx, notices) = notice::notices();
    notice::spawn_notices("etcd-watch", move |ready| {
        link.block_on(listen(&link, all, wanted, tx, ready))
    })?;
    Ok(notices)
}

async fn listen(
    link: &Link,
    all: Vec<u8>,
    wanted: Vec<Vec<u8>>,
    tx: Sender<()>,
    ready: Sender<Result<()>>,
) {
    let create = WatchCreateRequest::key(all, 0).with_prefix();
    let opened = link
        .call_async("a watch", |mut c| {
            let w = create.clone();
            async move { c.watch(w).await }
        })
        .await;
    let mut watch = match opened {
        Ok(w) => w,
        Err(e) => return drop(ready.send(Err(e))),
    };
    // Its first answer says it was created.
    match watch.message().await {
        Ok(Some(m)) if m.created && !m.canceled => drop(ready.send(Ok(()))),
        _ => {
            let why = format!("etcd at {} refused a watch", link.shown);
            return drop(ready.send(Err(fail(UNAVAILABLE, why))));
        }
    }
    loop {
        let Ok(Some(m)) = watch.message().await else {
            return; // the sender goes: the watcher polls and watches anew
        };
        let hit = m.events.iter().any(|e| {
            e.kv.as_ref()
                .is_some_and(|kv| wanted.iter().any(|w| kv.key.starts_with(w)))
        });
        // A cancelled watch (a compaction) ends too: the watcher reads
        // and watches anew.
        if hit && tx.send(()).is_err() || m.canceled {
            return;
        }
    }
}
