//! `dlock watch` on Redlock: every node runs the Redis backend's scripts,
//! which publish each change (see `redis::scripts`), so a watcher
//! subscribes on every node (a notice from any one is enough); and each
//! node keeps the Redis break record, which tells a break from a release.

use anyhow::Result;

use super::{RedlockBackend, NODE_TIMEOUT};
use crate::backend::notice::{self, Notices};
use crate::backend::redis::changes::{channels, listen};
use crate::backend::redis::link::Route;
use crate::backend::redis::scripts::key;
use crate::names::token_id;

/// Subscribes on every node; returns once each has confirmed it (a node
/// that cannot be subscribed on fails it: the watcher polls).
pub(super) fn subscribe(b: &RedlockBackend, names: Option<&[String]>) -> Result<Notices> {
    let (channels, by_pattern) = channels(&b.prefix, names);
    let timeout = b.timeout.min(NODE_TIMEOUT);
    let (tx, notices) = notice::notices();
    for node in b.nodes.iter() {
        let (client, channels, tx) = (node.client.clone(), channels.clone(), tx.clone());
        notice::spawn_notices("redlock-watch", move |ready| {
            listen(&client, timeout, &channels, by_pattern, &tx, ready)
        })?;
    }
    Ok(notices)
}

/// Who broke the lease of `name` with token id `id`, as the first node
/// whose break record names it says.
pub(super) fn broken_by(b: &RedlockBackend, name: &str, id: &str) -> Option<String> {
    let k = key(&b.prefix, name, "broken");
    b.nodes.iter().find_map(|n| {
        let line: Option<String> = n
            .link
            .with_con(Route::Key(&k), |c| redis::cmd("GET").arg(&k).query(c))
            .ok()?;
        let (token, by) = line?
            .split_once('\n')
            .map(|(t, b)| (t.to_string(), b.to_string()))?;
        (token_id(&token) == id).then_some(by)
    })
}
