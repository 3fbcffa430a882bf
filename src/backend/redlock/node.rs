//! One Redlock node: a connection to an independent Redis server, and how
//! a request goes to all of them at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Value};

use crate::backend::redis::link::{Link, Route, Target};
use crate::backend::redis::scripts::Lua;
use crate::error::{fail, INTERNAL};

pub struct Node {
    pub link: Arc<Link>,
    /// "host:port", for messages.
    pub addr: String,
    /// For connections of the waiter's own.
    pub client: Client,
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
        }
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
                format!(
                    "unexpected reply from {}: {} where a script's list was due",
                    self.link.shown,
                    crate::backend::redis::misplaced::shape(other.as_ref())
                ),
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
