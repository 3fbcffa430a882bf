//! dlock's benchmarks: `scripts/bench` (or `cargo bench --bench dlock`).
//!
//! Runs the release binary against private servers that the test harness
//! starts on free loopback ports in temp dirs (never a machine's own Redis or
//! MySQL), beside `flock` and hand-written `redis-cli` / `mariadb` spin locks,
//! and prints Markdown tables that also go into docs/benchmarks.md, with a
//! chart in docs/benchmarks.svg.
//!
//! Options after `--`: `--quick` (few iterations, for trying the suite out;
//! writes nothing unless `--write`), `--only redis,sqlite` (a subset of
//! backends), `--no-write` (print only), `--dlock PATH` (measure another
//! dlock binary, e.g. a candidate build; writes nothing), `--baseline PATH`
//! (also run a previous build, interleaved run by run with the measured one,
//! in the uncontended table; writes nothing).
//!
//! A custom harness (`harness = false`) runs only under `cargo bench`, which
//! passes `--bench`; `cargo test --all-targets` runs this binary without it,
//! and then it does nothing, so that no timing ever runs in the test suite.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "dlock/kinds.rs"]
mod kinds;
#[path = "dlock/uniform.rs"]
mod uniform;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::Server;

/// The command of a holder in the hand-off and memory runs: it says that it
/// runs, then holds until its stdin (a pipe from the bench) gets a line or closes.
const HOLD: &[&str] = &["sh", "-c", "echo running; read x"];

/// The critical section: read a counter file, add one, write it back; only
/// shell built-ins, so that no fork hides inside the measured section.
const SECTION: &str = r#"read n < "$BENCH_COUNTER"; echo $((n + 1)) > "$BENCH_COUNTER""#;

/// The same section with its start and end times logged, for the hand-offs
/// between sections (the two `date` calls slow every tool alike).
const TIMED_SECTION: &str = r#"echo "s $(date +%s%N)" >> "$BENCH_LOG"; read n < "$BENCH_COUNTER"; echo $((n + 1)) > "$BENCH_COUNTER"; echo "e $(date +%s%N)" >> "$BENCH_LOG""#;

const BEGIN: &str =
    "<!-- BEGIN scripts/bench output: regenerated on every run; edit outside these markers -->";
const END: &str = "<!-- END scripts/bench output -->";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("benches/dlock.rs: benchmarks run only under `cargo bench` (scripts/bench); nothing to do");
        return;
    }
    match Opts::parse(&args[1..]) {
        Ok(opts) => run(&opts),
        Err(e) => {
            eprintln!("scripts/bench: {e}");
            std::process::exit(2);
        }
    }
}

/// An option's value: the next argument, unless it is another option (cargo
/// appends `--bench` after the user's arguments).
fn value<'a>(it: &mut impl Iterator<Item = &'a String>) -> Option<&'a String> {
    it.next().filter(|v| !v.starts_with("--"))
}

/// The backends `--only` names; an unknown one is an error, not an empty run.
fn backend_list(v: &str) -> Result<Vec<String>, String> {
    let known: Vec<&str> = BACKENDS.iter().map(|(k, _)| *k).collect();
    v.split(',')
        .map(|b| {
            if known.contains(&b) {
                Ok(b.to_string())
            } else {
                Err(format!(
                    "--only: no backend '{b}'; choose from {}",
                    known.join(",")
                ))
            }
        })
        .collect()
}

/// What the bench measures, and how much of it.
struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
    write: bool,
    dlock: Option<PathBuf>,
    /// A previous dlock binary, run interleaved with the measured one.
    baseline: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            quick: false,
            only: None,
            write: true,
            dlock: None,
            baseline: None,
        };
        let mut write = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => {}
                "--quick" => o.quick = true,
                "--write" => write = Some(true),
                "--no-write" => write = Some(false),
                "--only" => {
                    let v = value(&mut it).ok_or(
                        "--only needs a list: redis,redlock,cluster,mysql,postgres,etcd,sqlite,zookeeper",
                    )?;
                    o.only = Some(backend_list(v)?);
                }
                "--dlock" => {
                    let v = value(&mut it).ok_or("--dlock needs the path of a dlock binary")?;
                    let bin = std::fs::canonicalize(v).map_err(|e| format!("--dlock {v}: {e}"))?;
                    o.dlock = Some(bin);
                }
                "--baseline" => {
                    let v = value(&mut it).ok_or("--baseline needs the path of a dlock binary")?;
                    let bin =
                        std::fs::canonicalize(v).map_err(|e| format!("--baseline {v}: {e}"))?;
                    o.baseline = Some(bin);
                }
                s if s.starts_with("--only=") => o.only = Some(backend_list(&s[7..])?),
                // cargo bench passes a name filter and libtest flags through; none apply.
                _ => {}
            }
        }
        let other = o.dlock.is_some() || o.baseline.is_some();
        o.write = write.unwrap_or(!o.quick && o.only.is_none() && !other);
        Ok(o)
    }

    fn sizes(&self) -> Sizes {
        if self.quick {
            Sizes {
                runs: 20,
                warmup: 2,
                tp: [(4, 8), (16, 2)],
                spin_tp: (4, 4),
                handoffs: 10,
                ops: (8, 3),
                spin_ops: (8, 2),
                depths: &[(1, 8), (4, 2), (16, 1), (64, 1)],
            }
        } else {
            Sizes {
                runs: 200,
                warmup: 10,
                tp: [(4, 100), (16, 32)],
                spin_tp: (4, 40),
                handoffs: 200,
                ops: (8, 40),
                spin_ops: (8, 16),
                depths: &[(1, 64), (4, 32), (16, 16), (64, 4)],
            }
        }
    }
}

struct Sizes {
    /// Uncontended runs per command.
    runs: usize,
    warmup: usize,
    /// (workers, sections per worker) for the throughput runs.
    tp: [(usize, usize); 2],
    /// The same for the spin-lock baselines (at 4 workers only: they are slow).
    spin_tp: (usize, usize),
    handoffs: usize,
    /// (waiters, sections per waiter) for counting server operations.
    ops: (usize, usize),
    spin_ops: (usize, usize),
    /// (waiters, sections per waiter) for etcd's queue depths against `etcdctl lock`.
    depths: &'static [(usize, usize)],
}

// ---------------------------------------------------------------------------
// Backends: each is one entry in BACKENDS. A backend whose harness or server
// binary is missing is skipped with a loud note, and the rest still run.

type Counters = BTreeMap<String, u64>;

struct Backend {
    key: &'static str,
    label: &'static str,
    url: String,
    /// Server-side operation counters (total under "total"), for backends that have a server.
    counters: Option<Box<dyn Fn() -> Counters + Send + Sync>>,
    /// A hand-written spin-lock wrapper: `sh SCRIPT CMD ARGS…` takes the lock
    /// (retrying every 100 ms), runs CMD and releases.
    wrapper: Option<(String, PathBuf)>,
    version: Option<String>,
    /// The server process, for its CPU time.
    server_pid: Option<u32>,
    /// Offers --shared, --slots and --fair (the lock-kinds section).
    kinds: bool,
    /// Keeps the server running while the bench uses it.
    _server: Box<dyn std::any::Any + Send + Sync>,
}

type Starter = fn(&Path) -> Backend;

const BACKENDS: &[(&str, Starter)] = &[
    ("redis", start_redis),
    ("redlock", start_redlock),
    ("cluster", start_cluster),
    ("mysql", start_mysql),
    ("postgres", start_postgres),
    ("etcd", start_etcd),
    ("sqlite", start_sqlite),
    ("zookeeper", start_zookeeper),
];

fn start_redis(dir: &Path) -> Backend {
    let server = common::Redis::start();
    let url = server.url();
    let port = server.port;
    let counters = commandstats(&[port]);
    let script = dir.join("redis-spin.sh");
    std::fs::write(
        &script,
        format!(
            "# A lock wrapper as written by hand: SET NX PX, retry every 100 ms, run, DEL.\n\
             until [ \"$(redis-cli -p {port} SET bench:spin \"$$\" NX PX 30000)\" = OK ]; do sleep 0.1; done\n\
             \"$@\"\nrc=$?\nredis-cli -p {port} DEL bench:spin >/dev/null\nexit $rc\n"
        ),
    )
    .unwrap();
    Backend {
        key: "redis",
        label: "Redis",
        url,
        counters: Some(Box::new(counters)),
        wrapper: Some(("redis-cli SET NX PX + DEL".into(), script)),
        version: version_of("redis-server", &["--version"]),
        server_pid: pid_listening("redis-server", port),
        kinds: true,
        _server: Box::new(server),
    }
}

