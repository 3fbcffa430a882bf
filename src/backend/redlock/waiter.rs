//! Waiting on Redlock: a release leaves a baton on every node (the Redis
//! backend's BZPOPMIN baton), and a waiter blocks for one on every node at
//! once, each on a thread and connection of its own: any node's baton wakes
//! it, so waiting needs no majority and never polls.
//!
//! A waiter that is done (it took the lock, or gave up) unblocks its
//! threads with CLIENT UNBLOCK, so that they do not take the batons of
//! later releases from the waiters that still need them; a thread that
//! took one anyway puts it back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Value};

use super::node::{on_all, Node};
use crate::backend::redis::link::Route;
use crate::backend::redis::topo;
use crate::backend::Waiter;
use crate::backoff::Backoff;

/// The client id of each thread's connection while it blocks.
type Ids = Arc<Mutex<Option<i64>>>;

/// Batons from every node, for one lock name.
pub struct NodeBatons {
    nodes: Arc<Vec<Node>>,
    rx: Receiver<()>,
    stop: Arc<AtomicBool>,
    ids: Vec<Ids>,
}

impl NodeBatons {
    pub fn start(nodes: Arc<Vec<Node>>, baton: String, timeout: Duration) -> NodeBatons {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let ids = nodes
            .iter()
            .map(|n| {
                let id: Ids = Arc::new(Mutex::new(None));
                let (tx, stop, id2) = (tx.clone(), Arc::clone(&stop), Arc::clone(&id));
                let (client, baton) = (n.client.clone(), baton.clone());
                let _ = std::thread::Builder::new()
                    .name("baton".into())
                    .stack_size(128 * 1024)
                    .spawn(move || watch(&client, &baton, timeout, &tx, &stop, &id2));
                id
            })
            .collect();
        NodeBatons {
            nodes,
            rx,
            stop,
            ids,
        }
    }
}

/// Blocks for batons on one node until told to stop, reconnecting after errors.
fn watch(
    client: &Client,
    baton: &str,
    timeout: Duration,
    tx: &Sender<()>,
    stop: &AtomicBool,
    id: &Mutex<Option<i64>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), 2, Duration::from_secs(2));
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut con) = topo::open(client, timeout) {
            backoff.reset();
            let me: Option<i64> = redis::cmd("CLIENT").arg("ID").query(&mut con).ok();
            *id.lock().unwrap_or_else(|e| e.into_inner()) = me;
            if me.is_some() && con.set_read_timeout(None).is_ok() {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = redis::cmd("BZPOPMIN")
                        .arg(baton)
                        .arg(0)
                        .query::<Value>(&mut con);
                    match r {
                        Ok(Value::Nil) => {} // unblocked: look at `stop` again
                        Ok(_) if stop.load(Ordering::Relaxed) => {
                            // Taken after the waiter was done: pass it on.
                            let _ = redis::pipe()
                                .cmd("ZADD")
                                .arg(baton)
                                .arg(0)
                                .arg("released")
                                .cmd("PEXPIRE")
                                .arg(baton)
                                .arg(crate::backend::redis::BATON_TTL_MS)
                                .query::<Value>(&mut con);
                            return;
                        }
                        Ok(_) => {
                            if tx.send(()).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            *id.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        backoff.sleep();
    }
}

impl Waiter for NodeBatons {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        if self.rx.try_recv().is_err() {
            let _ = self.rx.recv_timeout(timeout);
        }
        // One wake-up per wait: batons from several nodes for one release.
        while self.rx.try_recv().is_ok() {}
        Ok(())
    }

    /// A baton stays on its node until taken, so a release before a
    /// thread blocks still wakes it.
    fn keeps_wakeups(&self) -> bool {
        true
    }
}

impl Drop for NodeBatons {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let ids: Vec<Option<i64>> = self
            .ids
            .iter()
            .map(|i| *i.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let _ = on_all(&self.nodes, |i, n| match ids[i] {
            Some(id) => n.link.with_con(Route::Key(""), |con| {
                redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(id)
                    .query::<Value>(con)
            }),
            None => Ok(Value::Nil),
        });
    }
}
