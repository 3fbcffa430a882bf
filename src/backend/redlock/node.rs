//! One Redlock node: a connection to an independent Redis server, and how
//! a request goes to all of them at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Value};

use crate::backend::redis::link::{Link, Route};
use crate::backend::redis::scripts::Lua;
use crate::backend::redis::topo::Target;
use crate::error::{fail, INTERNAL, USAGE};

pub struct Node {
    pub link: Arc<Link>,
    /// "host:port", for messages.
    pub addr: String,
    /// For connections of the waiter's own.
    pub client: Client,
    /// The server's run_id as its current connection (by the link's count
    /// of connections opened) reported it.
    identity: Mutex<(u64, Option<String>)>,
}

impl Node {
    pub fn new(client: Client, addr: String, shown: &str, timeout: Duration) -> Node {
        let link = Link::new(
            Target::Direct(client.clone()),
            timeout,
            format!("node {addr} of {shown}"),
        );
        Node {
            link: Arc::new(link),
            addr,
            client,
            identity: Mutex::new((0, None)),
        }
    }

    /// Connects if needed and learns which server answers: asked once per
    /// connection (INFO server's run_id), since a reconnect may reach
    /// another server under the same name.
    pub fn identify(&self) -> Result<()> {
        self.link.connect()?;
        let opened = self.link.opened();
        if self.lock_identity().0 == opened {
            return Ok(());
        }
        let info: String = self.link.with_con(Route::Key(""), |con| {
            redis::cmd("INFO").arg("server").query(con)
        })?;
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string());
        *self.lock_identity() = (opened, id);
        Ok(())
    }

    /// Whether a connection of this node has been identified yet.
    pub fn identified(&self) -> bool {
        self.lock_identity().0 != 0
    }

    fn lock_identity(&self) -> std::sync::MutexGuard<'_, (u64, Option<String>)> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a script by its hash, and by its body if the node does not know it.
    pub fn eval(&self, lua: &Lua, keys: &[String], args: &[&str]) -> Result<Vec<Value>> {
        let call = |body: bool| {
            let mut pipe = redis::pipe();
            // NOSCRIPT comes back as a value, so the connection stays open.
            pipe.ignore_errors();
            if body {
                pipe.cmd("EVAL").arg(&lua.body);
            } else {
                pipe.cmd("EVALSHA").arg(&lua.sha);
            }
            pipe.arg(keys.len()).arg(keys).arg(args);
            self.link
                .with_con(Route::Key(&keys[0]), |con| pipe.query::<Vec<Value>>(con))
        };
        let mut replies = call(false)?;
        if matches!(replies.first(), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT") {
            replies = call(true)?;
        }
        match replies.into_iter().next() {
            Some(Value::Array(items)) => Ok(items),
            Some(Value::Int(i)) => Ok(vec![Value::Int(i)]),
            Some(Value::ServerError(e)) => Err(self.link.request_error(&e.into())),
            other => Err(fail(
                INTERNAL,
                format!("unexpected reply from {}: {other:?}", self.link.shown),
            )),
        }
    }
}

/// Runs `f` on every node at once, each on a thread of its own, and returns
/// the answers in node order when all are in: each node's timeout bounds
/// the wait, so a stopped node costs that timeout, not more.
pub fn on_all<T: Send>(
    nodes: &[Node],
    f: impl Fn(usize, &Node) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || f(i, n))
            })
            .collect();
        handles
            .into_iter()
            .zip(nodes.iter().enumerate())
            .map(|(h, (i, n))| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(fail(
                        INTERNAL,
                        format!("the request to {} panicked", n.addr),
                    ))
                }),
                // Out of threads: ask this node from here instead.
                Err(_) => f(i, n),
            })
            .collect()
    })
}

/// Refuses nodes that are one server (one server listening on two
/// addresses, or two names of one address): a "majority" of them could be
/// fewer servers than it counts.
pub fn distinct(nodes: &[Node]) -> Result<()> {
    for (i, a) in nodes.iter().enumerate() {
        let Some(id) = a.lock_identity().1.clone() else {
            continue;
        };
        if let Some(b) = nodes[i + 1..]
            .iter()
            .find(|b| b.lock_identity().1.as_deref() == Some(&id))
        {
            return Err(fail(
                USAGE,
                format!(
                    "'{}' and '{}' in the Redlock URL are the same Redis server (run_id {}); \
                     name each server once, and give Redlock independent servers",
                    a.addr,
                    b.addr,
                    id.get(..8).unwrap_or(&id)
                ),
            ));
        }
    }
    Ok(())
}

/// The first two hosts of a list that resolve to a common address, with it.
pub fn same_address(hosts: &[(String, u16)]) -> Option<(usize, usize, std::net::SocketAddr)> {
    use std::net::ToSocketAddrs;
    // A host that does not resolve now is not compared; connecting will say why.
    let resolved: Vec<Vec<std::net::SocketAddr>> = hosts
        .iter()
        .map(|(h, p)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            (h, *p)
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default()
        })
        .collect();
    for (i, a) in resolved.iter().enumerate() {
        for (j, b) in resolved.iter().enumerate().skip(i + 1) {
            if let Some(x) = a.iter().find(|x| b.contains(x)) {
                return Some((i, j, *x));
            }
        }
    }
    None
}

impl super::RedlockBackend {
    /// Gives the lease back to nodes that answered they have none, while
    /// the token holds a majority (best effort: the next renewal tries again).
    pub(super) fn heal(&self, name: &str, value: &str, ms: &str, missing: &[usize]) {
        let keys = self.keys(name, &["lease", "fence"]);
        let fence = value.split('\n').nth(1).unwrap_or("0");
        let _ = on_all(&self.nodes, |i, n| {
            if missing.contains(&i) {
                n.eval(&super::scripts::HEAL_LUA, &keys, &[value, ms, fence])
                    .map(|_| ())
            } else {
                Ok(())
            }
        });
    }
}