/// Server operations summed over the Redis servers on `ports`, from `INFO commandstats`.
fn commandstats(ports: &[u16]) -> impl Fn() -> Counters + Send + Sync + 'static {
    let cons: Vec<Mutex<redis::Connection>> = ports
        .iter()
        .map(|p| {
            let url = format!("redis://127.0.0.1:{p}/0");
            Mutex::new(
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .expect("connect to the bench's redis-server"),
            )
        })
        .collect();
    move || {
        let mut out = Counters::new();
        let mut total = 0;
        for con in &cons {
            let mut con = con.lock().unwrap();
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut *con)
                .expect("INFO commandstats");
            for line in info.lines() {
                // cmdstat_evalsha:calls=12,usec=…
                let Some((name, rest)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                let calls: u64 = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                total += calls;
                *out.entry(name.to_string()).or_insert(0) += calls;
            }
        }
        out.insert("total".into(), total);
        out
    }
}

/// Redlock over five redis-servers: operations are summed over all five.
fn start_redlock(_dir: &Path) -> Backend {
    use common::Server;
    let set = common::redlock::RedlockSet::start(5);
    let ports: Vec<u16> = set.nodes.iter().map(|n| n.port).collect();
    Backend {
        key: "redlock",
        label: "Redlock (5 Redis)",
        url: set.url(),
        counters: Some(Box::new(commandstats(&ports))),
        wrapper: None,
        version: version_of("redis-server", &["--version"]),
        server_pid: None,
        kinds: false,
        _server: Box::new(set),
    }
}

/// A Redis Cluster of three primaries: operations are summed over all three.
fn start_cluster(_dir: &Path) -> Backend {
    use common::Server;
    let set = common::cluster::ClusterSet::start();
    let ports: Vec<u16> = set.nodes.iter().map(|n| n.port).collect();
    Backend {
        key: "cluster",
        label: "Redis Cluster (3)",
        url: set.url(),
        counters: Some(Box::new(commandstats(&ports))),
        wrapper: None,
        version: version_of("redis-server", &["--version"]),
        server_pid: None,
        kinds: true,
        _server: Box::new(set),
    }
}

fn start_mysql(dir: &Path) -> Backend {
    use common::mariadb::{MariaDb, DATABASE, PASSWORD, USER};
    use mysql::prelude::Queryable;
    let server = MariaDb::start();
    let url = server.url();
    let port = server.port;
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap())
        .expect("connect to the bench's mariadbd");
    conn.query_drop(
        "CREATE TABLE bench_spin (name VARCHAR(64) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
    )
    .expect("create the spin-lock table");
    let conn = Mutex::new(conn);
    let counters = move || {
        let mut c = conn.lock().unwrap();
        let rows: Vec<(String, String)> = c
            .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Connections') OR Variable_name LIKE 'Com\\_%'")
            .expect("SHOW GLOBAL STATUS");
        let mut out = Counters::new();
        for (k, v) in rows {
            if let Ok(n) = v.parse::<u64>() {
                out.insert(k.to_ascii_lowercase(), n);
            }
        }
        let q = out.get("questions").copied().unwrap_or(0);
        out.insert("total".into(), q);
        out
    };
    let script = dir.join("mysql-spin.sh");
    std::fs::write(
        &script,
        format!(
            "# A lock wrapper as written by hand: INSERT a row (the primary key excludes a second),\n\
             # retry every 100 ms, run, DELETE.\n\
             export MYSQL_PWD='{PASSWORD}'\n\
             m() {{ mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P {port} -u {USER} -N -B {DATABASE} -e \"$1\"; }}\n\
             until m \"INSERT INTO bench_spin (name) VALUES ('lock')\" 2>/dev/null; do sleep 0.1; done\n\
             \"$@\"\nrc=$?\nm \"DELETE FROM bench_spin WHERE name = 'lock'\"\nexit $rc\n"
        ),
    )
    .unwrap();
    Backend {
        key: "mysql",
        label: "MySQL (MariaDB)",
        url,
        counters: Some(Box::new(counters)),
        wrapper: Some(("mariadb INSERT + DELETE".into(), script)),
        version: version_of("mariadbd", &["--version"]),
        server_pid: pid_listening("mariadbd", port),
        kinds: true,
        _server: Box::new(server),
    }
}

fn start_etcd(dir: &Path) -> Backend {
    let server = common::etcd::Etcd::cluster(1);
    let url = server.url();
    let port = server.members[0].client;
    // Requests the server handled, per gRPC method, and its Raft writes, from
    // /metrics; with the leases granted and not revoked yet, as each one
    // left to expire costs a write later (the leader's revoke): `etcdctl
    // lock` leaves its session's lease to run out.
    let counters = move || {
        let mut out = Counters::new();
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return out;
        };
        let req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
        let mut text = String::new();
        if s.write_all(req.as_bytes()).is_err() || s.read_to_string(&mut text).is_err() {
            return out;
        }
        let (mut total, mut granted, mut revoked) = (0, 0, 0);
        for line in text.lines() {
            let Some((metric, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let n = value.parse::<f64>().unwrap_or(0.0) as u64;
            if metric.starts_with("grpc_server_handled_total{") {
                let method = metric
                    .split("grpc_method=\"")
                    .nth(1)
                    .and_then(|m| m.split('"').next())
                    .unwrap_or("?");
                *out.entry(method.to_ascii_lowercase()).or_default() += n;
                total += n;
            } else if metric == "etcd_server_proposals_committed_total" {
                out.insert("raft writes".into(), n);
            } else if metric == "etcd_debugging_lease_granted_total" {
                granted = n;
            } else if metric == "etcd_debugging_lease_revoked_total" {
                revoked = n;
            }
        }
        out.insert("leases left".into(), granted.saturating_sub(revoked));
        out.insert("total".into(), total);
        out
    };
    let script = dir.join("etcd-lock.sh");
    std::fs::write(
        &script,
        format!(
            "# etcd's own lock: etcdctl lock holds a session lease while the command runs.\n\
             ETCDCTL_API=3 exec etcdctl --endpoints 127.0.0.1:{port} lock bench-etcdctl -- \"$@\"\n"
        ),
    )
    .unwrap();
    Backend {
        key: "etcd",
        label: "etcd",
        url,
        counters: Some(Box::new(counters)),
        wrapper: Some(("etcdctl lock".into(), script)),
        version: version_of("etcd", &["--version"])
            .and_then(|v| v.lines().next().map(String::from)),
        server_pid: pid_listening("etcd", port),
        kinds: true,
        _server: Box::new(server),
    }
}

/// A 3-server ensemble on loopback: every write is committed by two of them.
fn start_zookeeper(_dir: &Path) -> Backend {
    let server = Arc::new(common::zookeeper::ZooKeeper::ensemble(3));
    let s = Arc::clone(&server);
    let counters = move || {
        let mut out = Counters::new();
        out.insert("total".into(), s.packets_received());
        out
    };
    let leader = server.leader();
    Backend {
        key: "zookeeper",
        label: "ZooKeeper (3 servers)",
        url: server.url(),
        counters: Some(Box::new(counters)),
        wrapper: None,
        version: server.version(),
        server_pid: leader.and_then(|i| server.pid(i)),
        kinds: true,
        _server: Box::new(server),
    }
}

fn start_postgres(dir: &Path) -> Backend {
    use common::postgres::{bin_dir, Postgres, DATABASE, PASSWORD, USER};
    let server = Arc::new(Postgres::start());
    server.sql(&format!(
        "CREATE TABLE bench_spin (name text PRIMARY KEY); ALTER TABLE bench_spin OWNER TO {USER}"
    ));
    let url = common::Server::url(&*server);
    let port = server.port;
    let db = Arc::clone(&server);
    // Transactions in the test database: each dlock statement is one (a
    // multi-statement wake-up is one too). A backend reports its counts
    // when it exits, so wait for dlock's sessions to end first; the
    // bench's own queries run in another database.
    let counters = move || {
        let idle = Instant::now() + Duration::from_secs(5);
        while db.sql_in(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{USER}'"),
        ) != "0"
            && Instant::now() < idle
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let row = db.sql_in(
            "postgres",
            &format!(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '{DATABASE}'"
            ),
        );
        let mut out = Counters::new();
        let mut total = 0;
        for (k, v) in ["commit", "rollback"].iter().zip(row.split('\t')) {
            let n = v.trim().parse::<u64>().unwrap_or(0);
            out.insert(k.to_string(), n);
            total += n;
        }
        out.insert("total".into(), total);
        out
    };
    let script = dir.join("postgres-spin.sh");
    std::fs::write(
        &script,
        format!(
            "# A lock wrapper as written by hand: INSERT a row (the primary key excludes a second),\n\
             # retry every 100 ms, run, DELETE.\n\
             export PGPASSWORD='{PASSWORD}'\n\
             m() {{ '{psql}' -X -q -h 127.0.0.1 -p {port} -U {USER} -d {DATABASE} -c \"$1\"; }}\n\
             until m \"INSERT INTO bench_spin (name) VALUES ('lock')\" 2>/dev/null; do sleep 0.1; done\n\
             \"$@\"\nrc=$?\nm \"DELETE FROM bench_spin WHERE name = 'lock'\"\nexit $rc\n",
            psql = bin_dir().join("psql").display()
        ),
    )
    .unwrap();
    let postgres = bin_dir().join("postgres");
    Backend {
        key: "postgres",
        label: "PostgreSQL",
        url,
        counters: Some(Box::new(counters)),
        wrapper: Some(("psql INSERT + DELETE".into(), script)),
        version: version_of(&postgres.display().to_string(), &["--version"]),
        server_pid: pid_listening("postgres", port),
        kinds: true,
        _server: Box::new(server),
    }
}

fn start_sqlite(_dir: &Path) -> Backend {
    let db = common::sqlite::Sqlite::new();
    Backend {
        key: "sqlite",
        label: "SQLite (embedded)",
        url: db.url(),
        counters: None,
        wrapper: None,
        version: None,
        server_pid: None,
        kinds: true,
        _server: Box::new(db),
    }
}

/// The process of `program` whose command line names `port` (the harness
/// keeps its servers' pids to itself).
fn pid_listening(program: &str, port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        // redis-server rewrites its title into one string: split on spaces too.
        let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let args: Vec<&str> = text.split_whitespace().collect();
        let ours = args.first()?.ends_with(program)
            && args.iter().any(|a| {
                *a == port || a.ends_with(&format!(":{port}")) || *a == format!("--port={port}")
            });
        ours.then_some(pid)
    })
}

