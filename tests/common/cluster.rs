//! A Redis Cluster of three primaries (no replicas) on free loopback ports.

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{wait_until, Redis, Server};

pub struct ClusterSet {
    pub nodes: Vec<Redis>,
}

impl ClusterSet {
    /// The cluster shared by every test of this binary.
    pub fn shared() -> Arc<ClusterSet> {
        static SHARED: OnceLock<Arc<ClusterSet>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(ClusterSet::start())).clone()
    }

    pub fn start() -> ClusterSet {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                Redis::with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until("the cluster to be ok", Duration::from_secs(30), || {
                n.cli(&["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        ClusterSet { nodes }
    }

    /// The port of the node that owns `key`'s slot, by `CLUSTER KEYSLOT` and
    /// `CLUSTER SLOTS`, asked of the servers themselves.
    pub fn owner_port(&self, key: &str) -> u16 {
        let slot: u16 = self.nodes[0]
            .cli(&["cluster", "keyslot", key])
            .parse()
            .unwrap();
        let slots = self.nodes[0].cli(&["cluster", "slots"]);
        // redis-cli prints each range as: start, end, host, port, id, … one per line.
        let lines: Vec<&str> = slots.lines().collect();
        for w in lines.windows(4) {
            if let (Ok(a), Ok(b), Ok(p)) = (
                w[0].parse::<u16>(),
                w[1].parse::<u16>(),
                w[3].parse::<u16>(),
            ) {
                if a <= slot && slot <= b && w[2].contains('.') {
                    return p;
                }
            }
        }
        panic!("no owner for slot {slot}: {slots}");
    }
}

impl Server for ClusterSet {
    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
