//! Waiting without a herd: each waiting dlock holds an ephemeral sequential
//! node under the name's queue container and watches only the node just
//! before its own; the first in line watches the name's state node, which
//! every release (any write) changes. A release so wakes one process, and a
//! waiter that takes the lock leaves the queue, which wakes the next.
//!
//! Ephemeral nodes die with their session, never before: a waiter that
//! exits deletes its node first (also on a stopping signal: the caller runs
//! [`Waiter::on_exit`]); one that is SIGKILLed holds up the one behind it
//! until the server expires its session (`conn::SESSION_TIMEOUT`, bounded
//! by the server's tickTime), or until that one's own timer (the holder's
//! lease end, or the ticket refresh of `--fair`) fires first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client::{CreateMode, Error as ZkError};

use super::run;
use super::store::Store;
use crate::backend::Waiter;

/// The mzxid of each name's state node as this process's last attempt left
/// it (None: absent), so that the first waiter notices a change that came
/// between that attempt and its watch.
pub type Seen = Arc<Mutex<HashMap<String, Option<i64>>>>;

/// Longest a waiter's exit waits for its node's delete to be answered.
const LEAVE_WAIT: Duration = Duration::from_secs(2);

pub struct ZkWaiter {
    store: Arc<Store>,
    name: String,
    seen: Seen,
    /// Our node's name in the queue container; shared with the cleanup
    /// that a signal's exit runs.
    node: Arc<Mutex<Option<String>>>,
    /// The token this process waits with, if the backend knows it.
    token: Option<String>,
}

/// The sequence number of a queue node's name ("w-0000000042").
fn seq(node: &str) -> Option<i64> {
    node.strip_prefix("w-")?.parse().ok()
}

impl ZkWaiter {
    /// Joins the queue of `name`.
    pub fn join(
        store: Arc<Store>,
        name: &str,
        seen: Seen,
        token: Option<String>,
    ) -> Result<ZkWaiter> {
        let mut w = ZkWaiter {
            store,
            name: name.to_string(),
            seen,
            node: Arc::default(),
            token,
        };
        w.enter()?;
        Ok(w)
    }