/// CPU time (user + system) of a process so far, in ms.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the state.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

/// CPU time of every child this process has reaped so far, in ms.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Starts every selected backend; a harness that panics (a server binary not
/// installed, a harness not there yet) skips that backend with a loud note.
fn start_backends(opts: &Opts, dir: &Path, notes: &mut Vec<String>) -> Vec<Backend> {
    let mut out = Vec::new();
    for (key, start) in BACKENDS {
        if let Some(only) = &opts.only {
            if !only.iter().any(|o| o == key) {
                continue;
            }
        }
        eprintln!("bench: starting the {key} backend");
        match catch_unwind(AssertUnwindSafe(|| start(dir))) {
            Ok(b) => out.push(b),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "its harness panicked".into());
                let note = format!("**SKIPPED: the {key} backend could not be started** ({why})");
                eprintln!("\n!!!!!!!!!!\nbench: {note}\n!!!!!!!!!!\n");
                notes.push(note);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The commands under test.

/// One thing that runs a command under a lock.
#[derive(Clone)]
enum Tool<'a> {
    Flock(PathBuf),
    Dlock(&'a Backend),
    /// dlock with lock-kind options (`--slots 3`, `--fair`).
    Kind(&'a Backend, &'static [&'static str]),
    /// The `--baseline` binary, for a paired comparison of builds.
    Baseline(&'a Backend),
    Wrapper(&'a Backend),
}

impl Tool<'_> {
    fn label(&self) -> String {
        match self {
            Tool::Flock(_) => "flock".into(),
            Tool::Dlock(b) => format!("dlock · {}", b.label),
            Tool::Kind(b, args) => format!("dlock · {} {}", b.label, args.join(" ")),
            Tool::Baseline(b) => format!("baseline dlock · {}", b.label),
            Tool::Wrapper(b) => b.wrapper.as_ref().expect("has a wrapper").0.clone(),
        }
    }

    fn is_dlock(&self) -> bool {
        matches!(self, Tool::Dlock(_) | Tool::Kind(..))
    }

    fn backend(&self) -> Option<&Backend> {
        match self {
            Tool::Dlock(b) | Tool::Kind(b, _) | Tool::Baseline(b) | Tool::Wrapper(b) => Some(b),
            Tool::Flock(_) => None,
        }
    }

    /// The dlock binary of this tool with the bench's environment, before
    /// any subcommand (other subcommands than `exec` use it too).
    fn dlock(&self) -> Command {
        let (b, other) = match self {
            Tool::Dlock(b) | Tool::Kind(b, _) => (b, DLOCK_BIN.get()),
            Tool::Baseline(b) => (b, BASELINE_BIN.get()),
            _ => panic!("{} is not dlock", self.label()),
        };
        let mut c = common::dlock(&b.url);
        if let Some(bin) = other {
            // Another binary, with the same environment as the harness gives the built one.
            let mut o = Command::new(bin);
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => o.env(k, v),
                    None => o.env_remove(k),
                };
            }
            c = o;
        }
        c.env("DLOCK_PREFIX", "bench");
        c
    }

    /// `<tool> NAME -- argv…`, waiting as long as it takes.
    fn command(&self, name: &str, argv: &[&str]) -> Command {
        self.command_v(name, argv, false)
    }

    /// The same; `verbose` makes dlock report each step on stderr ("waiting").
    fn command_v(&self, name: &str, argv: &[&str], verbose: bool) -> Command {
        let mut c = match self {
            Tool::Flock(dir) => {
                let mut c = Command::new("flock");
                c.arg(dir.join(format!("{name}.lock")));
                c
            }
            Tool::Dlock(_) | Tool::Kind(..) | Tool::Baseline(_) => {
                let mut c = self.dlock();
                if verbose {
                    c.arg("-v");
                }
                c.args(["exec", "--wait", "forever"]);
                if let Tool::Kind(_, args) = self {
                    c.args(*args);
                }
                c.args([name, "--"]);
                c
            }
            Tool::Wrapper(b) => {
                let mut c = Command::new("sh");
                c.arg(&b.wrapper.as_ref().expect("has a wrapper").1);
                c
            }
        };
        c.args(argv);
        c
    }
}

/// The dlock binary to measure when not the one cargo built (`--dlock PATH`).
static DLOCK_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The previous build that `--baseline PATH` compares with.
static BASELINE_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A spawned process with its output read line by line on threads, so that
/// every read has a deadline and a full pipe never blocks it.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Stdout lines with CLOCK_MONOTONIC (ns) at the moment each arrived.
    out: Receiver<(u64, String)>,
    err: Receiver<(u64, String)>,
    err_seen: Vec<String>,
}

impl Proc {
    fn spawn(mut c: Command) -> Proc {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send((mono_ns(), l)).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Proc {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            err_seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the next stdout line arrived.
    fn line(&mut self, what: &str) -> u64 {
        match self.out.recv_timeout(Duration::from_secs(30)) {
            Ok((t, _)) => t,
            Err(_) => {
                self.drain_err();
                panic!("{what}: no output within 30s; stderr: {:?}", self.err_seen)
            }
        }
    }

    fn drain_err(&mut self) {
        while let Ok((_, l)) = self.err.try_recv() {
            self.err_seen.push(l);
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn expect_err(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok((_, l)) => {
                    let hit = l.contains(needle);
                    self.err_seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no '{needle}' on stderr within 30s; saw {:?}",
                    self.err_seen
                ),
            }
        }
    }

    /// Tells the holding command to exit.
    fn release(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"go\n");
        }
    }

    fn finish(mut self, what: &str) {
        self.release();
        let st = common::wait_child(&mut self.child, Duration::from_secs(60));
        self.drain_err();
        assert!(
            st.success(),
            "{what} exited with {st}; stderr: {:?}",
            self.err_seen
        );
    }
}

/// Blocks until `pid`'s main thread sleeps (waits on a lock), and a little
/// longer so that a dlock waiter that printed "waiting" is blocked on the release.
fn settle(pid: u32) {
    std::thread::sleep(Duration::from_millis(25));
    let stat = format!("/proc/{pid}/stat");
    common::wait_until("the waiter to block", Duration::from_secs(10), || {
        std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .map(|st| st == "S")
            })
            .unwrap_or(false)
    });
}

