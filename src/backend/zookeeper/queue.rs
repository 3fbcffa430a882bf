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
//! lease end) fires first.
//!
//! A request that holds a ticket (`--fair`, or a writer behind readers)
//! has its place in the state node's queue already, and the order of the
//! tickets, not of these nodes, says whose turn it is: it makes no node,
//! watches the state node, and on each change reads it and tries only if
//! its turn has come (`kinds::State::turn_of`). Every such waiter reads at
//! each change, but only one tries, and a try out of turn writes nothing
//! (see `kinds`): the tries of both a first node and a first ticket, each
//! rewriting the node, used to wake each other in a loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client::{CreateMode, Error as ZkError, OneshotWatcher};

use super::run;
use super::store::Store;
use crate::backend::kinds::State;
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
    /// The attempt before this waiter left a ticket: it waits in the
    /// tickets' order (see `wait_turn`) and needs no node of its own.
    ticketed: bool,
}

/// The sequence number of a queue node's name ("w-0000000042").
fn seq(node: &str) -> Option<i64> {
    node.strip_prefix("w-")?.parse().ok()
}

impl ZkWaiter {
    /// Joins the queue of `name`; a request that holds a ticket (`ticketed`)
    /// joins it only if the ticket is gone when it waits.
    pub fn join(
        store: Arc<Store>,
        name: &str,
        seen: Seen,
        token: Option<String>,
        ticketed: bool,
    ) -> Result<ZkWaiter> {
        let mut w = ZkWaiter {
            store,
            name: name.to_string(),
            seen,
            node: Arc::default(),
            ticketed: ticketed && token.is_some(),
            token,
        };
        if !w.ticketed {
            w.enter()?;
        }
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
        if self.ticketed {
            if let Some(turn) = self.by_ticket(deadline)? {
                return Ok(turn);
            }
        }
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
        // Behind tickets, a request without one may go only once they have
        // gone: it looks again whenever the lock changes.
        let fair = match self
            .token
            .is_some()
            .then(|| self.watch_lock())
            .transpose()?
        {
            Some(Some((st, mzxid, watch))) if self.has_ticket(&st) => {
                return Ok(self.wait_turn(&st, mzxid, watch, deadline));
            }
            Some(Some((st, _, watch))) => (!st.queue.is_empty()).then_some(watch),
            _ => None,
        };
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

    /// The lock's state as it is now, its mzxid, and a watch for its next
    /// change; None when it cannot be read (no node yet, or not parsed).
    fn watch_lock(&self) -> Result<Option<(State, i64, OneshotWatcher)>> {
        let conn = &self.store.conn;
        let client = conn.client()?;
        let lock = self.store.paths.lock(&self.name);
        let read = conn.wait_raw(client.get_and_watch_data(&lock))?;
        Ok(read.ok().and_then(|(data, stat, watch)| {
            let stored = super::store::parse(&self.name, &data).ok()?;
            Some((stored.state, stat.mzxid, watch))
        }))
    }

    /// Waits in the tickets' order if this request holds a ticket (None: it
    /// holds none, so it waits in the nodes' order).
    fn by_ticket(&self, deadline: Instant) -> Result<Option<bool>> {
        Ok(match self.watch_lock()? {
            Some((st, mzxid, watch)) if self.has_ticket(&st) => {
                Some(self.wait_turn(&st, mzxid, watch, deadline))
            }
            _ => None,
        })
    }

    fn has_ticket(&self, st: &State) -> bool {
        let token = self.token.as_deref();
        st.queue.iter().any(|t| Some(t.token.as_str()) == token)
    }

    /// A request with a ticket: tries when its turn has come (and the
    /// state changed since its last attempt, which saw otherwise); else
    /// waits for the next change and looks again (false). Every waiter
    /// with a ticket wakes on each change, but only reads then: the one
    /// whose turn it is tries, and the others write nothing, where a try
    /// by each (a write to the clock) slowed every hand-off.
    fn wait_turn(&self, st: &State, mzxid: i64, watch: OneshotWatcher, deadline: Instant) -> bool {
        let token = self.token.as_deref().unwrap_or_default();
        if st.turn_of(token) && self.last_seen() != Some(Some(mzxid)) {
            return true;
        }
        run::until(deadline, watch.changed());
        false
    }

    /// The state node's mzxid as this process's last attempt left it.
    fn last_seen(&self) -> Option<Option<i64>> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&self.name).copied()
    }

    /// First in line: waits for any change of the state node after the one
    /// our last attempt saw.
    fn watch_state(&self, deadline: Instant) -> Result<()> {
        let conn = &self.store.conn;
        let client = conn.client()?;
        let path = self.store.paths.lock(&self.name);
        let (stat, watcher) = conn.wait("watching the lock", client.check_and_watch_stat(&path))?;
        if self.last_seen() != Some(stat.map(|s| s.mzxid)) {
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

    /// A waiter with a ticket decides from the state as it reads it when it
    /// waits, after the attempt: a change in between is not missed.
    fn keeps_wakeups(&self) -> bool {
        self.ticketed
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
