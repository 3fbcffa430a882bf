//! A private redis-server for one test: free port, temp dir, no persistence.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::backends::Faults;
use super::{free_port, require, wait_until, Server};

pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    password: Option<String>,
    /// Serve TLS (only) with the certificates in this directory.
    tls: Option<PathBuf>,
    /// More redis-server options, such as `--maxmemory-policy allkeys-lru`.
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(None, None)
    }

    /// A TLS-only server using `ca.crt`, `server.crt` and `server.key` from `certs`.
    pub fn with_tls(certs: &std::path::Path) -> Redis {
        Self::start_with(None, Some(certs.to_path_buf()))
    }

    /// A server that requires `password` (for auth-failure and redaction tests).
    pub fn with_password(password: &str) -> Redis {
        Self::start_with(Some(password.to_string()), None)
    }

    /// A server started with these extra redis-server options.
    pub fn with_args(args: &[&str]) -> Redis {
        Self::start_full(None, None, args)
    }

    fn start_with(password: Option<String>, tls: Option<PathBuf>) -> Redis {
        Self::start_full(password, tls, &[])
    }

    fn start_full(password: Option<String>, tls: Option<PathBuf>, args: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            port: 0,
            dir,
            child: Mutex::new(None),
            password,
            tls,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        r.launch();
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn launch(&mut self) {
        let port = self.launch_on(self.port);
        self.port = port;
    }

    /// Starts redis-server (on `port`, or a free one when 0) and returns the port.
    fn launch_on(&self, fixed: u16) -> u16 {
        let bin = require("redis-server", "redis-server");
        // The port may be taken between choosing and binding it; try a few.
        for _ in 0..5 {
            let port = if fixed == 0 { free_port() } else { fixed };
            let mut cmd = Command::new(&bin);
            match &self.tls {
                None => cmd.args(["--port", &port.to_string()]),
                Some(c) => cmd
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(c.join("server.crt"))
                    .arg("--tls-key-file")
                    .arg(c.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(c.join("ca.crt")),
            };
            cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--unixsocket")
                .arg(self.socket())
                .args([
                    "--unixsocketperm",
                    "700",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ]);
            if let Some(p) = &self.password {
                cmd.args(["--requirepass", p]);
            }
            cmd.args(&self.args);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            // Tied to the test process: a server shared through a static is never dropped.
            let mut child = super::spawn_tied(cmd).expect("start redis-server");
            let ok = {
                let mut ok = false;
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        ok = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                ok
            };
            if ok {
                *self.child.lock().unwrap() = Some(child);
                return port;
            }
            let _ = child.kill();
            let _ = child.wait();
            if fixed != 0 {
                // Restarting on a fixed port: the old socket may linger briefly.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server did not start");
    }

    fn pid(&self) -> i32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .expect("redis is running")
            .id() as i32
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        super::send(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port with every key lost.
    pub fn restart_empty(&self) {
        self.stop();
        let port = self.port;
        wait_until(
            "the old redis port to free",
            Duration::from_secs(10),
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        );
        self.launch_on(port);
    }

    /// Runs a raw command through redis-cli (for inspecting server state).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            c.args(["-a", p, "--no-auth-warning"]);
        }
        let out = c.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Server for Redis {
    fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }
}

/// No persistence: a restart loses every key (no `durable`).
impl Faults for Redis {
    fn kill(&self) {
        self.stop()
    }
    fn restart(&self) {
        self.restart_empty()
    }
    fn pause(&self) {
        Redis::pause(self)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn resume(&self) {
        Redis::resume(self)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.lock().unwrap().as_ref() {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.stop();
    }
}
