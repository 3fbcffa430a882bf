//! `dlock watch` on Redis: the scripts that grant, free or queue publish on
//! the lock's `changed` channel, and `release --force` on its `broken`
//! one (see `scripts.rs`); a watcher subscribes to both, for its names or
//! by pattern for the whole prefix, on a connection and thread of its own.
//! Redlock subscribes the same way on each of its nodes.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use redis::Client;

use super::link::Link;
use super::scripts::{channel_pattern, key};
use crate::backend::notice::{self, Notices};

/// What a watcher subscribes to: channels, or patterns (`true`) for every
/// lock under the prefix.
pub(crate) fn channels(prefix: &str, names: Option<&[String]>) -> (Vec<String>, bool) {
    let whats = ["changed", "broken"];
    match names {
        Some(ns) => {
            let per_name = ns.iter().flat_map(|n| whats.map(|w| key(prefix, n, w)));
            (per_name.collect(), false)
        }
        None => (whats.map(|w| channel_pattern(prefix, w)).to_vec(), true),
    }
}

/// Subscribes; returns once the server has confirmed it, so that a read
/// after this misses no change.
pub fn subscribe(link: Arc<Link>, prefix: &str, names: Option<&[String]>) -> Result<Notices> {
    let client = link.subscriber()?;
    let (tx, notices) = notice::notices();
    let (channels, by_pattern) = channels(prefix, names);
    let timeout = link.timeout();
    notice::spawn_notices("redis-watch", move |ready| {
        listen(&client, timeout, &channels, by_pattern, &tx, ready)
    })?;
    Ok(notices)
}

/// Subscribes on `client`'s server, says so on `ready` (or why not), then
/// sends a notice for every message until the connection or the watcher
/// ends.
pub(crate) fn listen(
    client: &Client,
    timeout: Duration,
    channels: &[String],
    by_pattern: bool,
    tx: &Sender<()>,
    ready: Sender<Result<()>>,
) {
    let mut con = match client.get_connection_with_timeout(timeout) {
        Ok(con) => con,
        Err(e) => return drop(ready.send(Err(anyhow::anyhow!("cannot subscribe ({e})")))),
    };
    // One PubSub for the whole watch: dropping it unsubscribes.
    let mut ps = con.as_pubsub();
    let subscribed = ps
        .set_read_timeout(Some(timeout))
        .and_then(|()| match by_pattern {
            true => ps.psubscribe(channels),
            false => ps.subscribe(channels),
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
}