fn run_ok(mut c: Command, what: &str) {
    let o = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} exited with {}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------
// Statistics.

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

// ---------------------------------------------------------------------------
// The five benchmarks.

struct Timing {
    label: String,
    dlock: bool,
    key: Option<&'static str>,
    median: f64,
    p90: f64,
    runs: usize,
}

/// Benchmark 1: `TOOL NAME -- true`, the tools interleaved run by run so that drift in
/// the machine's state hits them all alike.
fn uncontended(tools: &[Tool], s: &Sizes) -> Vec<Timing> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 0..s.warmup + s.runs {
        for (i, t) in tools.iter().enumerate() {
            let mut c = t.command("uncontended", &["true"]);
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let start = Instant::now();
            let o = c.output().expect("run");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert!(
                o.status.success(),
                "{} exited with {}: {}",
                t.label(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            if round >= s.warmup {
                samples[i].push(ms);
            }
        }
    }
    tools
        .iter()
        .zip(samples)
        .map(|(t, v)| {
            let v = sorted(v);
            Timing {
                label: t.label(),
                dlock: t.is_dlock(),
                key: t.backend().map(|b| b.key),
                median: pct(&v, 50.0),
                p90: pct(&v, 90.0),
                runs: v.len(),
            }
        })
        .collect()
}

struct Throughput {
    label: String,
    dlock: bool,
    key: Option<&'static str>,
    workers: usize,
    sections: usize,
    secs: f64,
    rate: f64,
    count: u64,
    /// CPU per section, ms: of the locking processes with their commands, and of the server.
    cpu_client: f64,
    cpu_server: Option<f64>,
}

/// Benchmark 2: WORKERS processes each run SECTIONS read-increment-write sections under
/// the lock; the final count must be exact.
fn throughput(tool: &Tool, dir: &Path, workers: usize, per_worker: usize) -> Throughput {
    throughput_logged(tool, dir, workers, per_worker, None)
}

/// [`throughput`], with each section's start and end logged to `log` when given.
fn throughput_logged(
    tool: &Tool,
    dir: &Path,
    workers: usize,
    per_worker: usize,
    log: Option<&Path>,
) -> Throughput {
    let counter = dir.join(format!("counter-{}", mono_ns()));
    std::fs::write(&counter, "0\n").unwrap();
    let server = tool.backend().and_then(|b| b.server_pid);
    let (client0, server0) = (children_cpu(), server.map(cpu_of));
    let secs = run_loops(workers, per_worker, || {
        let section = if log.is_some() {
            TIMED_SECTION
        } else {
            SECTION
        };
        let mut c = tool.command("counter", &["sh", "-c", section]);
        if let Some(log) = log {
            c.env("BENCH_LOG", log);
        }
        c.env("BENCH_COUNTER", &counter);
        run_ok(c, &tool.label());
    });
    let total = workers * per_worker;
    let cpu_client = (children_cpu() - client0) / total as f64;
    let cpu_server = server
        .zip(server0)
        .map(|(p, c0)| (cpu_of(p) - c0) / total as f64);
    let text = std::fs::read_to_string(&counter).unwrap();
    let count: u64 = text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "MUTUAL EXCLUSION FAILED: {} left the counter unreadable: {text:?}",
            tool.label()
        )
    });
    assert_eq!(
        count,
        total as u64,
        "MUTUAL EXCLUSION FAILED: {} with {workers} workers counted {count} of {total} sections",
        tool.label()
    );
    Throughput {
        label: tool.label(),
        dlock: tool.is_dlock(),
        key: tool.backend().map(|b| b.key),
        workers,
        sections: total,
        secs,
        rate: total as f64 / secs,
        count,
        cpu_client,
        cpu_server,
    }
}

/// `workers` threads each call `section` `per_worker` times, all starting
/// together; returns the seconds from the start to the last one's end.
fn run_loops(workers: usize, per_worker: usize, section: impl Fn() + Sync) -> f64 {
    let barrier = Barrier::new(workers + 1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                sc.spawn(|| {
                    barrier.wait();
                    for _ in 0..per_worker {
                        section();
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
        start.elapsed().as_secs_f64()
    })
}

struct Handoff {
    label: String,
    dlock: bool,
    key: Option<&'static str>,
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

/// Benchmark 3: A chain of holders: each waiter is started while the previous one holds,
/// and once it blocks, the holder's command is told to exit (t0, taken by the
/// bench just before it writes to the command's stdin); t1 is when the
/// waiter's command's first line reaches the bench. Hand-off = t1 - t0.
fn handoff(tool: &Tool, n: usize) -> Handoff {
    let start = |verbose: bool| Proc::spawn(tool.command_v("handoff", HOLD, verbose));
    let mut holder = start(false);
    holder.line("the first holder");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut waiter = start(tool.is_dlock());
        if tool.is_dlock() {
            waiter.expect_err("waiting");
        }
        settle(waiter.pid());
        let t0 = mono_ns();
        holder.release();
        let t1 = waiter.line("the waiter");
        samples.push(t1.saturating_sub(t0) as f64 / 1e6);
        holder.finish(&tool.label());
        holder = waiter;
    }
    holder.finish(&tool.label());
    let v = sorted(samples);
    Handoff {
        label: tool.label(),
        dlock: tool.is_dlock(),
        key: tool.backend().map(|b| b.key),
        p50: pct(&v, 50.0),
        p99: pct(&v, 99.0),
        max: pct(&v, 100.0),
        n: v.len(),
    }
}

struct OpsResult {
    label: String,
    dlock: bool,
    key: &'static str,
    waiters: usize,
    acquisitions: usize,
    ops: u64,
    rate: f64,
    /// Requests that clients sent, per acquisition: Redis counts the commands
    /// that Lua scripts call in `commandstats` too; MySQL's Questions leave
    /// out statement prepares.
    requests: f64,
    /// The largest contributors, "name per-acquisition".
    breakdown: String,
    /// MySQL: connections opened per acquisition.
    connections: Option<f64>,
    /// etcd: Raft proposals committed per acquisition.
    raft: Option<f64>,
    /// With a log of the sections: hand-off (p50, p99) in ms.
    handoff: Option<(f64, f64)>,
}

/// The commands dlock's Redis scripts call; `dlock exec` sends none of them
/// itself (it sends EVALSHA, EVAL and BZPOPMIN).
const REDIS_SCRIPT_CALLS: &[&str] = &[
    "hget", "hgetall", "hset", "time", "pexpire", "pttl", "get", "set", "del", "publish", "incr",
    "zadd",
];

/// Benchmark 4: Server operations per acquisition with WAITERS processes contending.
fn server_ops(tool: &Tool, dir: &Path, waiters: usize, per: usize) -> Option<OpsResult> {
    server_ops_logged(tool, dir, waiters, per, None)
}

/// The gaps between one section's end and the next one's start in a log of
/// [`TIMED_SECTION`]s: (p50, p99) in ms.
fn handoff_gaps(log: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut marks: Vec<(u64, bool)> = text
        .lines()
        .filter_map(|l| {
            let (what, t) = l.split_once(' ')?;
            Some((t.trim().parse().ok()?, what == "s"))
        })
        .collect();
    marks.sort();
    let gaps: Vec<f64> = marks
        .windows(2)
        .filter(|w| !w[0].1 && w[1].1)
        .map(|w| (w[1].0 - w[0].0) as f64 / 1e6)
        .collect();
    let v = sorted(gaps);
    (!v.is_empty()).then(|| (pct(&v, 50.0), pct(&v, 99.0)))
}

fn server_ops_logged(
    tool: &Tool,
    dir: &Path,
    waiters: usize,
    per: usize,
    log: Option<&Path>,
) -> Option<OpsResult> {
    let b = tool.backend()?;
    let counters = b.counters.as_ref()?;
    let before = counters();
    let tp = throughput_logged(tool, dir, waiters, per, log);
    let after = counters();
    let mut delta: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in &after {
        let d = *v as i64 - before.get(k).copied().unwrap_or(0) as i64;
        if d != 0 {
            delta.insert(k.clone(), d);
        }
    }
    // Leave out the bench's own counting query (the second snapshot).
    let own = if b.key == "redis" {
        "info"
    } else {
        "com_show_status"
    };
    // etcd's counters come over HTTP, which its gRPC counts leave out;
    // PostgreSQL's are read from another database.
    for k in ["total", "questions", own]
        .into_iter()
        .filter(|_| !matches!(b.key, "etcd" | "postgres"))
    {
        if let Some(v) = delta.get_mut(k) {
            *v -= 1;
        }
    }
    let acq = tp.sections as f64;
    let ops = delta.get("total").copied().unwrap_or(0).max(0) as u64;
    let mut parts: Vec<(String, i64)> = delta
        .iter()
        .filter(|(k, v)| {
            **v > 0
                && !matches!(
                    k.as_str(),
                    "total" | "questions" | "connections" | "com_stmt_prepare" | "com_stmt_close"
                )
                && !(b.key == "mysql" && k.as_str() == "com_stmt_execute")
        })
        .map(|(k, v)| (k.trim_start_matches("com_").to_string(), *v))
        .collect();
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    let breakdown = parts
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 / acq))
        .collect::<Vec<_>>()
        .join(", ");
    let per = |k: &str| delta.get(k).copied().unwrap_or(0) as f64 / acq;
    let requests = match (b.key, tool.is_dlock()) {
        ("redis", true) => {
            ops as f64 / acq - REDIS_SCRIPT_CALLS.iter().map(|k| per(k)).sum::<f64>()
        }
        ("mysql", _) => ops as f64 / acq + per("com_stmt_prepare"),
        _ => ops as f64 / acq,
    };
    let connections = (b.key == "mysql").then(|| per("connections"));
    // A lease left to expire is a write to come; one of an earlier run's
    // that expired during this one, a write that was not this run's.
    let raft = (b.key == "etcd").then(|| per("raft writes") + per("leases left"));
    let handoff = log.and_then(handoff_gaps);
    Some(OpsResult {
        label: tool.label(),
        dlock: tool.is_dlock(),
        key: b.key,
        waiters,
        acquisitions: tp.sections,
        ops,
        rate: tp.rate,
        requests,
        breakdown,
        connections,
        raft,
        handoff,
    })
}

