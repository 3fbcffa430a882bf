//! Private ZooKeeper servers (Debian's `zookeeper` package, run with the
//! system Java) on free loopback ports in temp dirs: a standalone server
//! shared by the tests of one binary, or an ensemble of several for fault
//! tests, whose members can be killed and started again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::backends::Faults;
use super::{free_port, require, Server};

const JAR: &str = "/usr/share/java/zookeeper.jar";

/// One server of an ensemble (or the only one).
struct Member {
    id: usize,
    client: u16,
    quorum: u16,
    election: u16,
    child: Mutex<Option<Child>>,
}

pub struct ZooKeeper {
    dir: PathBuf,
    /// Removed on drop; None for the shared server, which is removed at exit.
    _tmp: Option<tempfile::TempDir>,
    members: Vec<Member>,
    tick_ms: u64,
}

impl ZooKeeper {
    /// The standalone server shared by every test of this binary.
    pub fn shared() -> Arc<ZooKeeper> {
        static SHARED: OnceLock<Arc<ZooKeeper>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap().keep();
                let zk = Arc::new(ZooKeeper::launch(dir, None, 1, 2000));
                extern "C" fn cleanup() {
                    if let Some(zk) = SHARED.get() {
                        for i in 0..zk.members.len() {
                            zk.kill(i);
                        }
                        let _ = std::fs::remove_dir_all(&zk.dir);
                    }
                }
                unsafe { libc::atexit(cleanup) };
                zk
            })
            .clone()
    }

    /// An ensemble of `n` servers of its own (1: a standalone server), with
    /// a short tick (500 ms) so that elections and session expiry are quick.
    pub fn ensemble(n: usize) -> ZooKeeper {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        ZooKeeper::launch(dir, Some(tmp), n, 500)
    }

    fn launch(dir: PathBuf, tmp: Option<tempfile::TempDir>, n: usize, tick_ms: u64) -> ZooKeeper {
        require("java", "default-jre-headless");
        assert!(
            Path::new(JAR).exists(),
            "{JAR} not found: install ZooKeeper with `sudo apt-get install zookeeper` (the README test command does this)"
        );
        let members = (1..=n)
            .map(|id| Member {
                id,
                client: free_port(),
                quorum: free_port(),
                election: free_port(),
                child: Mutex::new(None),
            })
            .collect();
        let zk = ZooKeeper {
            dir,
            _tmp: tmp,
            members,
            tick_ms,
        };
        for i in 0..n {
            zk.write_config(i);
            zk.start(i);
        }
        zk.await_quorum(Duration::from_secs(60));
        zk
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("zk{}", self.members[i].id))
    }

    fn write_config(&self, i: usize) {
        let m = &self.members[i];
        let dir = self.member_dir(i);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/myid"), format!("{}\n", m.id)).unwrap();
        let mut cfg = format!(
            "tickTime={}\ninitLimit=20\nsyncLimit=4\ndataDir={}\nclientPort={}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=srvr,ruok,mntr\n",
            self.tick_ms,
            dir.join("data").display(),
            m.client
        );
        if self.members.len() > 1 {
            for o in &self.members {
                cfg.push_str(&format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    o.id, o.quorum, o.election
                ));
            }
        }
        std::fs::write(dir.join("zoo.cfg"), cfg).unwrap();
    }

    /// Starts member `i` (again) with its data as it was.
    pub fn start(&self, i: usize) {
        let main = if self.members.len() > 1 {
            "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        } else {
            "org.apache.zookeeper.server.ZooKeeperServerMain"
        };
        let dir = self.member_dir(i);
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut cmd = Command::new(require("java", "default-jre-headless"));
        // A small heap and the client compiler: ~60 MB and a fast start each.
        cmd.args([
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            JAR,
            main,
        ])
        .arg(dir.join("zoo.cfg"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = super::spawn_tied(cmd).expect("start java");
        *self.members[i].child.lock().unwrap() = Some(child);
    }

    /// SIGKILLs member `i`.
    pub fn kill(&self, i: usize) {
        if let Some(mut c) = self.members[i].child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member, empties their data directories and starts them
    /// again: an ensemble that lost everything it stored.
    pub fn restart_empty(&self) {
        for i in 0..self.members.len() {
            self.kill(i);
            let data = self.member_dir(i).join("data");
            std::fs::remove_dir_all(&data).unwrap();
            self.write_config(i);
        }
        for i in 0..self.members.len() {
            self.start(i);
        }
        self.await_quorum(Duration::from_secs(60));
    }

    /// A four-letter command's answer from member `i`, if it answers.
    fn ask(&self, i: usize, command: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.members[i].client)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(command.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// What `srvr` says member `i`'s mode is ("leader", "follower",
    /// "standalone"), or None while it does not serve.
    pub fn mode(&self, i: usize) -> Option<String> {
        self.ask(i, "srvr")?
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_string())
    }

    /// The server's version, as `srvr` gives it ("3.8.0").
    pub fn version(&self) -> Option<String> {
        let out = self.ask(0, "srvr")?;
        let v = out
            .lines()
            .find_map(|l| l.strip_prefix("Zookeeper version: "))?;
        Some(v.split(['-', ',']).next()?.trim().to_string())
    }

    /// Requests received by all members so far (`mntr`'s zk_packets_received).
    pub fn packets_received(&self) -> u64 {
        (0..self.members.len())
            .filter_map(|i| self.ask(i, "mntr"))
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("zk_packets_received"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i]
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.id())
    }

    /// The member that leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
    }

    /// Waits until every running member serves (one of them leading).
    pub fn await_quorum(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].child.lock().unwrap().is_some())
                .collect();
            let modes: Vec<Option<String>> = running.iter().map(|&i| self.mode(i)).collect();
            let lead = modes
                .iter()
                .any(|m| matches!(m.as_deref(), Some("leader" | "standalone")));
            if lead && modes.iter().all(Option::is_some) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "ZooKeeper did not serve within {timeout:?} (modes {modes:?}); see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client port of member `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    /// A URL listing the given client ports.
    pub fn url_of(ports: &[u16]) -> String {
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("zk://{}", hosts.join(","))
    }
}

impl Server for ZooKeeper {
    fn url(&self) -> String {
        let ports: Vec<u16> = self.members.iter().map(|m| m.client).collect();
        ZooKeeper::url_of(&ports)
    }
}

/// Every member at once: an ensemble of one (`ZooKeeper::ensemble(1)`) is a server.
impl Faults for ZooKeeper {
    fn kill(&self) {
        for i in 0..self.members.len() {
            ZooKeeper::kill(self, i);
        }
    }
    fn restart(&self) {
        for i in 0..self.members.len() {
            self.start(i);
        }
        self.await_quorum(Duration::from_secs(60));
    }
    fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }
    fn port(&self) -> u16 {
        assert_eq!(self.members.len(), 1, "one address: an ensemble of one");
        ZooKeeper::port(self, 0)
    }
    fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }
}

impl ZooKeeper {
    fn signal_all(&self, sig: i32) {
        for i in 0..self.members.len() {
            if let Some(pid) = self.pid(i) {
                super::send(pid as i32, sig);
            }
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
