//! The servers the bench runs on: one entry per backend in BACKENDS, each started
//! on free loopback ports in temp dirs; a backend whose harness or server binary
//! is missing is skipped with a loud note.

use super::*;

pub(crate) type Counters = BTreeMap<String, u64>;

pub(crate) struct Backend {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) url: String,
    /// Server-side operation counters (total under "total"), for backends that have a server.
    pub(crate) counters: Option<Box<dyn Fn() -> Counters + Send + Sync>>,
    /// A hand-written spin-lock wrapper: `sh SCRIPT CMD ARGS…` takes the lock
    /// (retrying every 100 ms), runs CMD and releases.
    pub(crate) wrapper: Option<(String, PathBuf)>,
    pub(crate) version: Option<String>,
    /// The server process, for its CPU time.
    pub(crate) server_pid: Option<u32>,
    /// Offers --shared, --slots and --fair (the lock-kinds section).
    pub(crate) kinds: bool,
    /// Keeps the server running while the bench uses it.
    pub(crate) _server: Box<dyn std::any::Any + Send + Sync>,
}

pub(crate) type Starter = fn(&Path) -> Backend;

pub(crate) const BACKENDS: &[(&str, Starter)] = &[
    ("redis", start_redis),
    ("redlock", start_redlock),
    ("cluster", start_cluster),
    ("mysql", start_mysql),
    ("postgres", start_postgres),
    ("etcd", start_etcd),
    ("sqlite", start_sqlite),
    ("zookeeper", start_zookeeper),
];

pub(crate) fn start_redis(dir: &Path) -> Backend {
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
pub(crate) fn commandstats(ports: &[u16]) -> impl Fn() -> Counters + Send + Sync + 'static {
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
pub(crate) fn start_redlock(_dir: &Path) -> Backend {
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
pub(crate) fn start_cluster(_dir: &Path) -> Backend {
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

pub(crate) fn start_mysql(dir: &Path) -> Backend {
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

pub(crate) fn start_etcd(dir: &Path) -> Backend {
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
pub(crate) fn start_zookeeper(_dir: &Path) -> Backend {
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

pub(crate) fn start_postgres(dir: &Path) -> Backend {
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

pub(crate) fn start_sqlite(_dir: &Path) -> Backend {
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
pub(crate) fn pid_listening(program: &str, port: u16) -> Option<u32> {
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
pub(crate) fn cpu_of(pid: u32) -> f64 {
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
pub(crate) fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Starts every selected backend; a harness that panics (a server binary not
/// installed, a harness not there yet) skips that backend with a loud note.
pub(crate) fn start_backends(opts: &Opts, dir: &Path, notes: &mut Vec<String>) -> Vec<Backend> {
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
