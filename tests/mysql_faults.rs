//! MySQL/MariaDB backend under faults: refused and rejected connections;
//! plus what is specific to this backend (its table, case-sensitive names,
//! waiting server-side). The server killed, restarted or paused and the
//! holder's connection killed are tests/faults.rs's scenarios, on every
//! backend that has those hooks.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mariadb::{MariaDb, DATABASE, PASSWORD, USER};
use common::*;

#[test]
fn waiters_block_in_the_server_instead_of_polling() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    let mut a = spawn(ctx.cmd(&[
        "exec",
        "--lease",
        "3s",
        "job",
        "--",
        "sh",
        "-c",
        &recorder(&ctx, "a"),
    ]));
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    let mut w = spawn(ctx.cmd(&["acquire", "job", "--wait", "60s"]));
    let questions = || questions(&db);
    let q0 = questions();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let used = questions() - q0;
    // The holder renews every second (two statements each); the waiter wakes
    // about once per lease. A waiter polling every 10ms would send 500+.
    assert!(used < 60, "{used} statements in {:?}", t0.elapsed());
    assert!(w.try_wait().unwrap().is_none(), "still waiting");
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    assert!(wait_child(&mut a, Duration::from_secs(20)).success());
    let released = Instant::now();
    assert!(wait_child(&mut w, Duration::from_secs(20)).success());
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "the waiter took {:?} after the holder exited",
        released.elapsed()
    );
}

#[test]
fn a_release_wakes_one_waiter_not_all() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    let exec = |tag: &str| {
        spawn(ctx.cmd(&[
            "-v",
            "exec",
            "--lease",
            "10s",
            "--wait",
            "60s",
            "job",
            "--",
            "sh",
            "-c",
            &recorder(&ctx, tag),
        ]))
    };
    let mut a = exec("a");
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    // Its break listener's statements come before the count.
    let mut a_err = Lines::of(&mut a);
    a_err.expect("listening for breaks", Duration::from_secs(20));
    let tags = ["w1", "w2", "w3", "w4", "w5"];
    let mut waiters: Vec<_> = tags.iter().map(|t| exec(t)).collect();
    wait_until(
        "every waiter blocked in GET_LOCK",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(20));
            db.sql(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE '%GET\\_LOCK%' AND ID <> CONNECTION_ID()",
            ) == "5"
        },
    );
    let questions = || questions(&db);
    let q0 = questions();
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    assert!(wait_child(&mut a, Duration::from_secs(20)).success());
    wait_until("a waiter running", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(10));
        tags.iter()
            .any(|t| ctx.path(&format!("{t}.start")).exists())
    });
    std::thread::sleep(Duration::from_millis(300));
    // The holder's release and wake-up, the woken waiter's read and write,
    // and the two status queries (8); the new holder's break listener, 100 ms
    // into its command: GET_LOCK, a status read and its sleep (3). A wake-up
    // of every waiter costs 2 or more statements each.
    let used = questions() - q0;
    let running = tags
        .iter()
        .filter(|t| ctx.path(&format!("{t}.start")).exists())
        .count();
    assert_eq!(running, 1);
    assert!(
        used <= 8 + 3,
        "{used} statements for one hand-off to one of 5 waiters"
    );
    for t in tags {
        std::fs::write(ctx.path(&format!("{t}.stop")), "").unwrap();
    }
    for w in &mut waiters {
        assert!(wait_child(w, Duration::from_secs(30)).success());
    }
}

/// `dlock ARGS` against `url`.
fn at(url: &str, args: &[&str]) -> std::process::Output {
    let mut c = dlock(url);
    c.args(args);
    run(c)
}

#[test]
fn connection_errors_are_one_clear_line_without_the_password() {
    let db = MariaDb::shared();
    let port = free_port();
    let o = at(
        &format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"),
        &["status"],
    );
    one_line_error(&o, 69, "connection refused");
    assert!(!stderr(&o).contains(PASSWORD));

    for wrong in ["wrong-Pass-42", "p%40ss%3Aword-99"] {
        let o = at(&db.url_with(USER, wrong, DATABASE), &["status"]);
        one_line_error(&o, 69, "authentication");
        let err = stderr(&o);
        assert!(
            !err.contains(wrong) && !err.contains("p@ss:word-99"),
            "{err}"
        );
    }

    let o = at(
        &db.url_with(USER, PASSWORD, "dlock_missing"),
        &["acquire", "x"],
    );
    one_line_error(&o, 69, "unknown database 'dlock_missing'");
    assert!(!stderr(&o).contains(PASSWORD));

    let o = at(
        &format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}", db.port),
        &["status"],
    );
    one_line_error(&o, 2, "no database");
    assert!(!stderr(&o).contains(PASSWORD));
}

