//! What is specific to the PostgreSQL backend: its table and schema, the
//! privileges it needs, unix sockets, TLS by sslmode, one-line errors, and
//! waiting inside the server rather than polling.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::{give_to_server_user, Postgres, DATABASE, PASSWORD, USER};
use common::*;

/// `dlock ARGS` against `url`.
fn at(url: &str, args: &[&str]) -> std::process::Output {
    let mut c = dlock(url);
    c.args(args);
    run(c)
}

/// Statements the dlock user sent, as the server logged them (a server
/// started with `statement_log()`).
fn statements(db: &Postgres) -> usize {
    statement_lines(db).len()
}

/// dlock's statements in the server's log, in order.
fn statement_lines(db: &Postgres) -> Vec<String> {
    db.log()
        .lines()
        .filter(|l| l.starts_with(&format!("{USER}|")) && l.contains("LOG:  "))
        .map(String::from)
        .collect()
}

fn statement_log() -> [&'static str; 3] {
    [
        "log_statement=all",
        "log_line_prefix=%u|",
        "log_min_error_statement=panic",
    ]
}

#[test]
fn waiters_block_in_the_server_instead_of_polling() {
    let db = Arc::new(Postgres::start_with(&statement_log()));
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
    let q0 = statements(&db);
    std::thread::sleep(Duration::from_secs(5));
    let used = statements(&db) - q0;
    // The holder renews every second; the waiter wakes about once per
    // lease. A waiter polling every 10ms would send 500+.
    assert!(used < 30, "{used} statements in 5s");
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
    let db = Arc::new(Postgres::start_with(&statement_log()));
    let ctx = Ctx::new(db.clone());
    let exec = |tag: &str| {
        spawn(ctx.cmd(&[
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
    let tags = ["w1", "w2", "w3", "w4", "w5"];
    let mut waiters: Vec<_> = tags.iter().map(|t| exec(t)).collect();
    wait_until(
        "every waiter blocked in pg_advisory_lock",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(20));
            db.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{USER}' \
                 AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_lock%'"
            )) == "5"
        },
    );
    // The holder listens for breaks 100 ms after its grant (LISTEN, then a
    // check of its lease), on a loaded machine after the waiters have
    // blocked: those statements are no hand-off's.
    wait_until(
        "the holder listening for breaks",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(10));
            let lines = statement_lines(&db);
            lines
                .iter()
                .position(|l| l.contains("LISTEN dlock_brk_"))
                .is_some_and(|at| at + 1 < lines.len())
        },
    );
    let q0 = statements(&db);
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    assert!(wait_child(&mut a, Duration::from_secs(20)).success());
    wait_until("a waiter running", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(10));
        tags.iter()
            .any(|t| ctx.path(&format!("{t}.start")).exists())
    });
    std::thread::sleep(Duration::from_millis(300));
    // The holder's release and wake-up, the woken waiter's read and write;
    // a wake-up of every waiter would cost 2 or more statements each.
    let used = statements(&db) - q0;
    let running = tags
        .iter()
        .filter(|t| ctx.path(&format!("{t}.start")).exists())
        .count();
    assert_eq!(running, 1);
    assert!(
        used <= 6,
        "{used} statements for one hand-off to one of 5 waiters:\n{}",
        statement_lines(&db)[q0..].join("\n")
    );
    for t in tags {
        std::fs::write(ctx.path(&format!("{t}.stop")), "").unwrap();
    }
    for w in &mut waiters {
        assert!(wait_child(w, Duration::from_secs(60)).success());
    }
}

/// A lease taken by `dlock acquire` (a process that then exits) and
/// released by another process: the waiter sends nothing meanwhile, and
/// hears of the release by NOTIFY, at once.
#[test]
fn a_release_from_another_process_is_announced() {
    let db = Arc::new(Postgres::start_with(&statement_log()));
    let ctx = Ctx::new(db.clone());
    let tok = ctx.acquire("job", "60s");
    let mut w = spawn(ctx.cmd(&["acquire", "job", "--wait", "60s"]));
    // The woken waiter keeps the wake lock (nobody live holds it) and listens.
    wait_until("the waiter settled", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(20));
        db.sql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted AND a.usename = '{USER}' \
             AND a.state = 'idle' AND a.query NOT LIKE '%LISTEN%'"
        )) == "1"
    });
    let q0 = statements(&db);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(statements(&db), q0, "the waiter polled");
    let t0 = Instant::now();
    let o = ctx.run(&["release", "job", "--token", &tok]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(wait_child(&mut w, Duration::from_secs(20)).success());
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "the waiter took {:?} after the release",
        t0.elapsed()
    );
}

