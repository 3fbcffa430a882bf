//! Test harness: private servers on free loopback ports in temp dirs, and
//! helpers to run the real dlock binary.
#![allow(dead_code, unused_imports)]

pub mod backends;
pub mod cluster;
pub mod daemon;
pub mod etcd;
pub mod mariadb;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod redlock;
pub mod sentinel;
pub mod sqlite;
pub mod zookeeper;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use self::redis::Redis;

/// A backend under test: whatever it is, dlock reaches it by URL.
pub trait Server: Send + Sync {
    fn url(&self) -> String;
}

/// A free loopback TCP port (the OS picks it; the listener is closed at once).
/// The cargo feature that builds in the backend of `url`'s scheme, and
/// whether this build has it.
pub fn feature_of(url: &str) -> (&'static str, bool) {
    match url.split("://").next().unwrap_or("") {
        "sqlite" => ("sqlite", cfg!(feature = "sqlite")),
        "mysql" => ("mysql", cfg!(feature = "mysql")),
        "postgres" | "postgresql" => ("postgres", cfg!(feature = "postgres")),
        "etcd" | "etcds" => ("etcd", cfg!(feature = "etcd")),
        "zk" | "zookeeper" => ("zookeeper", cfg!(feature = "zookeeper")),
        "rediss" => ("redis-tls", cfg!(feature = "redis-tls")),
        _ => ("redis", cfg!(feature = "redis")),
    }
}

/// Sends `sig` to `pid`; for SIGSTOP, returns only once every thread of it
/// has stopped. kill() returns as soon as one thread is to take the stop: on
/// a loaded machine the other threads of etcd, MariaDB or ZooKeeper ran on
/// for milliseconds and answered a request "to a paused server".
pub fn send(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a stale pid only fails.
    unsafe { libc::kill(pid, sig) };
    if sig != libc::SIGSTOP {
        return;
    }
    wait_until(
        "every thread of the server stopped",
        Duration::from_secs(10),
        || all_threads_stopped(pid),
    );
}

/// Whether every thread of `pid` is stopped (or the process is gone).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state follows the ")" that ends the command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        matches!(state, None | Some('T' | 't' | 'Z' | 'X'))
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind to a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Path to a server binary, or a panic that says what to install.
pub fn require(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!("{binary} not found: install it with `sudo apt-get install {package}` (the README test command does this)");
}

/// Polls `ready` until it holds: a server's readiness is an event we can only observe by asking.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn dlock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dlock"))
}

/// A dlock command bound to a backend URL, with a clean environment for DLOCK_*.
pub fn dlock(url: &str) -> Command {
    let mut c = Command::new(dlock_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("DLOCK_") {
            c.env_remove(k);
        }
    }
    c.env("DLOCK_URL", url);
    c
}

pub fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run dlock")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run that said what failed in one line, with the exit code `want_code`.
pub fn one_line_error(o: &Output, want_code: i32, want: &str) {
    let err = stderr(o);
    assert_eq!(code(o), want_code, "{err}");
    assert!(err.contains(want), "expected '{want}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("dlock: "), "{err}");
}

/// What a spawned process wrote on its piped stderr, up to its end.
pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// A number a test command wrote to a file.
pub fn read_i64(path: &std::path::Path) -> i64 {
    let s = std::fs::read_to_string(path).unwrap();
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}: {s:?}", path.display()))
}

/// `dlock exec --lease LEASE job -- sh -c RECORDER(tag)` in the background.
pub fn exec_recorder(ctx: &Ctx, lease: &str, tag: &str) -> std::process::Child {
    spawn(ctx.cmd(&[
        "exec",
        "--lease",
        lease,
        "job",
        "--",
        "sh",
        "-c",
        &recorder(ctx, tag),
    ]))
}

/// A command that records when it starts (µs) and its fence, and runs until
/// `stop` appears; on SIGTERM it records when it stopped.
pub fn recorder(ctx: &Ctx, tag: &str) -> String {
    let p = |f: &str| ctx.path(&format!("{tag}.{f}")).display().to_string();
    format!(
        "printf %s \"$DLOCK_FENCE\" > '{fence}'; date +%s%6N > '{start}.tmp'; mv '{start}.tmp' '{start}'; \
         trap 'date +%s%6N > \"{end}\"; exit 0' TERM; \
         while [ ! -e '{stop}' ]; do sleep 0.02; done; date +%s%6N > '{end}'",
        fence = p("fence"),
        start = p("start"),
        end = p("end"),
        stop = p("stop"),
    )
}

/// Spawns dlock in the background with stdio captured.
pub fn spawn(mut c: Command) -> Child {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dlock")
}

/// Waits for a file to appear (a marker written by a child), with a deadline.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    wait_until(&format!("{}", path.display()), timeout, || path.exists());
}

/// Waits for a child with a deadline; kills it and panics past the deadline.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie counts as gone: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: i32) {
    unsafe { libc::kill(pid as i32, sig) };
}

