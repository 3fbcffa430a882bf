//! Private PostgreSQL servers on free loopback ports, each with its data
//! and its socket in a temp dir, with a password-protected user for dlock.
//! The server refuses to run as root, so under root it runs as the
//! `postgres` user that the Debian package creates.
//!
//! A test binary shares one (tests keep apart by prefix); fault tests that
//! kill a server start their own, from a data directory made once by
//! initdb and copied.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::backends::Faults;
use super::daemon;
use super::{free_port, wait_until, Ctx, Server};

pub const USER: &str = "dlock";
pub const PASSWORD: &str = "s3cret-Pw";
pub const DATABASE: &str = "dlock_test";

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    /// Removed on drop; None for the shared server, which is removed at exit.
    _tmp: Option<tempfile::TempDir>,
    child: Mutex<Option<Child>>,
    /// Server settings beyond the defaults (`name=value`), kept for restarts.
    extra: Vec<String>,
}

/// The directory of the newest installed server's programs.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "initdb not found under /usr/lib/postgresql: install it with `sudo apt-get install postgresql` (the README test command does this)"
        ),
    }
}

/// The server refuses root: run it as `postgres` then (uid, gid).
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no 'postgres' user to run the test server as (the postgresql package creates it)"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn as_server_user(cmd: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
}

