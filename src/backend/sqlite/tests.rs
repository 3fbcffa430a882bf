use super::conn::try_connect;
use super::exec::Db;
use super::*;

use crate::backend::{Kind, Mode};
use crate::holder::Holder;

/// Runs `hook` just before the first statement that `when` picks, as a
/// concurrent process (or a slow network) would come in between.
struct Hooked<'a> {
    inner: Db<'a>,
    when: fn(&str) -> bool,
    hook: Option<Box<dyn FnOnce() + 'a>>,
}

impl Exec for Hooked<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        self.inner.query(sql, params)
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        if (self.when)(sql) {
            if let Some(hook) = self.hook.take() {
                hook();
            }
        }
        self.inner.execute(sql, params)
    }
}

/// Counts the statements run through it.
struct Counted<'a> {
    inner: Db<'a>,
    statements: usize,
}

impl Exec for Counted<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        self.statements += 1;
        self.inner.query(sql, params)
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        self.statements += 1;
        self.inner.execute(sql, params)
    }
}

const TABLE: &str = "t_leases";
const T: Duration = Duration::from_secs(2);

fn db<'a>(c: &'a Connection, path: &'a Path) -> Db<'a> {
    Db {
        conn: c,
        path,
        table: TABLE,
        timeout: T,
    }
}

fn req<'a>(token: &'a str, kind: Kind, lease: Duration, h: &'a Holder) -> Request<'a> {
    Request {
        name: "n",
        token,
        lease,
        holder: h,
        kind,
    }
}

fn one(c: &Connection, q: &str) -> Val {
    let mut d = db(c, Path::new("x"));
    d.query(q, &[]).unwrap().remove(0).remove(0)
}

#[test]
fn a_write_that_loses_a_race_starts_again_from_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let (mine, theirs) = (
        try_connect(&path, TABLE, T, true).unwrap(),
        try_connect(&path, TABLE, T, true).unwrap(),
    );
    let leases = Leases::new(&DIALECT, TABLE);
    let h = Holder::default();
    let req = req("mine", Kind::MUTEX, Duration::from_secs(10), &h);
    // Free row first, so that the race is an UPDATE on a known version.
    let old = Request {
        token: "old",
        ..req
    };
    leases.acquire(&mut db(&theirs, &path), &old).unwrap();
    leases.release(&mut db(&theirs, &path), "n", "old").unwrap();
    let theirs = &theirs;
    let mut racy = Hooked {
        inner: db(&mine, &path),
        when: |_| true,
        hook: Some(Box::new(move || {
            theirs
                .execute_batch(
                    "UPDATE t_leases SET token = 'theirs', expires_us = dlock_now_us() + 10000000, \
                     version = version + 1 WHERE name = 'n'",
                )
                .unwrap()
        })),
    };
    match leases.acquire(&mut racy, &req).unwrap().0 {
        Acquire::Busy(Some(info)) => assert_eq!(info.token_id, "theirs"),
        other => panic!("the lost race must end busy, got {other:?}"),
    }
    // Their write stands and ours never landed: insert, release, theirs.
    assert_eq!(one(&mine, "SELECT version FROM t_leases"), Val::Int(3));
}

#[test]
fn an_extension_never_revives_a_lease_that_ran_out_before_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let conn = try_connect(&path, TABLE, T, true).unwrap();
    let leases = Leases::new(&DIALECT, TABLE);
    let h = Holder::default();
    let sem = Kind {
        slots: 2,
        ..Kind::MUTEX
    };
    let lease = Duration::from_millis(300);
    let mut a = db(&conn, &path);
    leases.acquire(&mut a, &req("s0", sem, lease, &h)).unwrap();
    leases.acquire(&mut a, &req("s1", sem, T, &h)).unwrap();
    // The renewal reads s0 alive, and its write comes after s0's lease ended.
    let mut slow = Hooked {
        inner: db(&conn, &path),
        when: |sql| sql.contains("version = ?"),
        hook: Some(Box::new(move || std::thread::sleep(lease + lease / 2))),
    };
    let (check, _) = leases.renew(&mut slow, "n", "s0", T).unwrap();
    assert!(matches!(check, Check::NotHeld), "{check:?}");
    let left = leases.status(&mut a, None).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].token_id, "s1");
}

/// The table as dlock made it before the lock kinds.
const OLD_TABLE: &str = "CREATE TABLE t_leases (
    name TEXT NOT NULL PRIMARY KEY, token TEXT, fence INTEGER NOT NULL DEFAULT 0,
    holder_host TEXT NOT NULL DEFAULT '', holder_pid INTEGER NOT NULL DEFAULT 0,
    holder_user TEXT NOT NULL DEFAULT '', holder_command TEXT NOT NULL DEFAULT '',
    acquired_us INTEGER NOT NULL DEFAULT 0, expires_us INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID";