struct Rss {
    label: String,
    dlock: bool,
    key: Option<&'static str>,
    hwm_kb: u64,
    rss_kb: u64,
}

/// Benchmark 5: VmHWM of the locking process (dlock itself, not its command) while it holds.
fn rss(tool: &Tool) -> Rss {
    let (mut hwm, mut cur) = (0, 0);
    for _ in 0..3 {
        let mut p = Proc::spawn(tool.command("rss", HOLD));
        p.line("the holder");
        // Let a renewal thread and everything else settle in.
        std::thread::sleep(Duration::from_millis(50));
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        hwm = hwm.max(field("VmHWM:"));
        cur = cur.max(field("VmRSS:"));
        p.finish(&tool.label());
    }
    Rss {
        label: tool.label(),
        dlock: tool.is_dlock(),
        key: tool.backend().map(|b| b.key),
        hwm_kb: hwm,
        rss_kb: cur,
    }
}

// ---------------------------------------------------------------------------
// Targets.

struct Check {
    id: &'static str,
    what: String,
    backend: &'static str,
    measured: String,
    target: String,
    met: bool,
}

fn label_of(key: &str) -> &'static str {
    match key {
        "redis" => "Redis",
        "mysql" => "MySQL (MariaDB)",
        "postgres" => "PostgreSQL",
        "sqlite" => "SQLite (embedded)",
        "zookeeper" => "ZooKeeper (3 servers)",
        _ => "?",
    }
}

struct Results {
    uncontended: Vec<Timing>,
    throughput: Vec<Throughput>,
    handoff: Vec<Handoff>,
    ops: Vec<OpsResult>,
    /// etcd at each queue depth: (dlock, etcdctl lock).
    depths: Vec<(OpsResult, OpsResult)>,
    rss: Vec<Rss>,
    kinds: Vec<kinds::KindsRow>,
    uniform: Vec<uniform::UniformRow>,
}

fn checks(r: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let flock_t = r.uncontended.iter().find(|t| t.key.is_none());
    if let (Some(f), Some(d)) = (
        flock_t,
        r.uncontended
            .iter()
            .find(|t| t.dlock && t.key == Some("redis")),
    ) {
        let ratio = d.median / f.median;
        out.push(Check {
            id: "1",
            what: "uncontended `exec -- true`, median".into(),
            backend: "Redis",
            measured: format!(
                "{:.2} ms = {ratio:.2}× flock ({:.2} ms)",
                d.median, f.median
            ),
            target: "≤ 1.5× flock".into(),
            met: ratio <= 1.5,
        });
    }
    let flock4 = r
        .throughput
        .iter()
        .find(|t| t.key.is_none() && t.workers == 4);
    for (key, min) in [("redis", 0.7), ("sqlite", 0.8), ("mysql", 0.5)] {
        if let (Some(f), Some(d)) = (
            flock4,
            r.throughput
                .iter()
                .find(|t| t.dlock && t.key == Some(key) && t.workers == 4),
        ) {
            let ratio = d.rate / f.rate;
            out.push(Check {
                id: "2",
                what: "throughput, 4 workers".into(),
                backend: label_of(key),
                measured: format!("{:.0}/s = {ratio:.2}× flock ({:.0}/s)", d.rate, f.rate),
                target: format!("≥ {min}× flock"),
                met: ratio >= min,
            });
        }
    }
    if let Some(h) = r.handoff.iter().find(|h| h.dlock && h.key == Some("redis")) {
        out.push(Check {
            id: "3",
            what: "hand-off p50".into(),
            backend: "Redis",
            measured: format!("{:.2} ms", h.p50),
            target: "< 2 ms".into(),
            met: h.p50 < 2.0,
        });
        out.push(Check {
            id: "3",
            what: "hand-off p99".into(),
            backend: "Redis",
            measured: format!("{:.2} ms", h.p99),
            target: "< 20 ms".into(),
            met: h.p99 < 20.0,
        });
    }
    if let Some(o) = r.ops.iter().find(|o| o.dlock && o.key == "redis") {
        let per = o.ops as f64 / o.acquisitions as f64;
        out.push(Check {
            id: "4",
            what: format!("server ops per acquisition, {} waiters", o.waiters),
            backend: "Redis",
            measured: format!("{per:.1}"),
            target: "≤ 10".into(),
            met: per <= 10.0,
        });
    }
    if let Some(m) = r.rss.iter().find(|m| m.dlock && m.key == Some("redis")) {
        let mb = m.hwm_kb as f64 * 1024.0 / 1e6;
        out.push(Check {
            id: "5",
            what: "peak RSS (VmHWM) of a holding `dlock exec`".into(),
            backend: "Redis",
            measured: format!("{mb:.1} MB"),
            target: "< 8 MB".into(),
            met: mb < 8.0,
        });
    }
    uniform::checks(&r.uniform, &mut out);
    out
}

// ---------------------------------------------------------------------------
// The machine.

