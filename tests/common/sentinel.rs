//! A Sentinel-managed Redis: a primary, one replica and three sentinels on
//! free loopback ports, with a one-second down-after so that a failover
//! takes a few seconds.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::{free_port, require, wait_until, Redis, Server};

pub const SERVICE: &str = "dlocktest";

pub struct SentinelSet {
    pub primary: Redis,
    pub replica: Redis,
    pub ports: Vec<u16>,
    sentinels: Mutex<Vec<Child>>,
    _dir: tempfile::TempDir,
    /// Query parameters for the URL (such as `wait_replicas=1`).
    pub query: String,
}

impl SentinelSet {
    /// The set shared by every test of this binary (they use prefixes of their own).
    pub fn shared() -> Arc<SentinelSet> {
        static SHARED: OnceLock<Arc<SentinelSet>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(SentinelSet::start()))
            .clone()
    }

    pub fn start() -> SentinelSet {
        let bin = require("redis-sentinel", "redis-sentinel");
        let primary = Redis::start();
        let replicaof = primary.port.to_string();
        let replica = Redis::with_args(&["--replicaof", "127.0.0.1", &replicaof]);
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        let mut kids = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {p} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 4000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = dir.path().display(),
                    p = primary.port
                ),
            )
            .unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg(&conf)
                .args(["--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            kids.push(super::spawn_tied(cmd).expect("start redis-sentinel"));
            ports.push(port);
        }
        let set = SentinelSet {
            primary,
            replica,
            ports,
            sentinels: Mutex::new(kids),
            _dir: dir,
            query: String::new(),
        };
        for &p in &set.ports {
            wait_until("a sentinel to answer", Duration::from_secs(10), || {
                set.sentinel_cli(p, &["sentinel", "get-master-addr-by-name", SERVICE])
                    .lines()
                    .nth(1)
                    .is_some()
            });
        }
        set
    }

    pub fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Field `name` of `SENTINEL MASTER` as sentinel `port` sees it.
    fn master_field(&self, port: u16, name: &str) -> String {
        let out = self.sentinel_cli(port, &["sentinel", "master", SERVICE]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1))
            .unwrap_or(&"")
            .to_string()
    }

    /// Waits until every sentinel knows the other two and the replica,
    /// and the replica is in sync: from then on a failover can happen.
    pub fn wait_ready_for_failover(&self) {
        wait_until(
            "sentinels to discover each other and the replica",
            Duration::from_secs(30),
            || {
                self.ports.iter().all(|&p| {
                    self.master_field(p, "num-other-sentinels") == "2"
                        && self.master_field(p, "num-slaves") == "1"
                })
            },
        );
        wait_until("the replica to sync", Duration::from_secs(30), || {
            self.replica
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
        });
    }

    /// The primary's port as the first sentinel names it now.
    pub fn primary_port(&self) -> u16 {
        let out = self.sentinel_cli(
            self.ports[0],
            &["sentinel", "get-master-addr-by-name", SERVICE],
        );
        out.lines().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    pub fn with_query(mut self, q: &str) -> SentinelSet {
        self.query = q.to_string();
        self
    }
}

impl Server for SentinelSet {
    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        format!("redis+sentinel://{}/{SERVICE}{q}", hosts.join(","))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for c in self.sentinels.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