#[test]
fn table_per_prefix_case_sensitive_names_and_a_kept_fence() {
    let db = MariaDb::shared();
    let ctx = Ctx::new(db.clone());
    let upper = ctx.acquire("Job", "30s");
    let lower = ctx.acquire("job", "30s");
    let names: Vec<String> = ctx.status_json(&[])["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Job", "job"]);
    let table = format!("{}_leases", ctx.prefix);
    assert_eq!(
        db.sql(&format!("SHOW TABLES FROM {DATABASE} LIKE '{table}'")),
        table
    );
    assert_eq!(code(&ctx.run(&["release", "Job", "--token", &upper])), 0);
    assert_eq!(code(&ctx.run(&["release", "job", "--token", &lower])), 0);
    // The rows stay, without an owner, so that fences never restart.
    assert_eq!(
        db.sql(&format!(
            "SELECT COUNT(*), COUNT(token) FROM {DATABASE}.`{table}`"
        )),
        "2\t0"
    );
    // A prefix that is not a plain identifier gets a table of its own.
    let mut c = ctx.cmd(&["--prefix", "Team A/ci", "acquire", "job"]);
    c.env_remove("DLOCK_PREFIX");
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn tls_with_a_private_ca() {
    require("openssl", "openssl");
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    let db = MariaDb::start_with(&[
        &format!("--ssl-ca={}", c("ca.crt")),
        &format!("--ssl-cert={}", c("server.crt")),
        &format!("--ssl-key={}", c("server.key")),
        "--require-secure-transport=ON",
    ]);
    let tls = format!(
        "{}?require_ssl=true&root_cert_path={}",
        db.url(),
        c("ca.crt")
    );
    let o = at(&tls, &["exec", "job", "--", "true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The server insists on TLS, so plain connections are turned away.
    let o = at(&db.url(), &["status"]);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(!stderr(&o).contains(PASSWORD));
    // Without the private CA the certificate is not trusted.
    let o = at(&format!("{}?require_ssl=true", db.url()), &["status"]);
    one_line_error(&o, 69, "TLS with");
}

/// The server's count of statements received (`Questions`), all clients.
fn questions(db: &MariaDb) -> i64 {
    db.sql("SHOW GLOBAL STATUS LIKE 'Questions'")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// mysql:// at a Redis port: Redis greets nobody, so the driver would wait
/// out the whole timeout for a MySQL greeting; dlock looks at what answers
/// and says so at once.
#[test]
fn a_mysql_url_at_a_redis_port_says_what_answers() {
    let redis = Redis::start();
    let url = format!(
        "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        redis.port
    );
    let started = Instant::now();
    let o = at(&url, &["--connect-timeout", "20s", "status"]);
    let took = started.elapsed();
    one_line_error(
        &o,
        69,
        "does not speak the MySQL protocol: it answers as Redis does",
    );
    assert!(!stderr(&o).contains(PASSWORD), "{}", stderr(&o));
    // Long before the 20 s a server that never greets would be given.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// redis:// at a MySQL port: the server's greeting is not Redis protocol;
/// dlock says what answers there instead of dumping a parser error.
#[test]
fn a_redis_url_at_a_mysql_port_says_what_answers() {
    let db = MariaDb::shared();
    let url = format!("redis://127.0.0.1:{}/0", db.port);
    for args in [&["status"][..], &["exec", "x", "--", "true"]] {
        let o = at(&url, args);
        one_line_error(
            &o,
            69,
            "does not speak the Redis protocol: it answers as MySQL/MariaDB does",
        );
    }
}

/// `status` only reads: a user without the CREATE privilege learns that no
/// lock is held (it got exit 69 before), and no table appears.
#[test]
fn status_creates_nothing() {
    let db = MariaDb::shared();
    let ctx = Ctx::new(db.clone());
    let reader = format!("r_{}", ctx.prefix);
    let reader = &reader[..reader.len().min(32)];
    db.sql(&format!(
        "CREATE USER '{reader}'@'%' IDENTIFIED BY 'pw-reader'; \
         GRANT SELECT ON `{DATABASE}`.* TO '{reader}'@'%'"
    ));
    let url = db.url_with(reader, "pw-reader", DATABASE);
    // A listing with nothing held is success; a named lock that is free, 1.
    for (names, want) in [(&[][..], 0), (&["job"], 1)] {
        let mut args = vec!["--url", &url, "status"];
        args.extend(names);
        let o = ctx.run(&args);
        assert_eq!(code(&o), want, "{names:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{}", stderr(&o));
        if names.is_empty() {
            assert!(stdout(&o).contains("no locks held"), "{}", stdout(&o));
        }
    }
    // The owner's status creates nothing either.
    assert_eq!(code(&ctx.run(&["status", "job"])), 1);
    let tables = db.sql(&format!(
        "SHOW TABLES FROM `{DATABASE}` LIKE '{}\\_leases'",
        ctx.prefix
    ));
    assert!(tables.trim().is_empty(), "status created {tables}");
}

/// A host that drops connection attempts (a listener whose accept queue is
/// full) costs one --connect-timeout, not two, and the error says so.
#[test]
fn a_silent_host_costs_one_timeout() {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket this test owns; a backlog of 0 keeps
    // one connection queued and drops the SYNs of any more.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let port = l.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..4 {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            queued.push(s);
        }
    }
    let url = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}");
    let started = Instant::now();
    let o = at(&url, &["--connect-timeout", "2s", "status"]);
    let took = started.elapsed();
    one_line_error(&o, 69, "did not answer within 2s");
    assert!(took < Duration::from_millis(3500), "took {took:?}");
}
