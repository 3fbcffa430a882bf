//! A Redlock holder's listener for `release --force`: the force runs the
//! Redis backend's force script on every node, which publishes the broken
//! token's id and its breaker on the lock's `broken` channel and leaves a
//! tombstone naming the whole token. The listener subscribes on every node
//! (a notice from any one is enough), only once the command has run for a
//! moment (`notice::LAZY`), and reads each node's tombstone once subscribed,
//! so that a force in between is not missed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::node::Node;
use super::{RedlockBackend, NODE_TIMEOUT};
use crate::backend::notice;
use crate::backend::redis::link::Route;
use crate::backend::redis::scripts::key;
use crate::backoff::Backoff;
use crate::names::token_id;

type OnBreak = Arc<Mutex<Option<Box<dyn FnOnce(String) + Send>>>>;

/// Calls `on_break` once, from the first node that tells of a break of
/// `token`'s lease on `name`; returns at once.
pub(super) fn watch(
    b: &RedlockBackend,
    name: &str,
    token: &str,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    let nodes = Arc::clone(&b.nodes);
    let chan = key(&b.prefix, name, "broken");
    let (name, token) = (name.to_string(), token.to_string());
    let on_break: OnBreak = Arc::new(Mutex::new(Some(on_break)));
    let timeout = b.timeout.min(NODE_TIMEOUT);
    notice::spawn_lazily(move || {
        let said = Arc::new(Mutex::new(false));
        for i in 0..nodes.len() {
            let (nodes, chan, name, token) =
                (nodes.clone(), chan.clone(), name.clone(), token.clone());
            let (on_break, said) = (Arc::clone(&on_break), Arc::clone(&said));
            let _ = std::thread::Builder::new()
                .name("break-notices".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut backoff =
                        Backoff::new(Duration::from_millis(100), 2, Duration::from_secs(10));
                    let heard = loop {
                        match wait_on(&nodes[i], timeout, &chan, &token, &name, &said) {
                            Ok(by) => break by,
                            // That node down: the others tell, and renewals still do.
                            Err(_) => {
                                backoff.sleep();
                            }
                        }
                    };
                    let f = on_break.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(f) = f {
                        f(notice::broken(&name, &heard));
                    }
                });
        }
    });
}

/// Subscribes on `node`, then reads its tombstone, then waits for a notice
/// naming `token`; returns who broke it.
fn wait_on(
    node: &Node,
    timeout: Duration,
    chan: &str,
    token: &str,
    name: &str,
    said: &Mutex<bool>,
) -> anyhow::Result<String> {
    let mut con = node.client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    let mut ps = con.as_pubsub();
    ps.subscribe(chan)?;
    // The tombstone's key is the channel's name: "token\nby".
    let tomb: Option<String> = node
        .link
        .with_con(Route::Key(chan), |c| redis::cmd("GET").arg(chan).query(c))?;
    if let Some((tok, by)) = tomb.as_deref().and_then(|t| t.split_once('\n')) {
        if tok == token {
            return Ok(by.to_string());
        }
    }
    if !std::mem::replace(&mut *said.lock().unwrap_or_else(|e| e.into_inner()), true) {
        notice::listening(name);
    }
    ps.set_read_timeout(None)?;
    let id = token_id(token);
    loop {
        let payload: String = ps.get_message()?.get_payload()?;
        if let Some((who, by)) = payload.split_once('\n') {
            if who == id {
                return Ok(by.to_string());
            }
        }
    }
}
