//! ZooKeeper backend: locks on a replicated ensemble, which keep working
//! while a majority of its servers does.
//!
//! Design. A dlock lease must outlive the process that took it (`acquire`
//! here, `release --token` there), so it cannot be an ephemeral node, which
//! dies with its session. Instead each name has one persistent node,
//! `/<chroot>/<prefix>/locks/<name>`, holding the name's `kinds::State` as
//! JSON: its holders, each with a token, fence and expiry, and the queue of
//! `--fair` tickets. Every change is read → plan (`backend::kinds`, the
//! rules all backends share) → `setData` checked against the version read
//! (`create` when absent); a write that lost to another client's is planned
//! again. Expiry is judged by the leader's clock: each read goes out with a
//! write to `<prefix>/clock`, whose Stat's mtime is the leader's wall clock
//! when it ordered that write, so no client's clock matters. That instant
//! follows the one the request was sent at, so a lease written as `now +
//! lease` lasts at least `lease` from the sending, which is what the
//! renewal deadline of `exec` counts on: the command is stopped before the
//! lease could expire on the ensemble, whatever the session says.
//!
//! Sessions carry only waiters: see `queue.rs` (ephemeral sequential nodes,
//! each watching the one before it, so a release wakes one waiter). A
//! `release --force` records who broke which token in the node, which a
//! live `exec` holder watches (`watch.rs`).
//!
//! Fences are the kinds rule, max(last fence + 1, leader's clock in µs),
//! kept in the state node, which is never deleted: they grow across leader
//! changes (the node is replicated) and, should the ensemble's data be
//! wiped, go on from the leader's clock, above every earlier fence unless
//! that clock was set back.
//!
//! Limits: the leaders' clocks must agree (NTP) to well within a tenth of
//! the lease, since a new leader judges leases written under the old one;
//! a name's state node holds at most jute.maxbuffer (1 MB) of holders.

mod address;
mod changes;
mod conn;
mod queue;
mod run;
mod store;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::engine;
use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use conn::Conn;
use store::{Node, Paths, Store};

/// Checks the URL and connects (so that a bad address fails here, once).
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let addr = address::address(url)?;
    let paths = Paths::new(&addr.chroot, &cfg.prefix);
    let conn = Conn::new(addr, url.shown().to_string(), cfg.timeout);
    conn.client()?;
    let b = ZkBackend {
        store: Arc::new(Store { conn, paths }),
        seen: Default::default(),
        asked: Default::default(),
    };
    Ok((Box::new(b), url.location("zookeeper")))
}

pub struct ZkBackend {
    store: Arc<Store>,
    seen: queue::Seen,
    /// The token this process last asked each name for, so that its waiter
    /// can tell when that token's ticket (`--fair`) has its turn, and
    /// whether that attempt left one.
    asked: std::collections::HashMap<String, (String, bool)>,
}

impl ZkBackend {
    /// Remembers the state node as this process's last attempt left it.
    fn saw(&self, name: &str, mzxid: Option<i64>) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), mzxid);
    }

    /// The engine's store.
    fn node(&self) -> Node<'_> {
        Node {
            store: &self.store,
            mzxid: None,
        }
    }
}

impl Backend for ZkBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let mut node = self.node();
        let (out, _) = engine::acquire(&mut node, req, &engine::PassOn::default())?;
        let mzxid = node.mzxid;
        self.saw(req.name, mzxid);
        let queued = matches!(out, Acquire::Queued(_));
        let asked = (req.token.to_string(), queued);
        self.asked.insert(req.name.to_string(), asked);
        Ok(out)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        Ok(engine::renew(&mut self.node(), name, token, lease)?.0)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        Ok(engine::release(&mut self.node(), name, token)?.0)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        Ok(engine::force(&mut self.node(), name, only)?.0)
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        let names = match names {
            Some(n) => n.to_vec(),
            None => self.store.names()?,
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let (now, states) = self.store.read_all(&names)?;
        let mut out = Vec::new();
        for (n, st) in names.iter().zip(states) {
            out.extend(st.state.infos(n, now));
        }
        out.sort_by(|a, b| (&a.name, a.fence).cmp(&(&b.name, b.fence)));
        Ok(out)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        let (token, ticketed) = match self.asked.get(name).cloned() {
            Some((token, queued)) => (Some(token), queued),
            None => (None, false),
        };
        let (store, seen) = (Arc::clone(&self.store), Arc::clone(&self.seen));
        let w = queue::ZkWaiter::join(store, name, seen, token, ticketed)?;
        Ok(Box::new(w))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.store.conn.reset();
        self.store.conn.client().map(|_| ())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.store.conn.set_timeout(timeout);
        Ok(())
    }

    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        let n = changes::subscribe(Arc::clone(&self.store), names)?;
        Ok(Some(Box::new(n)))
    }

    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        let seen = self.store.read(name)?;
        let record = seen.stored.breaks.iter();
        let mut of_id = record.filter(|b| crate::names::token_id(&b.token) == token_id);
        Ok(of_id.next().map(|b| b.by.clone()))
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        let store = Arc::clone(&self.store);
        watch::listen(store, name.to_string(), token.to_string(), on_break);
    }
}

impl Drop for ZkBackend {
    fn drop(&mut self) {
        // The waiters hold the store too; they are gone by now, so this closes the session.
        self.store.conn.close();
    }
}