pub fn give_to_server_user(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl Postgres {
    /// The server shared by every test of this binary.
    pub fn shared() -> Arc<Postgres> {
        static SHARED: OnceLock<Arc<Postgres>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap().keep();
                let db = Arc::new(Postgres::start_in(dir, None, Vec::new()));
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
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// A server of its own with extra settings (`name=value`, e.g. for TLS).
    pub fn start_with(extra: &[&str]) -> Postgres {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Postgres::start_in(dir, Some(tmp), extra)
    }

    fn start_in(dir: PathBuf, tmp: Option<tempfile::TempDir>, extra: Vec<String>) -> Postgres {
        give_to_server_user(&dir);
        copy_template(&dir.join("data"));
        let (child, port) = launch(&dir, None, &extra);
        let db = Postgres {
            port,
            dir,
            _tmp: tmp,
            child: Mutex::new(Some(child)),
            extra,
        };
        db.sql_in(
            "postgres",
            &format!("CREATE USER {USER} PASSWORD '{PASSWORD}'"),
        );
        db.sql_in(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        );
        db
    }

    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    fn pid(&self) -> Option<i32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL to the postmaster: no clean shutdown, as when the host dies
    /// (its backends exit when they see it gone).
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP to the postmaster and its backends: the sockets stay, nothing answers.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    fn signal_all(&self, sig: i32) {
        let Some(p) = self.pid() else { return };
        let mut pids = vec![p];
        let children = format!("/proc/{p}/task/{p}/children");
        if let Ok(s) = std::fs::read_to_string(children) {
            pids.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        for pid in pids {
            super::send(pid, sig);
        }
    }

    /// Starts the server again on the same port with the same data (crash recovery).
    pub fn restart(&self) {
        self.kill();
        let port = self.port;
        wait_until(
            "the old postgres port to free",
            Duration::from_secs(20),
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        );
        let (child, _) = launch(&self.dir, Some(port), &self.extra);
        *self.child.lock().unwrap() = Some(child);
    }

    /// Runs SQL as the superuser over the unix socket, in `database`, and
    /// returns the rows, columns tab-separated.
    pub fn sql_in(&self, database: &str, q: &str) -> String {
        let mut last = String::new();
        // Right after start-up the server may not accept connections yet.
        for _ in 0..200 {
            let out = Command::new(bin_dir().join("psql"))
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\t"])
                .arg("-h")
                .arg(&self.dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-c", q])
                .stdin(Stdio::null())
                .output()
                .expect("run psql");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            // Not up yet, or still recovering after a crash.
            if !last.contains("connection to server") {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("SQL failed: {q}: {last}");
    }

    /// SQL in the test database.
    pub fn sql(&self, q: &str) -> String {
        self.sql_in(DATABASE, q)
    }

    /// A URL for this server with other credentials or database.
    pub fn url_with(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// Starts postgres on `port` (or a free one) and waits until it accepts connections.
fn launch(dir: &Path, port: Option<u16>, extra: &[String]) -> (Child, u16) {
    let bin = bin_dir().join("postgres");
    let command = |port: u16| {
        let log = std::fs::File::create(dir.join("log")).unwrap();
        give_to_server_user(&dir.join("log"));
        let mut cmd = Command::new(&bin);
        cmd.arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(dir)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=16MB",
            ]);
        for e in extra {
            cmd.args(["-c", e]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        as_server_user(&mut cmd);
        cmd
    };
    let ready = |port: u16| {
        dir.join(format!(".s.PGSQL.{port}")).exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    };
    // Backends of a killed server may still hold its shared memory: 300 ms
    // before the next try.
    daemon::launch(
        "postgres",
        port,
        &dir.join("log"),
        command,
        ready,
        Duration::from_millis(300),
    )
}

impl Server for Postgres {
    fn url(&self) -> String {
        self.url_with(USER, PASSWORD, DATABASE)
    }
}

impl Faults for Postgres {
    fn kill(&self) {
        Postgres::kill(self)
    }
    fn restart(&self) {
        Postgres::restart(self)
    }
    fn pause(&self) {
        Postgres::pause(self)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn resume(&self) {
        Postgres::resume(self)
    }
    fn expires_us(&self, ctx: &Ctx, name: &str) -> i64 {
        self.sql(&format!(
            "SELECT expires_us FROM {}_leases WHERE name = '{name}'",
            ctx.prefix
        ))
        .parse()
        .unwrap()
    }
    fn end_sessions(&self) -> usize {
        self.sql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{USER}'"
        ))
        .parse()
        .unwrap()
    }
    /// The server process holding the name's advisory wake lock.
    fn wake_holder(&self, ctx: &Ctx, name: &str) -> Option<String> {
        let k = wake_key(ctx, name) as u64;
        let pid = self.sql(&format!(
            "SELECT coalesce(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory' \
             AND granted AND classid = {} AND objid = {} AND objsubid = 1",
            k >> 32,
            k & 0xffff_ffff
        ));
        (pid != "0").then_some(pid)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A data directory made by initdb once per server version and kept in
/// the temp dir (owned by the server's user, which must reach it).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let initdb = bin_dir().join("initdb");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let name = format!("dlock-pg-template-{uid}");
        daemon::template(&std::env::temp_dir(), &name, &initdb, |work| {
            give_to_server_user(work);
            let mut cmd = Command::new(&initdb);
            cmd.arg("-D")
                .arg(work.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                    "--no-instructions",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .stdin(Stdio::null());
            as_server_user(&mut cmd);
            let out = cmd.output().expect("run initdb");
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    })
}

fn copy_template(data: &Path) {
    daemon::copy_data(template(), data);
}

/// The advisory key dlock uses as the wake lock of `name` (see
/// src/backend/postgres/wake.rs): FNV-1a-128's first 8 bytes.
pub fn wake_key(ctx: &Ctx, name: &str) -> i64 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in format!("public.{}_leases\0{name}", ctx.prefix).bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    (h >> 64) as u64 as i64
}

/// PgBouncer in transaction mode in front of `Postgres`, on a free port:
/// each transaction of a client may run on another server session.
pub struct Bouncer {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl Bouncer {
    pub fn start(db: &Postgres) -> Bouncer {
        let bin = super::require("pgbouncer", "pgbouncer");
        let dir = tempfile::tempdir().unwrap();
        give_to_server_user(dir.path());
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{USER}\" \"{PASSWORD}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n{DATABASE} = host=127.0.0.1 port={} dbname={DATABASE}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {d}/users.txt\n\
                 pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 500\n\
                 server_round_robin = 1\n\
                 logfile = {d}/pgbouncer.log\nignore_startup_parameters = extra_float_digits\n",
                db.port
            ),
        )
        .unwrap();
        for f in ["users.txt", "pgbouncer.ini"] {
            give_to_server_user(&dir.path().join(f));
        }
        let mut cmd = Command::new(bin);
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_server_user(&mut cmd);
        let mut child = super::spawn_tied(cmd).expect("start pgbouncer");
        wait_until("pgbouncer to listen", Duration::from_secs(20), || {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("pgbouncer.log"));
                panic!("pgbouncer exited {st}: {}", log.unwrap_or_default());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Bouncer {
            port,
            _dir: dir,
            child: Mutex::new(Some(child)),
        }
    }
}

impl Bouncer {
    /// Makes the pool open a second server session, and checks it has two:
    /// one client keeps the first in an open transaction (which transaction
    /// mode does not share) until another client's statement has run, so
    /// that one needs a second. With `server_round_robin`, one client's
    /// transactions then go to each in turn. (A statement that merely took
    /// a while could end before the second client came, and leave the
    /// pool one session: then nothing shows a pooler.)
    pub fn warm(&self, db: &Postgres) {
        let psql = || {
            let mut c = Command::new(bin_dir().join("psql"));
            c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &self.port.to_string(), "-U", USER, "-d", DATABASE])
                .env("PGPASSWORD", PASSWORD)
                .stdout(Stdio::null());
            c
        };
        let mut first = psql().stdin(Stdio::piped()).spawn().expect("run psql");
        let mut input = first.stdin.take().unwrap();
        input.write_all(b"BEGIN;\nSELECT 'dlock warm';\n").unwrap();
        input.flush().unwrap();
        wait_until(
            "a transaction open through pgbouncer",
            Duration::from_secs(20),
            || self.sessions(db, "idle in transaction") == "1",
        );
        let second = psql()
            .args(["-c", "SELECT 1"])
            .stdin(Stdio::null())
            .status();
        assert!(second.unwrap().success(), "psql through pgbouncer");
        input.write_all(b"COMMIT;\n").unwrap();
        drop(input);
        assert!(first.wait().unwrap().success(), "psql through pgbouncer");
        assert_eq!(self.sessions(db, "%"), "2", "pgbouncer's server sessions");
    }

    /// How many server sessions the pool has (`state` a LIKE pattern).
    pub fn sessions(&self, db: &Postgres, state: &str) -> String {
        db.sql_in(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' \
                 AND backend_type = 'client backend' AND state LIKE '{state}'"
            ),
        )
    }
}

impl Server for Bouncer {
    fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
