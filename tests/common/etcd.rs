//! Private etcd members on free loopback ports in temp dirs: one member
//! shared by a test binary (tests keep apart by prefix), or a cluster of
//! three of its own for a fault test, whose members can be killed and
//! started again on the same ports and data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::backends::Faults;
use super::{free_port, require, wait_until, Server};

pub struct Etcd {
    dir: PathBuf,
    /// Serve clients over TLS with `server.crt`/`server.key` from here.
    tls: Option<PathBuf>,
    /// Removed on drop; None for the shared member, which is removed at exit.
    _tmp: Option<tempfile::TempDir>,
    pub members: Vec<Member>,
}

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    child: Mutex<Option<Child>>,
}

impl Etcd {
    /// The single member shared by every test of this binary.
    pub fn shared() -> Arc<Etcd> {
        static SHARED: OnceLock<Arc<Etcd>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap().keep();
                let e = Arc::new(Etcd::start_in(dir, None, 1, None));
                extern "C" fn cleanup() {
                    if let Some(e) = SHARED.get() {
                        for i in 0..e.members.len() {
                            e.kill(i);
                        }
                        let _ = std::fs::remove_dir_all(&e.dir);
                    }
                }
                unsafe { libc::atexit(cleanup) };
                e
            })
            .clone()
    }

    /// A cluster of `n` members of its own, for tests that kill members.
    pub fn cluster(n: usize) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Etcd::start_in(dir, Some(tmp), n, None)
    }

    /// One member of its own serving clients over TLS only, with the
    /// certificates of `common::make_certs` in `certs`.
    pub fn with_tls(certs: &Path) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Etcd::start_in(dir, Some(tmp), 1, Some(certs.to_path_buf()))
    }

    fn start_in(
        dir: PathBuf,
        mut tmp: Option<tempfile::TempDir>,
        n: usize,
        tls: Option<PathBuf>,
    ) -> Etcd {
        require("etcd", "etcd-server");
        // Ports may be taken between choosing and binding them: try a few sets.
        for _ in 0..5 {
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client: free_port(),
                    peer: free_port(),
                    child: Mutex::new(None),
                })
                .collect();
            let mut e = Etcd {
                dir: dir.clone(),
                tls: tls.clone(),
                _tmp: None,
                members,
            };
            for i in 0..n {
                e.start(i);
            }
            if e.await_healthy(Duration::from_secs(20)) {
                e._tmp = tmp.take();
                return e;
            }
            for i in 0..n {
                e.kill(i);
            }
            let _ = std::fs::remove_dir_all(dir.join("data"));
        }
        panic!("etcd did not start; see the logs in {}", dir.display());
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(&self.members[i].name)
    }

    /// Starts member `i` (again: on its ports, with its data).
    pub fn start(&self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut cmd = Command::new(require("etcd", "etcd-server"));
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(certs) = &self.tls {
            cmd.arg("--cert-file")
                .arg(certs.join("server.crt"))
                .arg("--key-file")
                .arg(certs.join("server.key"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // Tied to the test process: a member shared through a static is never dropped.
        let child = super::spawn_tied(cmd).expect("start etcd");
        *m.child.lock().unwrap() = Some(child);
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&self, i: usize) {
        if let Some(mut c) = self.members[i].child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i]
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.id())
    }

    /// `host:port` of the members' client URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl against every member, or only `only`; stdout, or None on failure.
    pub fn ctl(&self, only: Option<usize>, args: &[&str]) -> Option<String> {
        let endpoints = match only {
            Some(i) => format!("127.0.0.1:{}", self.members[i].client),
            None => self.endpoints(),
        };
        let mut c = Command::new(require("etcdctl", "etcd-client"));
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints, "--command-timeout", "2s"]);
        if let Some(certs) = &self.tls {
            c.arg("--cacert").arg(certs.join("ca.crt"));
        }
        let o = c.args(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Waits until every running member is healthy (a leader is elected
    /// and a write went through); false at the timeout.
    pub fn await_healthy(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.pid(*i).is_some())
                .collect();
            if running
                .iter()
                .all(|i| self.ctl(Some(*i), &["endpoint", "health"]).is_some())
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The index of the member that leads now, as the running members say.
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.pid(i).is_none() {
                continue;
            }
            let Some(out) = self.ctl(Some(i), &["endpoint", "status", "-w", "json"]) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let s = &v[0]["Status"];
            let (me, leader) = (s["header"]["member_id"].as_u64(), s["leader"].as_u64());
            if leader.is_some() && me == leader {
                return Some(i);
            }
        }
        None
    }

    /// Blocks until some running member leads; its index.
    pub fn await_leader(&self, timeout: Duration) -> usize {
        let mut found = None;
        wait_until("an etcd leader", timeout, || {
            found = self.leader();
            found.is_some()
        });
        found.unwrap()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Server for Etcd {
    fn url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }
}

/// Every member at once: a cluster of one (`Etcd::cluster(1)`) is a server.
impl Faults for Etcd {
    fn kill(&self) {
        for i in 0..self.members.len() {
            Etcd::kill(self, i);
        }
    }
    fn restart(&self) {
        for i in 0..self.members.len() {
            self.start(i);
        }
        assert!(
            self.await_healthy(Duration::from_secs(30)),
            "etcd did not come back; see the logs in {}",
            self.dir.display()
        );
    }
    fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }
    fn port(&self) -> u16 {
        assert_eq!(self.members.len(), 1, "one address: a cluster of one");
        self.members[0].client
    }
    fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }
}

impl Etcd {
    fn signal_all(&self, sig: i32) {
        for i in 0..self.members.len() {
            if let Some(pid) = self.pid(i) {
                super::send(pid as i32, sig);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