#[test]
fn connection_errors_are_one_clear_line_without_the_password() {
    let db = Postgres::shared();
    let port = free_port();
    let o = at(
        &format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"),
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

    let o = at(&format!("{}&sslmode=sometimes", db.url()), &["status"]);
    one_line_error(&o, 2, "sslmode must be");
    assert!(!stderr(&o).contains(PASSWORD));
}

#[test]
fn table_per_prefix_case_sensitive_names_and_a_kept_fence() {
    let db = Postgres::shared();
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
        db.sql(&format!("SELECT to_regclass('public.{table}') IS NOT NULL")),
        "t"
    );
    assert_eq!(code(&ctx.run(&["release", "Job", "--token", &upper])), 0);
    assert_eq!(code(&ctx.run(&["release", "job", "--token", &lower])), 0);
    // The rows stay, without an owner, so that fences never restart.
    assert_eq!(
        db.sql(&format!("SELECT count(*), count(token) FROM {table}")),
        "2\t0"
    );
}

#[test]
fn the_schema_parameter_and_a_unix_socket() {
    let db = Postgres::shared();
    let ctx = Ctx::new(db.clone());
    let in_schema = format!("{}&schema=locks_{}", db.url(), ctx.prefix);
    let mut c = dlock(&in_schema);
    c.env("DLOCK_PREFIX", &ctx.prefix).args(["acquire", "job"]);
    assert_eq!(code(&run(c)), 0);
    let table = format!("locks_{p}.{p}_leases", p = ctx.prefix);
    assert_eq!(db.sql(&format!("SELECT count(token) FROM {table}")), "1");
    assert!(!ctx.is_held("job"), "another schema, other locks");
    // The same locks over the unix socket, with libpq's host parameter.
    let sock = format!(
        "postgresql://{USER}:{PASSWORD}@/{DATABASE}?host={}&port={}&schema=locks_{}",
        db.socket_dir().display(),
        db.port,
        ctx.prefix
    );
    let mut c = dlock(&sock);
    c.env("DLOCK_PREFIX", &ctx.prefix)
        .args(["status", "--json", "job"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("\"held\":true"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
}

/// A user who may not create tables is told what to grant; once the table
/// exists, SELECT, INSERT and UPDATE on it are all dlock needs.
#[test]
fn privileges_needed_are_named() {
    let db = Postgres::shared();
    let ctx = Ctx::new(db.clone());
    let plain = format!("plain_{}", ctx.prefix);
    db.sql(&format!("CREATE USER {plain} PASSWORD '{PASSWORD}'"));
    let url = db.url_with(&plain, PASSWORD, DATABASE);
    let mut c = dlock(&url);
    c.env("DLOCK_PREFIX", &ctx.prefix).args(["acquire", "job"]);
    let o = run(c);
    one_line_error(&o, 69, "may not create table");
    assert!(stderr(&o).contains("CREATE on schema"), "{}", stderr(&o));
    // The owner makes the table (its first use) and grants the three rights.
    assert_eq!(code(&ctx.run(&["exec", "job", "--", "true"])), 0);
    db.sql(&format!(
        "GRANT SELECT, INSERT, UPDATE ON {}_leases TO {plain}",
        ctx.prefix
    ));
    let mut c = dlock(&url);
    c.env("DLOCK_PREFIX", &ctx.prefix)
        .args(["exec", "--shared", "job", "--", "true"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn tls_by_sslmode_with_a_private_ca() {
    require("openssl", "openssl");
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    // The server reads its key as its own user, from a directory it can reach.
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for f in ["server.crt", "server.key"] {
        give_to_server_user(&certs.path().join(f));
    }
    let db = Postgres::start_with(&[
        "ssl=on",
        &format!("ssl_cert_file={}", c("server.crt")),
        &format!("ssl_key_file={}", c("server.key")),
    ]);
    let base = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        db.port
    );
    let tls_sessions = || {
        db.sql(&format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE usename = '{USER}' AND ssl"
        ))
    };
    for mode in [
        format!("sslmode=verify-full&sslrootcert={}", c("ca.crt")),
        format!("sslmode=verify-ca&sslrootcert={}", c("ca.crt")),
        "sslmode=require".to_string(),
        "sslmode=prefer".to_string(),
    ] {
        let go = Fifo::new(certs.path(), "go");
        let url = format!("{base}?{mode}");
        let mut holder = spawn({
            let mut c = dlock(&url);
            c.args([
                "exec",
                "job",
                "--",
                "sh",
                "-c",
                &format!("read x < '{}'", go.path.display()),
            ]);
            c
        });
        wait_until("a TLS session", Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(20));
            tls_sessions() == "1"
        });
        go.write_line("go");
        let st = wait_child(&mut holder, Duration::from_secs(20));
        assert!(st.success(), "{mode}: {st:?}");
        std::fs::remove_file(&go.path).unwrap();
    }
    // Without the private CA the certificate is not trusted.
    let o = at(
        &format!("{base}?sslmode=verify-full&sslrootcert={}", c("server.crt")),
        &["status"],
    );
    one_line_error(&o, 69, "TLS with");
    assert!(!stderr(&o).contains(PASSWORD));
}

/// Behind PgBouncer in transaction mode, session advisory locks and LISTEN
/// do not work; the lease table still decides alone, so the sections never
/// overlap, and waiting only gets slower.
#[test]
fn behind_pgbouncer_in_transaction_mode_locks_stay_correct() {
    let db = Arc::new(Postgres::start());
    let bouncer = Arc::new(common::postgres::Bouncer::start(&db));
    let ctx = Ctx::new(bouncer);
    let counter = ctx.path("counter");
    std::fs::write(&counter, "0").unwrap();
    let section = format!(
        "n=$(cat '{c}'); n=$((n+1)); printf %s \"$n\" > '{c}.tmp'; mv '{c}.tmp' '{c}'",
        c = counter.display()
    );
    let (workers, each) = (4, 10);
    let t0 = Instant::now();
    let ran = ctx.run_workers(workers, each, "--wait 120s --lease 2s counter", &section);
    let noticed = ran.iter().filter(|(_, e)| e.contains("pooler")).count();
    eprintln!(
        "postgres behind pgbouncer (transaction mode): {} sections in {:?}; {noticed} of {workers} workers noticed the pooler",
        workers * each,
        t0.elapsed()
    );
    for (st, err) in &ran {
        assert!(st.success(), "a worker failed: {st:?}: {err}");
    }
    let n: usize = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, workers * each, "lost updates: sections overlapped");
}

/// `status` only reads: a role that may not create tables learns that no
/// lock is held (it got exit 69 before), and the table (and a `?schema=`
/// one) still does not exist afterwards.
#[test]
fn status_creates_nothing() {
    let db = Postgres::shared();
    let ctx = Ctx::new(db.clone());
    let reader = format!("reader_{}", ctx.prefix);
    db.sql(&format!("CREATE USER {reader} PASSWORD '{PASSWORD}'"));
    let table = format!("{}_leases", ctx.prefix);
    for url in [
        db.url_with(&reader, PASSWORD, DATABASE),
        format!("{}&schema=s_{}", db.url(), ctx.prefix),
    ] {
        // A listing with nothing held is success; a named lock that is free, 1.
        for (args, want) in [(&["status"][..], 0), (&["status", "job"], 1)] {
            let mut c = dlock(&url);
            c.env("DLOCK_PREFIX", &ctx.prefix).args(args);
            let o = run(c);
            assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).is_empty(), "{}", stderr(&o));
        }
        let mut c = dlock(&url);
        c.env("DLOCK_PREFIX", &ctx.prefix).arg("status");
        assert!(stdout(&run(c)).contains("no locks held"));
    }
    let found = db.sql(&format!(
        "SELECT count(*) FROM pg_class WHERE relname = '{table}'"
    ));
    assert_eq!(found.trim(), "0", "status created {table}");
    let schemas = db.sql(&format!(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 's_{}'",
        ctx.prefix
    ));
    assert_eq!(schemas.trim(), "0", "status created the schema");
}

