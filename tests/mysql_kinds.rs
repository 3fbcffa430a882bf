//! MySQL/MariaDB specifics of the lock kinds: how waiters behind readers and
//! semaphore slots are woken (tests/kinds.rs has the common contract), and
//! tables made by a dlock from before the kinds.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mariadb::{wake_lock, MariaDb, DATABASE};
use common::*;

/// Statements blocked in GET_LOCK on `key` (as dlock writes it: a hex literal).
fn blocked_on(db: &MariaDb, key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    db.sql(&format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE INFO LIKE '%GET\\_LOCK(X''{hex}''%' AND ID <> CONNECTION_ID()"
    ))
}

/// A slot holder keeps a wake lock of its own; a waiter blocks on that of
/// the holder whose lease ends first and runs the moment it lets go.
#[test]
fn a_semaphore_waiter_wakes_when_the_first_holder_to_expire_lets_go() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    let exec = |tag: &str, lease: &str| {
        let script = recorder(&ctx, tag);
        let args = ["exec", "--slots", "2", "--lease", lease, "--wait", "60s"];
        spawn(ctx.cmd(&[&args[..], &["sem", "--", "sh", "-c", &script]].concat()))
    };
    let mut a = exec("a", "3s");
    wait_for_file(&ctx.path("a.start"), Duration::from_secs(20));
    let mut b = exec("b", "60s");
    wait_for_file(&ctx.path("b.start"), Duration::from_secs(20));
    let key = format!(
        "{}-{}",
        wake_lock(&ctx, "sem"),
        read_i64(&ctx.path("a.fence"))
    );
    assert_ne!(db.sql(&format!("SELECT IS_USED_LOCK('{key}')")), "NULL");
    let mut w = exec("w", "60s");
    wait_until(
        "the waiter blocked on a's wake lock",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(10));
            blocked_on(&db, &key) == "1"
        },
    );
    std::fs::write(ctx.path("a.stop"), "").unwrap();
    assert!(wait_child(&mut a, Duration::from_secs(20)).success());
    let released = Instant::now();
    wait_for_file(&ctx.path("w.start"), Duration::from_secs(20));
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "the waiter took {:?} after the holder exited",
        released.elapsed()
    );
    for (t, k) in [("b", &mut b), ("w", &mut w)] {
        std::fs::write(ctx.path(&format!("{t}.stop")), "").unwrap();
        assert!(wait_child(k, Duration::from_secs(20)).success());
    }
}

/// Readers blocked behind a writer all run when it lets go: each woken
/// reader that gets in passes the wake-up on.
#[test]
fn readers_behind_a_writer_wake_in_a_chain() {
    let db = Arc::new(MariaDb::start());
    let ctx = Ctx::new(db.clone());
    let exec = |tag: &str, extra: &[&str]| {
        let script = recorder(&ctx, tag);
        let args = [&["exec", "--lease", "30s", "--wait", "60s"], extra].concat();
        spawn(ctx.cmd(&[&args[..], &["rw", "--", "sh", "-c", &script]].concat()))
    };
    let mut writer = exec("wr", &[]);
    wait_for_file(&ctx.path("wr.start"), Duration::from_secs(20));
    let tags = ["r1", "r2", "r3"];
    let mut readers: Vec<_> = tags.iter().map(|t| exec(t, &["--shared"])).collect();
    let name_lock = wake_lock(&ctx, "rw");
    wait_until("every reader blocked", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(10));
        blocked_on(&db, &name_lock) == "3"
    });
    std::fs::write(ctx.path("wr.stop"), "").unwrap();
    assert!(wait_child(&mut writer, Duration::from_secs(20)).success());
    let released = Instant::now();
    for t in tags {
        wait_for_file(&ctx.path(&format!("{t}.start")), Duration::from_secs(20));
    }
    // Unwoken readers would sleep until the writer's lease as they saw it (30 s).
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "the readers took {:?} after the writer exited",
        released.elapsed()
    );
    for (t, r) in tags.iter().zip(&mut readers) {
        std::fs::write(ctx.path(&format!("{t}.stop")), "").unwrap();
        assert!(wait_child(r, Duration::from_secs(20)).success());
    }
}

/// Creates `ctx`'s table as a dlock from before the lock kinds made it (no
/// `state` column), with that dlock's lease on "job" in it; returns its name.
fn older_table(db: &MariaDb, ctx: &Ctx) -> String {
    let t = format!("{DATABASE}.`{}_leases`", ctx.prefix);
    db.sql(&format!(
        "CREATE TABLE {t} (name VARBINARY(255) NOT NULL PRIMARY KEY, token VARBINARY(128) NULL, \
         fence BIGINT NOT NULL DEFAULT 0, holder_host VARBINARY(255) NOT NULL DEFAULT '', \
         holder_pid BIGINT NOT NULL DEFAULT 0, holder_user VARBINARY(255) NOT NULL DEFAULT '', \
         holder_command VARBINARY(1024) NOT NULL DEFAULT '', acquired_us BIGINT NOT NULL DEFAULT 0, \
         expires_us BIGINT NOT NULL DEFAULT 0, version BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB;
         INSERT INTO {t} VALUES ('job', 'old-token', 12, 'oldhost', 9, 'u', 'c', 0, \
         TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) + 60000000, 1)"
    ));
    t
}

/// The older dlock's lease is kept, and the column added on first use.
#[test]
fn a_table_of_an_older_dlock_keeps_its_lease_and_gains_the_state_column() {
    let db = MariaDb::shared();
    let ctx = Ctx::new(db.clone());
    let t = older_table(&db, &ctx);
    let o = ctx.run(&["acquire", "--shared", "--wait", "0", "job"]);
    assert_eq!(code(&o), 75, "the older lease holds: {}", stderr(&o));
    let l = ctx.status_json(&["job"])["locks"][0].clone();
    assert_eq!(
        (&l["token_id"], &l["fence"]),
        (&"old-toke".into(), &12.into()),
        "{l}"
    );
    let cols = db.sql(&format!("SHOW COLUMNS FROM {t} LIKE 'state'"));
    assert!(cols.starts_with("state"), "{cols}");
    let o = ctx.run(&["release", "job", "--token", "old-token"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = ctx.run(&["acquire", "--shared", "job"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    // What an older dlock reads: held, until the reader's lease ends.
    assert_eq!(
        db.sql(&format!(
            "SELECT token IS NOT NULL AND expires_us > \
             TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)), fence > 12 FROM {t}"
        )),
        "1\t1"
    );
}

/// A user that may not ALTER the older table is told, in one line, what to run.
#[test]
fn a_user_without_alter_is_told_what_to_run() {
    let db = MariaDb::shared();
    let ctx = Ctx::new(db.clone());
    older_table(&db, &ctx);
    db.sql(&format!(
        "CREATE USER IF NOT EXISTS 'noalter'@'%' IDENTIFIED BY 'pw-noalter'; \
         GRANT SELECT, INSERT, UPDATE, CREATE ON `{DATABASE}`.* TO 'noalter'@'%'"
    ));
    let url = db.url_with("noalter", "pw-noalter", DATABASE);
    let o = ctx.run(&["--url", &url, "status", "job"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("ADD COLUMN state LONGBLOB NULL"), "{err}");
    assert!(!err.contains("pw-noalter"), "{err}");
}