    fn dir(&self) -> String {
        self.store.paths.queue(&self.name)
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates our node (again, after a session expired with it).
    fn enter(&mut self) -> Result<String> {
        if let Some(n) = self.node().clone() {
            return Ok(n);
        }
        let conn = &self.store.conn;
        let client = conn.client()?;
        let dir = self.dir();
        let prefix = format!("{dir}/w-");
        let opts = conn.options(CreateMode::EphemeralSequential);
        let what = format!("joining the queue of lock '{}'", self.name);
        let created = match conn.wait_raw(client.create(&prefix, b"", &opts))? {
            Err(ZkError::NoNode) => {
                self.store.now(&client)?; // makes the prefix's directories
                let container = conn.options(CreateMode::Container);
                conn.wait(&what, client.mkdir(&dir, &container))?;
                conn.wait(&what, client.create(&prefix, b"", &opts))?
            }
            r => r.map_err(|e| conn.error(&e, &what))?,
        };
        let node = format!("w-{}", created.1);
        crate::output::verbose(&format!(
            "queued for lock '{}' as {node} in {dir}",
            self.name
        ));
        *self.node() = Some(node.clone());
        Ok(node)
    }

    /// Waits until the node before ours goes, or (first in line) until the
    /// state node changes from what our last attempt saw; true when it
    /// should try again now.
    fn wait_once(&mut self, deadline: Instant, waited: &mut bool) -> Result<bool> {
        let node = self.enter()?;
        let conn = &self.store.conn;
        let client = conn.client()?;
        let dir = self.dir();
        let children = match conn.wait_raw(client.list_children(&dir))? {
            Ok(c) => c,
            Err(ZkError::NoNode) => Vec::new(),
            Err(e) => return Err(conn.error(&e, "listing the queue")),
        };
        if !children.contains(&node) {
            // Our session expired with the node: take a new place at the end.
            self.forget();
            return Ok(false);
        }
        let mine = seq(&node).unwrap_or(i64::MAX);
        let before = children
            .iter()
            .filter(|c| seq(c).is_some_and(|s| s < mine))
            .max_by_key(|c| seq(c));
        let Some(before) = before else {
            if *waited {
                return Ok(true); // just became first: try at once
            }
            return self.watch_state(deadline).map(|()| true);
        };
        // `--fair`: the order of tickets, not of these nodes, says whose turn
        // it is. A ticket that leads waits as the first node does; one that
        // may come to lead (the lock changes) looks again when it changes,
        // or a waiter ahead here, woken out of its turn, keeps the wake-up.
        let lock = self.store.paths.lock(&self.name);
        let (fair, first) = match &self.token {
            Some(token) => {
                let (data, lock_watch) = conn
                    .wait("watching the lock", client.get_and_watch_data(&lock))
                    .map_or((None, None), |(d, _, w)| (Some(d), Some(w)));
                let queue = data
                    .and_then(|d| super::store::parse(&self.name, &d).ok())
                    .map(|s| s.state.queue)
                    .unwrap_or_default();
                let first = queue
                    .iter()
                    .min_by_key(|t| t.seq)
                    .is_some_and(|t| &t.token == token);
                (lock_watch.filter(|_| !queue.is_empty()), first)
            }
            None => (None, false),
        };
        if first {
            return self.watch_state(deadline).map(|()| true);
        }
        let path = format!("{dir}/{before}");
        let what = "watching the waiter ahead";
        let (stat, watcher) = conn.wait(what, client.check_and_watch_stat(&path))?;
        if stat.is_none() {
            return Ok(false);
        }
        *waited = true;
        drop(client);
        let changed = async {
            match fair {
                Some(lock_watch) => {
                    futures_lite::future::or(
                        async {
                            watcher.changed().await;
                        },
                        async {
                            lock_watch.changed().await;
                        },
                    )
                    .await
                }
                None => {
                    watcher.changed().await;
                }
            }
        };
        Ok(run::until(deadline, changed).is_none())
    }

    /// First in line: waits for any change of the state node after the one
    /// our last attempt saw.
    fn watch_state(&self, deadline: Instant) -> Result<()> {
        let conn = &self.store.conn;
        let client = conn.client()?;
        let path = self.store.paths.lock(&self.name);
        let (stat, watcher) = conn.wait("watching the lock", client.check_and_watch_stat(&path))?;
        let last = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.name)
            .copied();
        if last != Some(stat.map(|s| s.mzxid)) {
            return Ok(()); // changed since: try again now
        }
        drop(client);
        run::until(deadline, watcher.changed());
        Ok(())
    }

    fn forget(&mut self) {
        self.node().take();
    }
}

/// Deletes a queue node, waiting (briefly) for the answer: dlock is about to exit.
fn leave(store: &Store, path: &str) {
    if let Some(client) = store.conn.current() {
        let _ = run::within(
            LEAVE_WAIT.min(store.conn.timeout()),
            client.delete(path, None),
        );
    }
}

impl Waiter for ZkWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut waited = false;
        while Instant::now() < deadline {
            if self.wait_once(deadline, &mut waited)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Deletes our node, waiting (briefly) for the answer.
    fn on_exit(&self) -> Option<Box<dyn FnOnce() + Send>> {
        let (store, node, dir) = (Arc::clone(&self.store), Arc::clone(&self.node), self.dir());
        Some(Box::new(move || {
            let node = node.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(node) = node {
                leave(&store, &format!("{dir}/{node}"));
            }
        }))
    }
}

impl Drop for ZkWaiter {
    /// Leaves the queue without waiting for the answer, so that the lock's
    /// new holder starts a round trip sooner: the delete is sent at once, and
    /// every later request of this session (the release, the session's
    /// close, which dlock awaits before it exits) is answered after it.
    fn drop(&mut self) {
        let node = self.node().take();
        if let Some(node) = node {
            if let Some(client) = self.store.conn.current() {
                drop(client.delete(&format!("{}/{node}", self.dir()), None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_nodes_sort_by_their_sequence() {
        assert_eq!(seq("w-0000000042"), Some(42));
        assert_eq!(seq("w-9223372036854775807"), Some(i64::MAX));
        assert_eq!(seq("other"), None);
    }
}