/// One test's view of a backend: its URL plus a prefix of its own, so tests
/// can share a server without seeing each other's locks.
pub struct Ctx {
    pub server: std::sync::Arc<dyn Server>,
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Ctx {
    pub fn new(server: std::sync::Arc<dyn Server>) -> Ctx {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ctx {
            server,
            prefix: format!("t{}x{n}", std::process::id()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `dlock ARGS` against this test's backend and prefix.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = dlock(&self.url());
        c.env("DLOCK_PREFIX", &self.prefix).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Takes `name` and returns the token.
    pub fn acquire(&self, name: &str, lease: &str) -> String {
        let o = self.run(&["acquire", name, "--lease", lease]);
        assert_eq!(code(&o), 0, "acquire {name}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    }

    /// `acquire ARGS` (names and options); returns the token.
    pub fn acquire_args(&self, args: &[&str]) -> String {
        let o = self.cmd(&["acquire"]).args(args).output().unwrap();
        assert_eq!(code(&o), 0, "acquire {args:?}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    }

    pub fn status_json(&self, names: &[&str]) -> serde_json::Value {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(names);
        let o = self.run(&args);
        assert!(code(&o) <= 1, "status: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("status --json prints JSON")
    }

    /// `workers` shell loops at once, each running `dlock exec ARGS -- sh -c
    /// "$SECTION"` `each` times (stopping with exit 9 at the first failure);
    /// returns how each loop ended, with what it wrote on stderr.
    pub fn run_workers(
        &self,
        workers: usize,
        each: usize,
        exec_args: &str,
        section: &str,
    ) -> Vec<(std::process::ExitStatus, String)> {
        let script = format!(
            "i=0; while [ $i -lt {each} ]; do \"$DLOCK_BIN\" exec {exec_args} -- sh -c \"$SECTION\" || exit 9; i=$((i+1)); done"
        );
        let mut kids: Vec<Child> = (0..workers)
            .map(|_| {
                let mut c = Command::new("sh");
                c.args(["-c", &script])
                    .env("DLOCK_BIN", dlock_bin())
                    .env("DLOCK_URL", self.url())
                    .env("DLOCK_PREFIX", &self.prefix)
                    .env("SECTION", section);
                spawn(c)
            })
            .collect();
        kids.iter_mut()
            .map(|k| {
                let st = wait_child(k, Duration::from_secs(120));
                let mut err = String::new();
                if let Some(mut e) = k.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                (st, err)
            })
            .collect()
    }

    pub fn is_held(&self, name: &str) -> bool {
        let o = self.run(&["status", name]);
        match code(&o) {
            0 => true,
            1 => false,
            c => panic!("status {name} exited {c}: {}", stderr(&o)),
        }
    }
}

/// Wall-clock now in ms since the epoch (to compare with server-side expiry).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Blocks until process `pid` (any process, not only a child) has exited, via
/// a pidfd; returns false if it still runs after `timeout`.
pub fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return true; // already gone
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    unsafe { libc::close(fd) };
    n == 1
}

/// A named pipe a child writes a line to when it reaches a point, so the test
/// awaits that event instead of sleeping.
pub struct Fifo {
    pub path: PathBuf,
}

impl Fifo {
    pub fn new(dir: &Path, name: &str) -> Fifo {
        let path = dir.join(name);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        Fifo { path }
    }

    /// The next line written to the pipe, or a panic after `timeout`.
    pub fn read_line(&self, timeout: Duration) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = self.path.clone();
        std::thread::spawn(move || {
            let s = std::fs::read_to_string(&path).unwrap_or_default();
            let _ = tx.send(s);
        });
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| {
                panic!(
                    "nothing written to {} within {timeout:?}",
                    self.path.display()
                )
            })
            .trim()
            .to_string()
    }

    /// Writes a line (unblocking a child that reads the pipe).
    pub fn write_line(&self, line: &str) {
        std::fs::write(&self.path, format!("{line}\n")).unwrap();
    }
}

/// Lines a spawned process writes to stderr, as they come.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn of(child: &mut Child) -> Lines {
        use std::io::BufRead;
        let err = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with '{needle}' within {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Everything until the process closes stderr.
    pub fn rest(&mut self) -> String {
        while let Ok(l) = self.rx.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }
}

/// A private CA (`ca.crt`) and a server certificate for localhost and
/// 127.0.0.1 signed by it (`server.crt`, `server.key`), made with openssl.
pub fn make_certs(dir: &Path) {
    require("openssl", "openssl");
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dlock-test-ca -keyout ca.key -out ca.crt 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null");
    sh("printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt 2>/dev/null");
}

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it is SIGKILLed when the test process dies. The
/// parent-death signal fires when the forking *thread* exits, so every server
/// is forked by one thread that never does.
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    let parent = unsafe { libc::getpid() };
                    // SAFETY: prctl and getppid are async-signal-safe.
                    unsafe {
                        cmd.pre_exec(move || {
                            libc::prctl(
                                libc::PR_SET_PDEATHSIG,
                                libc::SIGKILL as libc::c_ulong,
                                0,
                                0,
                                0,
                            );
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("spawner alive");
    reply_rx.recv().expect("spawner replies")
}