fn version_of(bin: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(bin).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine(backends: &[Backend]) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("?")
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let mut m = vec![
        ("CPUs (nproc)".into(), nproc),
        ("CPU model".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), format!("Linux {kernel}")),
    ];
    for b in backends {
        if let Some(v) = &b.version {
            m.push((format!("{} server", b.label), v.clone()));
        }
    }
    if let Some(v) = version_of("flock", &["--version"]) {
        m.push(("flock".into(), v));
    }
    if let Some(v) = version_of("rustc", &["--version"]) {
        m.push(("rustc".into(), v));
    }
    if let Some(v) = version_of(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    ) {
        m.push(("dlock commit".into(), v));
    }
    if let Some(bin) = DLOCK_BIN.get() {
        m.push(("dlock binary (--dlock)".into(), bin.display().to_string()));
    }
    m
}

// ---------------------------------------------------------------------------
// Running it all.

fn run(opts: &Opts) {
    let s = opts.sizes();
    if let Some(bin) = &opts.dlock {
        let bin = bin.clone();
        eprintln!(
            "bench: measuring {} instead of the built dlock",
            bin.display()
        );
        DLOCK_BIN.set(bin).unwrap();
    }
    if let Some(bin) = &opts.baseline {
        eprintln!("bench: comparing with {} run by run", bin.display());
        BASELINE_BIN.set(bin.clone()).unwrap();
    }
    let load_start = loadavg();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = load_start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l > 0.25 * nproc as f64);
    if busy {
        eprintln!(
            "\n!!!!!!!!!!\nbench: the load average is {load_start} on {nproc} CPUs: other work is running and the numbers will be noisy\n!!!!!!!!!!\n"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut notes = Vec::new();
    let backends = start_backends(opts, dir.path(), &mut notes);
    let started = Instant::now();

    let flock = Tool::Flock(dir.path().to_path_buf());
    let dlocks: Vec<Tool> = backends.iter().map(Tool::Dlock).collect();
    let wrappers: Vec<Tool> = backends
        .iter()
        .filter(|b| b.wrapper.is_some())
        .map(Tool::Wrapper)
        .collect();

    eprintln!("bench: 1/7 uncontended, {} runs each", s.runs);
    let mut tools = vec![flock.clone()];
    tools.extend(wrappers.iter().cloned());
    tools.extend(dlocks.iter().cloned());
    if opts.baseline.is_some() {
        tools.extend(backends.iter().map(Tool::Baseline));
    }
    let uncontended = uncontended(&tools, &s);

    eprintln!("bench: 2/7 contended throughput");
    let mut tp = Vec::new();
    for (workers, per) in s.tp {
        for t in std::iter::once(&flock).chain(&dlocks) {
            eprintln!("bench:     {} × {workers}", t.label());
            tp.push(throughput(t, dir.path(), workers, per));
        }
    }
    for w in &wrappers {
        eprintln!("bench:     {} × {}", w.label(), s.spin_tp.0);
        tp.push(throughput(w, dir.path(), s.spin_tp.0, s.spin_tp.1));
    }

    eprintln!("bench: 3/7 hand-off, {} hand-offs each", s.handoffs);
    let mut ho = vec![handoff(&flock, s.handoffs)];
    for t in &dlocks {
        ho.push(handoff(t, s.handoffs));
    }

    eprintln!("bench: 4/7 server operations per acquisition");
    let mut ops = Vec::new();
    for b in &backends {
        let d = Tool::Dlock(b);
        if let Some(o) = server_ops(&d, dir.path(), s.ops.0, s.ops.1) {
            ops.push(o);
        }
        if b.wrapper.is_some() {
            let w = Tool::Wrapper(b);
            if let Some(o) = server_ops(&w, dir.path(), s.spin_ops.0, s.spin_ops.1) {
                ops.push(o);
            }
        }
    }

    // etcd's queue at several depths, dlock and etcdctl lock in turn.
    let mut depths = Vec::new();
    for b in backends
        .iter()
        .filter(|b| b.key == "etcd" && b.wrapper.is_some())
    {
        for &(waiters, per) in s.depths {
            eprintln!("bench:     etcd queue, {waiters} waiters");
            let log = |t: &str| dir.path().join(format!("sections-{t}-{waiters}"));
            let (dl, wl) = (log("dlock"), log("etcdctl"));
            let d = server_ops_logged(&Tool::Dlock(b), dir.path(), waiters, per, Some(&dl));
            let w = server_ops_logged(&Tool::Wrapper(b), dir.path(), waiters, per, Some(&wl));
            depths.extend(d.zip(w));
        }
    }

    eprintln!("bench: 5/7 peak RSS");
    let mut mem = vec![rss(&flock)];
    for t in &dlocks {
        mem.push(rss(t));
    }

    eprintln!("bench: 6/7 lock kinds");
    let kinds = backends
        .iter()
        .filter(|b| b.kinds && std::env::var_os("BENCH_NO_KINDS").is_none())
        .map(|b| kinds::measure(b, dir.path(), &s))
        .collect();

    eprintln!("bench: 7/7 the same behaviour on every backend");
    let kinds_ok = std::env::var_os("BENCH_NO_KINDS").is_none();
    let uniform = backends
        .iter()
        .map(|b| uniform::measure(b, dir.path(), &s, b.kinds && kinds_ok))
        .collect();

    let results = Results {
        uncontended,
        throughput: tp,
        handoff: ho,
        ops,
        depths,
        rss: mem,
        kinds,
        uniform,
    };
    let load_end = loadavg();
    let took = started.elapsed();
    let mut machine = machine(&backends);
    machine.push((
        "load average (1, 5, 15 min)".into(),
        format!("{load_start} at the start, {load_end} at the end"),
    ));
    let md = markdown(&results, &machine, &notes, opts, took);
    println!("\n{md}");
    if opts.write {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("benchmarks.svg"), chart(&results)).unwrap();
        write_doc(&docs.join("benchmarks.md"), &md);
        eprintln!("bench: wrote docs/benchmarks.md and docs/benchmarks.svg");
    } else {
        eprintln!("bench: not writing docs/ (--quick, --only or --no-write)");
    }
    let missed = checks(&results).iter().filter(|c| !c.met).count();
    eprintln!(
        "bench: done in {:.0}s; {missed} target(s) missed",
        took.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Markdown.

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn markdown(
    r: &Results,
    machine: &[(String, String)],
    notes: &[String],
    opts: &Opts,
    took: Duration,
) -> String {
    let mut m = String::new();
    let w = &mut m;
    let _ = writeln!(
        w,
        "Generated by `scripts/bench` in {:.0} s{}.\n",
        took.as_secs_f64(),
        if opts.quick {
            " (--quick: too few runs to trust)"
        } else {
            ""
        }
    );
    for n in notes {
        let _ = writeln!(w, "> {n}\n");
    }
    let _ = writeln!(w, "### Machine\n\n| | |\n| --- | --- |");
    for (k, v) in machine {
        let _ = writeln!(w, "| {k} | {v} |");
    }

    let _ = writeln!(w, "\n### Targets\n\n| # | measure | backend | measured | target | result |\n| --- | --- | --- | --- | --- | --- |");
    for c in checks(r) {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            c.id,
            c.what,
            c.backend,
            c.measured,
            c.target,
            if c.met { "✅ met" } else { "❌ **missed**" }
        );
    }
    let _ = writeln!(w, "\n![dlock benchmarks](benchmarks.svg)");

    let flock_t = r
        .uncontended
        .iter()
        .find(|t| t.key.is_none())
        .map(|t| t.median);
    let _ = writeln!(
        w,
        "\n### 1. Uncontended: `TOOL NAME -- true`\n\n| command | median ms | p90 ms | × flock (median) | runs |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for t in &r.uncontended {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            bold(&t.label, t.dlock),
            ms(t.median),
            ms(t.p90),
            flock_t.map_or("".into(), |f| format!("{:.2}", t.median / f)),
            t.runs
        );
    }

    let _ = writeln!(
        w,
        "\n### 2. Contended throughput: workers looping `TOOL counter -- sh -c 'read, +1, write'`\n\n| command | workers | sections | seconds | sections/s | × flock | final count | CPU ms/section: clients | server |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    );
    for t in &r.throughput {
        let f = r
            .throughput
            .iter()
            .find(|x| x.key.is_none() && x.workers == t.workers)
            .map(|x| x.rate);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {:.0} | {} | {} (exact) | {:.2} | {} |",
            bold(&t.label, t.dlock),
            t.workers,
            t.sections,
            t.secs,
            t.rate,
            f.map_or("".into(), |f| format!("{:.2}", t.rate / f)),
            t.count,
            t.cpu_client,
            t.cpu_server.map_or("".into(), |c| format!("{c:.2}"))
        );
    }

    let _ = writeln!(
        w,
        "\n### 3. Hand-off: holder's command told to exit → next waiter's command running\n\n| command | p50 ms | p99 ms | max ms | hand-offs |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for h in &r.handoff {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            bold(&h.label, h.dlock),
            ms(h.p50),
            ms(h.p99),
            ms(h.max),
            h.n
        );
    }

    let _ = writeln!(
        w,
        "\n### 4. Server operations per acquisition, waiters contending\n\nServer ops: Redis, the sum of `calls` in `INFO commandstats`, which counts the commands that Lua scripts call as well; MySQL, `Questions` from `SHOW GLOBAL STATUS`; PostgreSQL, the transactions of the test database in `pg_stat_database` (every dlock statement is one). Client requests: what clients sent (Redis: without the scripts' inner calls; MySQL: with statement prepares). The bench's own counting query is left out.\n\n| command | waiters | acquisitions | server ops | **ops/acquisition** | client requests/acquisition | connections/acquisition | sections/s | largest, per acquisition |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for o in &r.ops {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | **{:.1}** | {:.1} | {} | {:.0} | {} |",
            bold(&o.label, o.dlock),
            o.waiters,
            o.acquisitions,
            o.ops,
            o.ops as f64 / o.acquisitions as f64,
            o.requests,
            o.connections.map_or("".into(), |c| format!("{c:.1}")),
            o.rate,
            o.breakdown
        );
    }

    if !r.depths.is_empty() {
        let _ = writeln!(
            w,
            "\netcd's queue at each depth, dlock and `etcdctl lock` run in turn (Raft writes: `etcd_server_proposals_committed_total`, plus the leases left to expire, whose revokes come later; requests: gRPC calls the server handled; hand-off: from one section's end to the next one's start, each section logging both with `date`):\n\n| waiters | acquisitions | dlock sections/s | etcdctl sections/s | **dlock ÷ etcdctl** | dlock Raft writes/acquisition | etcdctl Raft writes/acquisition | dlock requests/acquisition | etcdctl requests/acquisition | hand-off p50/p99 ms: dlock | etcdctl |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let gaps = |h: Option<(f64, f64)>| h.map_or("".into(), |(a, b)| format!("{a:.1} / {b:.1}"));
        for (d, e) in &r.depths {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {:.1} | **{:.2}×** | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                d.waiters,
                d.acquisitions,
                d.rate,
                e.rate,
                d.rate / e.rate,
                d.raft.unwrap_or(f64::NAN),
                e.raft.unwrap_or(f64::NAN),
                d.requests,
                e.requests,
                gaps(d.handoff),
                gaps(e.handoff)
            );
        }
    }

    let _ = writeln!(
        w,
        "\n### 5. Peak memory of the process holding the lock\n\n| holder | VmHWM MB | VmRSS MB |\n| --- | ---: | ---: |"
    );
    for x in &r.rss {
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} |",
            bold(&x.label, x.dlock),
            x.hwm_kb as f64 * 1024.0 / 1e6,
            x.rss_kb as f64 * 1024.0 / 1e6
        );
    }
    let _ = writeln!(w, "\nMB = 10⁶ bytes.");
    kinds::markdown(w, &r.kinds);
    uniform::markdown(w, &r.uniform, &opts.sizes());
    let _ = write!(w, "{METHOD}");
    m
}