/// postgres:// at a Redis port: Redis waits for a newline that the
/// start-up message never sends, so dlock waited out the timeout and said
/// "did not answer"; it now says what answers there, at once.
#[test]
fn a_postgres_url_at_a_redis_port_says_what_answers() {
    let redis = Redis::start();
    let url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
        redis.port
    );
    for args in [&["status"][..], &["exec", "x", "--", "true"]] {
        let started = Instant::now();
        let mut all = vec!["--connect-timeout", "10s"];
        all.extend(args);
        let o = at(&url, &all);
        let took = started.elapsed();
        one_line_error(
            &o,
            69,
            "does not speak the PostgreSQL protocol: it answers as Redis does; for Redis use redis://",
        );
        assert!(!stderr(&o).contains(PASSWORD), "{}", stderr(&o));
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }
}

/// A rule that turns every UPDATE of the table into nothing makes each
/// write find the row "changed" as another client's write would: the
/// give-up is then certain, with the words and exit code of every backend.
#[test]
fn a_lock_that_keeps_changing_gives_up_with_exit_69_and_the_shared_words() {
    let db = Postgres::shared();
    let ctx = Ctx::new(db.clone());
    let tok = ctx.acquire("job", "30s");
    let table = format!("{}_leases", ctx.prefix);
    // Every update skipped, as if another client had always written first
    // (a trigger, not a rule: dlock's writes announce the change with RETURNING).
    let skip = format!("{}_skip", ctx.prefix);
    db.sql(&format!(
        "CREATE FUNCTION {skip}() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'"
    ));
    db.sql(&format!(
        "CREATE TRIGGER lose BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {skip}()"
    ));
    let o = ctx.run(&["renew", "job", "--token", &tok, "--lease", "30s"]);
    one_line_error(&o, 69, "");
    assert_eq!(
        stderr(&o).trim_end(),
        "dlock: error: lock 'job' kept changing: 100 attempts in a row to update it \
         lost to other clients' writes; try again"
    );
    db.sql(&format!("DROP TRIGGER lose ON {table}"));
    assert_eq!(code(&ctx.run(&["release", "job", "--token", &tok])), 0);
}
