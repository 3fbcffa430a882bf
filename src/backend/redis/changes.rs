//! `dlock watch` on Redis: the scripts that grant, free or queue publish on
//! the lock's `changed` channel, and `release --force` on its `broken`
//! one (see `scripts.rs`); a watcher subscribes to both, for its names or
//! by pattern for the whole prefix, on a connection and thread of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::link::Link;
use super::scripts::{channel_pattern, key};
use crate::backend::notice::{self, Notices};

/// Subscribes; returns once the server has confirmed it, so that a read
/// after this misses no change.
pub fn subscribe(link: Arc<Link>, prefix: &str, names: Option<&[String]>) -> Result<Notices> {
    let whats = ["changed", "broken"];
    let channels: Vec<String> = match names {
        Some(ns) => ns
            .iter()
            .flat_map(|n| whats.map(|w| key(prefix, n, w)))
            .collect(),
        None => whats.map(|w| channel_pattern(prefix, w)).to_vec(),
    };
    let by_pattern = names.is_none();
    let timeout = link.timeout();
    let (tx, notices) = notice::notices();
    notice::spawn_notices("redis-watch", move |ready| {
        let opened = link
            .subscriber()
            .and_then(|c| c.get_connection_with_timeout(timeout));
        let mut con = match opened {
            Ok(con) => con,
            Err(e) => return drop(ready.send(Err(anyhow::anyhow!("cannot subscribe ({e})")))),
        };
        // One PubSub for the whole watch: dropping it unsubscribes.
        let mut ps = con.as_pubsub();
        let subscribed = ps
            .set_read_timeout(Some(timeout))
            .and_then(|()| match by_pattern {
                true => ps.psubscribe(&channels),
                false => ps.subscribe(&channels),
            });
        if let Err(e) = subscribed {
            return drop(ready.send(Err(anyhow::anyhow!("cannot subscribe ({e})"))));
        }
        let _ = ready.send(Ok(()));
        // Notices come when they come; a dead connection ends in an error.
        if ps.set_read_timeout(None::<Duration>).is_err() {
            return;
        }
        while ps.get_message().is_ok() {
            if tx.send(()).is_err() {
                return;
            }
        }
    })?;
    Ok(notices)
}