fn bold(label: &str, on: bool) -> String {
    if on {
        format!("**{label}**")
    } else {
        label.to_string()
    }
}

const METHOD: &str = r#"
### Method

Every server is private: the test harness (`tests/common`) starts
`redis-server`, `mariadbd` and `postgres` on free loopback ports with their data in temp
dirs, and the embedded backend uses a `sqlite:///` file in a temp dir. The
dlock binary is the release build that `cargo bench` makes. Spawning is done
by the bench process (Rust `std::process::Command`), the same for every tool.

1. **Uncontended**: wall time of `dlock exec NAME -- true`, `flock FILE true`
   and the spin-lock wrappers (`sh WRAPPER true`: `redis-cli SET NX PX`, run,
   `DEL`; or `mariadb -e INSERT` / `psql -c INSERT`, run, `DELETE`), from spawn to exit. The
   tools take turns run by run, after a few discarded warm-up rounds.
2. **Throughput**: N worker threads each run their sections one after another,
   every section a new `TOOL counter -- sh -c 'read n < F; echo $((n+1)) > F'`
   (shell built-ins only). Sections/s = all sections / wall time from a common
   start to the last exit. The counter must end at exactly workers × sections;
   the bench fails otherwise. CPU per section: user + system time of the
   locking processes and their commands (`getrusage(RUSAGE_CHILDREN)` of the
   bench) and of the server process (`/proc/PID/stat`), divided by the
   sections; the machine has `nproc` CPUs' worth of it per second.
3. **Hand-off**: a chain of holders whose command is
   `sh -c 'echo running; read x'`: it announces on stdout that it runs, then
   holds until its stdin (a pipe from the bench) gets a line. For each
   hand-off the bench starts the next waiter (`dlock -v exec --wait forever`),
   waits for its "waiting" line on stderr, then until its main thread sleeps,
   plus 25 ms for it to block on the release (`BZPOPMIN`, `GET_LOCK` or a
   futex); then it reads
   `CLOCK_MONOTONIC` (t0) and writes a line to the holder's stdin. The
   holder's command exits, dlock reaps it, releases, the waiter wakes,
   acquires, starts and execs `sh`, which prints its line; the bench's reader
   thread, blocked on that pipe, stamps `CLOCK_MONOTONIC` as the line arrives
   (t1). Hand-off = t1 − t0. It includes the exec of `sh` and the exit of the
   old holder's command, which the flock row shows as a floor: there the
   kernel hands the lock over directly.
4. **Server operations**: the throughput workload with 8 workers, so that up
   to 7 wait while one holds; the server's counters are read before and after
   over one extra connection, and the delta is divided by the acquisitions.
   The spin-lock baselines retry every 100 ms.
5. **Peak RSS**: `VmHWM` in `/proc/PID/status` of the locking process
   (dlock, or flock) while its command runs, largest of 3 runs.
6. **Lock kinds**: 8 workers loop `dlock exec --slots 3` over a section that
   checks `DLOCK_SLOT` and claims a directory named after it (so two holders
   of one slot, or a fourth holder, fail the bench), then sleeps 20 ms; the
   rate is against the 150 sections/s that three holders at once could reach.
   The `--fair` hand-off is benchmark 3 with every waiter queued in order.
7. **The same behaviour on every backend**: an `exec --lease 10s` holder,
   once it says (with `-v`) that it listens for breaks and has run 150 ms,
   is broken with `release --force`; the bench polls the holder every
   0.5 ms and times its exit (code 79 checked) from the force's exit.
   Then 4 workers loop sections that append their start and end times
   (`date +%s%N`) to a file, plain and with `--fair`: the marks must
   alternate (else the bench fails), and the gaps between one section's
   end and the next one's start are the hand-offs.
"#;

/// Replaces the generated part of the doc, keeping what people wrote around it.
fn write_doc(path: &Path, generated: &str) {
    let block = format!("{BEGIN}\n\n{generated}\n{END}");
    let text = match std::fs::read_to_string(path) {
        Ok(old) => match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{block}{}", &old[..a], &old[b + END.len()..])
            }
            _ => format!("{old}\n{block}\n"),
        },
        Err(_) => format!(
            "# Benchmarks\n\nRun `scripts/bench` on a quiet machine to measure again; it rewrites the part between the markers below and `benchmarks.svg`.\n\n{block}\n"
        ),
    };
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------------------
// The chart: one SVG of horizontal bars, drawn here so the suite needs no
// plotting package.

struct Bar {
    label: String,
    value: f64,
    /// A thin extension to a second value (p90, p99).
    whisker: Option<f64>,
    dlock: bool,
    /// The target for this bar, drawn as a red tick.
    target: Option<f64>,
    text: String,
    /// "target …: met" or "…: missed", for bars that have a target.
    verdict: Option<String>,
}

