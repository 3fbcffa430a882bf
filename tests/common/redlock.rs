//! Five independent redis-servers for Redlock.

use std::sync::{Arc, OnceLock};

use super::{Redis, Server};

pub struct RedlockSet {
    pub nodes: Vec<Redis>,
}

impl RedlockSet {
    /// The set shared by every test of this binary.
    pub fn shared() -> Arc<RedlockSet> {
        static SHARED: OnceLock<Arc<RedlockSet>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(RedlockSet::start(5)))
            .clone()
    }

    pub fn start(n: usize) -> RedlockSet {
        RedlockSet {
            nodes: (0..n).map(|_| Redis::start()).collect(),
        }
    }
}

impl Server for RedlockSet {
    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redlock://{}", hosts.join(","))
    }
}
