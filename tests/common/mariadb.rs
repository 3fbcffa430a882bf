//! Private mariadbd servers on free loopback ports, run as the current user
//! from a temp dir, with a password-protected user for dlock.
//!
//! Starting one takes a second or two, so a test binary shares one (tests
//! keep apart by prefix); fault tests that kill a server start their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::backends::Faults;
use super::daemon;
use super::{free_port, require, wait_until, Ctx, Server};

pub const USER: &str = "dlock";
pub const PASSWORD: &str = "s3cret-Pw";
pub const DATABASE: &str = "dlock_test";

pub struct MariaDb {
    pub port: u16,
    dir: PathBuf,
    /// Removed on drop; None for the shared server, which is removed at exit.
    _tmp: Option<tempfile::TempDir>,
    child: Mutex<Option<Child>>,
    /// Server options beyond the defaults, kept for restarts.
    extra: Vec<String>,
}

impl MariaDb {
    /// The server shared by every test of this binary.
    pub fn shared() -> Arc<MariaDb> {
        static SHARED: OnceLock<Arc<MariaDb>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap().keep();
                let db = Arc::new(MariaDb::start_in(dir, None, Vec::new()));
                extern "C" fn cleanup() {
                    if let Some(db) = SHARED.get() {
                        db.kill();
                        let _ = std::fs::remove_dir_all(&db.dir);
                    }
                }
                unsafe { libc::atexit(cleanup) };
                db
            })
            .clone()
    }

    /// A server of its own, for tests that kill or restart it.
    pub fn start() -> MariaDb {
        MariaDb::start_with(&[])
    }

    /// A server of its own with extra mariadbd options (e.g. for TLS).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        MariaDb::start_in(dir, Some(tmp), extra)
    }

    fn start_in(dir: PathBuf, tmp: Option<tempfile::TempDir>, extra: Vec<String>) -> MariaDb {
        copy_template(&dir.join("data"));
        let (child, port) = launch(&dir, None, &extra);
        let db = MariaDb {
            port,
            dir,
            _tmp: tmp,
            child: Mutex::new(Some(child)),
            extra,
        };
        // The grant covers every dlock_* database, so that a missing one is
        // reported as unknown rather than as access denied.
        db.sql(&format!(
            "CREATE DATABASE {DATABASE}; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON `dlock\\_%`.* TO '{USER}'@'%';"
        ));
        db
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn pid(&self) -> Option<i32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL: no clean shutdown, as when the host or the process dies.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        if let Some(p) = self.pid() {
            super::send(p, libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(p) = self.pid() {
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }

    /// Starts the server again on the same port with the same data (crash recovery).
    pub fn restart(&self) {
        self.kill();
        let port = self.port;
        wait_until(
            "the old mariadb port to free",
            Duration::from_secs(20),
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        );
        let (child, _) = launch(&self.dir, Some(port), &self.extra);
        *self.child.lock().unwrap() = Some(child);
    }

    /// Runs SQL as root over the unix socket and returns the tab-separated rows.
    pub fn sql(&self, q: &str) -> String {
        let cli = require("mariadb", "mariadb-client");
        let mut last = String::new();
        // Right after start-up the socket may not accept connections yet.
        for _ in 0..100 {
            let out = Command::new(&cli)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "-N", "-B", "-e", q])
                .stdin(Stdio::null())
                .output()
                .expect("run mariadb");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if !last.contains("Can't connect") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("SQL failed: {q}: {last}");
    }

    /// A URL for this server with other credentials or database.
    pub fn url_with(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "mysql://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("err.log")).unwrap_or_default()
    }
}

/// Starts mariadbd on `port` (or a free one) and waits until it accepts connections.
fn launch(dir: &Path, port: Option<u16>, extra: &[String]) -> (Child, u16) {
    let bin = require("mariadbd", "mariadb-server");
    let command = |port: u16| {
        let mut cmd = Command::new(&bin);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-log-file-size=4M",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=500",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let ready = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    daemon::launch(
        "mariadbd",
        port,
        &dir.join("err.log"),
        command,
        ready,
        Duration::from_millis(200),
    )
}

impl Server for MariaDb {
    fn url(&self) -> String {
        self.url_with(USER, PASSWORD, DATABASE)
    }
}

impl Faults for MariaDb {
    fn kill(&self) {
        MariaDb::kill(self)
    }
    fn restart(&self) {
        MariaDb::restart(self)
    }
    fn pause(&self) {
        MariaDb::pause(self)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn resume(&self) {
        MariaDb::resume(self)
    }
    fn expires_us(&self, ctx: &Ctx, name: &str) -> i64 {
        self.sql(&format!(
            "SELECT expires_us FROM {DATABASE}.`{}_leases` WHERE name = '{name}'",
            ctx.prefix
        ))
        .parse()
        .unwrap()
    }
    fn end_sessions(&self) -> usize {
        let ids = self.sql(&format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{USER}'"
        ));
        for id in ids.lines() {
            self.sql(&format!("KILL {id}"));
        }
        ids.lines().count()
    }
    fn wake_holder(&self, ctx: &Ctx, name: &str) -> Option<String> {
        let c = self.sql(&format!("SELECT IS_USED_LOCK('{}')", wake_lock(ctx, name)));
        (c != "NULL").then_some(c)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A freshly installed data directory, made once and kept under cargo's
/// target tmp dir: running mariadb-install-db for every server was slow, and
/// concurrent installs tripped over each other's temporary tables in /tmp.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bin = require("mariadbd", "mariadb-server");
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        daemon::template(base, "mariadb-template", &bin, |work| {
            let install = require("mariadb-install-db", "mariadb-server");
            let out = Command::new(install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", work.join("data").display()))
                .arg(format!("--tmpdir={}", work.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--innodb-log-file-size=4M",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    })
}

fn copy_template(data: &Path) {
    daemon::copy_data(template(), data);
}

/// FNV-1a 128 as dlock computes wake-up lock names (see src/backend/sql/mod.rs).
pub fn wake_lock(ctx: &Ctx, name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in format!("{DATABASE}\0{}_leases\0{name}", ctx.prefix).bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("dlock-{h:032x}")
}