fn verdict(what: &str, met: bool) -> String {
    format!("{what}: {}", if met { "met" } else { "MISSED" })
}

struct Panel {
    title: String,
    bars: Vec<Bar>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panels(r: &Results) -> Vec<Panel> {
    let mut out = Vec::new();
    let flock_t = r
        .uncontended
        .iter()
        .find(|t| t.key.is_none())
        .map(|t| t.median);
    out.push(Panel {
        title: "1. Uncontended `TOOL NAME -- true`: median, whisker to p90 (ms)".into(),
        bars: r
            .uncontended
            .iter()
            .map(|t| Bar {
                label: t.label.clone(),
                value: t.median,
                whisker: Some(t.p90),
                dlock: t.dlock,
                target: (t.dlock && t.key == Some("redis"))
                    .then(|| flock_t.map(|f| 1.5 * f))
                    .flatten(),
                text: format!("{} / {}", ms(t.median), ms(t.p90)),
                verdict: (t.dlock && t.key == Some("redis"))
                    .then(|| flock_t.map(|f| verdict("target ≤ 1.5× flock", t.median <= 1.5 * f)))
                    .flatten(),
            })
            .collect(),
    });
    out.push(Panel {
        title: "2. Contended throughput (sections/s; more is better)".into(),
        bars: r
            .throughput
            .iter()
            .map(|t| {
                let f = r
                    .throughput
                    .iter()
                    .find(|x| x.key.is_none() && x.workers == t.workers)
                    .map(|x| x.rate);
                let k = match (t.dlock, t.key, t.workers) {
                    (true, Some("redis"), 4) => Some(0.7),
                    (true, Some("sqlite"), 4) => Some(0.8),
                    (true, Some("mysql"), 4) => Some(0.5),
                    _ => None,
                };
                Bar {
                    label: format!("{} · {} workers", t.label, t.workers),
                    value: t.rate,
                    whisker: None,
                    dlock: t.dlock,
                    target: k.zip(f).map(|(k, f)| k * f),
                    text: format!("{:.0}/s", t.rate),
                    verdict: k
                        .zip(f)
                        .map(|(k, f)| verdict(&format!("target ≥ {k}× flock"), t.rate >= k * f)),
                }
            })
            .collect(),
    });
    out.push(Panel {
        title: "3. Hand-off: p50, whisker to p99 (ms)".into(),
        bars: r
            .handoff
            .iter()
            .map(|h| Bar {
                label: h.label.clone(),
                value: h.p50,
                whisker: Some(h.p99),
                dlock: h.dlock,
                target: (h.dlock && h.key == Some("redis")).then_some(2.0),
                text: format!("{} / {}", ms(h.p50), ms(h.p99)),
                verdict: (h.dlock && h.key == Some("redis")).then(|| {
                    format!(
                        "{}, {}",
                        verdict("target p50 < 2 ms", h.p50 < 2.0),
                        verdict("p99 < 20 ms", h.p99 < 20.0)
                    )
                }),
            })
            .collect(),
    });
    out.push(Panel {
        title: "4. Server operations per acquisition, 8 waiters".into(),
        bars: r
            .ops
            .iter()
            .map(|o| {
                let per = o.ops as f64 / o.acquisitions as f64;
                Bar {
                    label: o.label.clone(),
                    value: per,
                    whisker: None,
                    dlock: o.dlock,
                    target: (o.dlock && o.key == "redis").then_some(10.0),
                    text: format!("{per:.1}"),
                    verdict: (o.dlock && o.key == "redis")
                        .then(|| verdict("target ≤ 10", per <= 10.0)),
                }
            })
            .collect(),
    });
    out.push(Panel {
        title: "5. Peak RSS of the holding process (MB)".into(),
        bars: r
            .rss
            .iter()
            .map(|x| {
                let mb = x.hwm_kb as f64 * 1024.0 / 1e6;
                Bar {
                    label: x.label.clone(),
                    value: mb,
                    whisker: None,
                    dlock: x.dlock,
                    target: (x.dlock && x.key == Some("redis")).then_some(8.0),
                    text: format!("{mb:.1}"),
                    verdict: (x.dlock && x.key == Some("redis"))
                        .then(|| verdict("target < 8 MB", mb < 8.0)),
                }
            })
            .collect(),
    });
    out
}

fn chart(r: &Results) -> String {
    const W: f64 = 1240.0;
    const LEFT: f64 = 330.0;
    const PLOT: f64 = 520.0;
    // The column of "target …: met / MISSED", right of the longest value label.
    const VERDICT: f64 = LEFT + PLOT + 120.0;
    const BAR: f64 = 18.0;
    const GAP: f64 = 6.0;
    let panels = panels(r);
    let mut body = String::new();
    let mut y = 58.0;
    for p in &panels {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.1}" class="title">{}</text>"#,
            y,
            esc(&p.title)
        );
        y += 10.0;
        let max = p
            .bars
            .iter()
            .flat_map(|b| [Some(b.value), b.whisker, b.target])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.05;
        let x = |v: f64| LEFT + (v / max) * PLOT;
        for b in &p.bars {
            let cls = if b.dlock { "dlock" } else { "base" };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" class="label">{}</text>"#,
                LEFT - 8.0,
                y + BAR * 0.72,
                esc(&b.label)
            );
            let wbar = (x(b.value) - LEFT).max(1.5);
            let _ = writeln!(
                body,
                r#"<rect x="{LEFT:.1}" y="{y:.1}" width="{wbar:.1}" height="{BAR:.1}" class="{cls}"/>"#
            );
            let mut end = LEFT + wbar;
            if let Some(wv) = b.whisker.filter(|wv| *wv > b.value) {
                let (x0, x1, my) = (LEFT + wbar, x(wv), y + BAR / 2.0);
                let _ = writeln!(
                    body,
                    r#"<path d="M{x0:.1} {my:.1}H{x1:.1}M{x1:.1} {:.1}V{:.1}" class="whisker"/>"#,
                    y + 3.0,
                    y + BAR - 3.0
                );
                end = end.max(x1);
            }
            if let Some(t) = b.target {
                let xt = x(t);
                let _ = writeln!(
                    body,
                    r#"<path d="M{xt:.1} {:.1}V{:.1}" class="target"/>"#,
                    y - 3.0,
                    y + BAR + 3.0
                );
                // Keep the label clear of a tick just past the bar.
                if xt > end && xt < end + 70.0 {
                    end = xt;
                }
            }
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" class="value">{}</text>"#,
                end + 6.0,
                y + BAR * 0.72,
                esc(&b.text)
            );
            if let Some(v) = &b.verdict {
                let cls = if v.contains("MISSED") {
                    "missed"
                } else {
                    "met"
                };
                let _ = writeln!(
                    body,
                    r#"<text x="{VERDICT:.1}" y="{:.1}" class="{cls}">{}</text>"#,
                    y + BAR * 0.72,
                    esc(v)
                );
            }
            y += BAR + GAP;
        }
        y += 26.0;
    }
    let h = y;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<style>
.title {{ font-size: 14px; font-weight: bold; fill: #222; }}
.label {{ text-anchor: end; fill: #333; }}
.value {{ fill: #333; }}
.dlock {{ fill: #3b6fb6; }}
.base {{ fill: #a8a8a8; }}
.whisker {{ stroke: #333; stroke-width: 1.2; fill: none; }}
.target {{ stroke: #d62728; stroke-width: 2; stroke-dasharray: 3 2; fill: none; }}
.missed {{ fill: #d62728; font-size: 11px; }}
.met {{ fill: #2a7d2a; font-size: 11px; }}
</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="22" font-size="16" font-weight="bold">dlock benchmarks (scripts/bench)</text>
<rect x="10" y="32" width="12" height="12" class="dlock"/><text x="27" y="42">dlock</text>
<rect x="80" y="32" width="12" height="12" class="base"/><text x="97" y="42">baseline (flock, hand-written spin lock)</text>
<path d="M360 32V45" class="target"/><text x="368" y="42">target</text>
<path d="M430 38H455M455 33V43" class="whisker"/><text x="462" y="42">p90 / p99</text>
{body}</svg>
"##
    )
}