#[test]
fn a_table_of_an_older_dlock_gains_the_state_column_and_keeps_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let (conn, other) = (
        try_connect(&path, "unused", T, true).unwrap(),
        try_connect(&path, "unused", T, true).unwrap(),
    );
    conn.execute_batch(OLD_TABLE).unwrap();
    // An older dlock holds "n" (its one-statement acquire of a new row).
    conn.execute_batch(
        "INSERT INTO t_leases VALUES ('n', 'old-token', 12, 'oldhost', 9, 'u', 'c', \
         dlock_now_us(), dlock_now_us() + 60000000, 1)",
    )
    .unwrap();
    let leases = Leases::new(&DIALECT, TABLE);
    let h = Holder::default();
    let shared = Kind {
        mode: Mode::Shared,
        ..Kind::MUTEX
    };
    let mut d = db(&conn, &path);
    match leases.acquire(&mut d, &req("r", shared, T, &h)).unwrap().0 {
        Acquire::Busy(Some(i)) => {
            assert_eq!((i.token_id.as_str(), i.fence), ("old-toke", 12));
            assert_eq!(i.holder.host, "oldhost");
        }
        other => panic!("the older holder still holds: {other:?}"),
    }
    let cols = one(
        &conn,
        "SELECT group_concat(name) FROM pragma_table_info('t_leases')",
    );
    assert!(
        matches!(&cols, Val::Text(c) if c.ends_with(",state")),
        "{cols:?}"
    );
    // A second process that raced to add it finds nothing to do.
    add_state_column(&other, TABLE).unwrap();

    // The older holder's one-statement release still works, and then the
    // readers' row says "held" to an older dlock, which reads token and expiry.
    assert!(matches!(
        leases.release(&mut d, "n", "old-token").unwrap().0,
        Check::Done
    ));
    leases.acquire(&mut d, &req("r", shared, T, &h)).unwrap();
    let held = one(
        &conn,
        "SELECT token || ' ' || (expires_us > dlock_now_us()) FROM t_leases",
    );
    assert_eq!(held, Val::Text(format!("{} 1", sql::MARKER)));
}

#[test]
fn a_break_is_recorded_for_the_holder_and_a_watcher_beside_a_new_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let conn = try_connect(&path, TABLE, T, true).unwrap();
    let leases = Leases::new(&DIALECT, TABLE);
    let h = Holder::default();
    let mut d = db(&conn, &path);
    let lease = Duration::from_secs(60);
    leases
        .acquire(&mut d, &req("victim-token", Kind::MUTEX, lease, &h))
        .unwrap();
    let (broken, _) = leases.force_release(&mut d, "n", None).unwrap();
    assert_eq!(broken.len(), 1);
    let me = crate::backend::engine::breaker();
    let said = |c: Check| match c {
        Check::Broken(b) => b.by,
        other => panic!("not told who broke it: {other:?}"),
    };
    assert_eq!(
        said(leases.renew(&mut d, "n", "victim-token", T).unwrap().0),
        me
    );
    let by = leases.broken_by(&mut d, "n", "victim-t").unwrap();
    assert_eq!(by.as_deref(), Some(me.as_str()));
    assert_eq!(leases.broken_by(&mut d, "n", "other-to").unwrap(), None);
    assert_eq!(leases.broken_by(&mut d, "never", "victim-t").unwrap(), None);

    // A new lone holder keeps the columns and its one-statement renew and
    // release; the record stays beside it, and is no holder.
    leases
        .acquire(&mut d, &req("next", Kind::MUTEX, T, &h))
        .unwrap();
    let token = one(&conn, "SELECT token FROM t_leases");
    assert_eq!(token, Val::Text("next".into()));
    let mut one_statement = Counted {
        inner: db(&conn, &path),
        statements: 0,
    };
    let (check, _) = leases.renew(&mut one_statement, "n", "next", T).unwrap();
    assert!(matches!(check, Check::Done), "{check:?}");
    let (check, _) = leases.release(&mut one_statement, "n", "next").unwrap();
    assert!(matches!(check, Check::Done), "{check:?}");
    assert_eq!(one_statement.statements, 2, "each in one statement");
    assert!(leases.status(&mut d, None).unwrap().is_empty());
    let state = one(&conn, "SELECT state FROM t_leases");
    assert!(
        matches!(&state, Val::Text(s) if s.contains("victim-token")),
        "{state:?}"
    );
    assert_eq!(
        said(leases.release(&mut d, "n", "victim-token").unwrap().0),
        me
    );
    // The broken token taking the lock again is a holder, not a broken one.
    leases
        .acquire(&mut d, &req("victim-token", Kind::MUTEX, T, &h))
        .unwrap();
    assert!(matches!(
        leases.renew(&mut d, "n", "victim-token", T).unwrap().0,
        Check::Done
    ));
    assert_eq!(leases.broken_by(&mut d, "n", "victim-t").unwrap(), None);
    assert_eq!(
        one(&conn, "SELECT state FROM t_leases"),
        Val::Null,
        "records pruned"
    );
}
