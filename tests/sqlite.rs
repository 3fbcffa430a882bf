//! The embedded SQLite backend: the default without a URL, many processes
//! on one file, and processes killed at any point.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sqlite::{DefaultPrefix, Sqlite};
use common::*;

/// dlock with no URL at all, under `p`'s prefix, and HOME / XDG_STATE_HOME as given.
fn no_url(p: &DefaultPrefix, home: Option<&Path>, xdg: Option<&Path>) -> Command {
    let mut c = p.command(dlock_bin());
    c.env_remove("XDG_STATE_HOME").env_remove("HOME");
    if let Some(h) = home {
        c.env("HOME", h);
    }
    if let Some(x) = xdg {
        c.env("XDG_STATE_HOME", x);
    }
    c
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Where the README says the default file is: under the effective user's
/// home directory in the password database, else in /tmp.
fn expected_default_file() -> std::path::PathBuf {
    // SAFETY: getpwuid's result is read at once, on this thread only.
    let home = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "this user has no password entry");
        std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned()
    };
    if Path::new(&home).is_dir() {
        Path::new(&home).join(".local/state/dlock/locks.db")
    } else {
        format!("/tmp/dlock-{}/locks.db", unsafe { libc::geteuid() }).into()
    }
}

#[test]
fn default_backend_is_a_host_local_sqlite_file() {
    let p = DefaultPrefix::new();
    let db = expected_default_file();
    let mut c = no_url(&p, None, None);
    c.args([
        "exec",
        "job",
        "--",
        "sh",
        "-c",
        "\"$DLOCK_BIN\" status --json",
    ])
    .env("DLOCK_BIN", dlock_bin());
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["location"], db.display().to_string());
    assert_eq!(
        v["locks"][0]["name"], "job",
        "held while the command ran: {v}"
    );
    assert_eq!(mode(db.parent().unwrap()), 0o700);

    let mut c = no_url(&p, None, None);
    c.arg("status");
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.contains("sqlite backend at") && first.contains(&db.display().to_string()),
        "{first}"
    );
    // -v names the file too.
    let mut c = no_url(&p, None, None);
    c.args(["-v", "exec", "job", "--", "true"]);
    let o = run(c);
    assert!(
        stderr(&o).contains(&db.display().to_string()),
        "{}",
        stderr(&o)
    );

    // `sqlite://` alone is the default file too.
    let mut c = no_url(&p, None, None);
    c.args(["--url", "sqlite://", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&run(c).stdout).unwrap();
    assert_eq!(v["location"], db.display().to_string());
}

/// Cron, systemd, `env -i` and a login shell of one user must meet in one
/// file, and a missing home directory is never created.
#[test]
fn the_default_file_depends_only_on_the_user() {
    let p = DefaultPrefix::new();
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let missing = home.path().join("nonexistent");
    let mut c = no_url(&p, Some(home.path()), None);
    c.args(["acquire", "L", "--lease", "60s"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let tok = stdout(&o).trim().to_string();
    let envs = [
        (Some(home.path()), Some(xdg.path())),
        (Some(xdg.path()), None),
        (None, None),
        (Some(missing.as_path()), None),
    ];
    for (h, x) in envs {
        let mut c = no_url(&p, h, x);
        c.args(["exec", "L", "--", "true"]);
        let o = run(c);
        assert_eq!(
            code(&o),
            75,
            "HOME={h:?} XDG_STATE_HOME={x:?} must find L held: {}",
            stderr(&o)
        );
    }
    let mut c = p.command(dlock_bin());
    c.env_clear()
        .env("DLOCK_PREFIX", &p.prefix)
        .args(["exec", "L", "--", "true"]);
    let o = run(c);
    assert_eq!(code(&o), 75, "env -i: {}", stderr(&o));
    assert!(!missing.exists(), "dlock created a missing HOME");
    assert!(!home.path().join(".local").exists());
    assert!(!xdg.path().join("dlock").exists());
    let mut c = no_url(&p, None, None);
    c.args(["release", "L", "--token", &tok]);
    assert_eq!(code(&run(c)), 0);
}

#[test]
fn concurrent_processes_never_see_database_is_locked() {
    // The file does not exist yet: the first opens race to create it and switch it to WAL.
    let s = Sqlite::new();
    let counter = s.dir.path().join("counter");
    std::fs::write(&counter, "0").unwrap();
    let section = format!(
        "n=$(cat '{c}'); n=$((n+1)); printf %s \"$n\" > '{c}.tmp'; mv '{c}.tmp' '{c}'",
        c = counter.display()
    );
    let (workers, rounds) = (12, 10);
    let mut kids = Vec::new();
    for w in 0..workers {
        let script = format!(
            "i=0; while [ $i -lt {rounds} ]; do \
               \"$B\" exec --wait forever counter -- sh -c \"$SECTION\" || exit 9; \
               \"$B\" exec --wait forever other{w} -- true || exit 8; \
               \"$B\" status >/dev/null || exit 7; \
               i=$((i+1)); done"
        );
        let mut c = Command::new("sh");
        c.args(["-c", &script])
            .env("B", dlock_bin())
            .env("DLOCK_URL", s.url())
            .env("SECTION", &section);
        kids.push(spawn(c));
    }
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "a worker failed ({:?}): {err}",
            o.status
        );
        assert!(
            !err.contains("locked") && !err.contains("busy"),
            "stderr: {err}"
        );
    }
    let n: u32 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, workers * rounds, "sections overlapped");
}

#[test]
fn a_killed_holder_leaves_a_lease_that_expires() {
    let s: Arc<dyn Server> = Arc::new(Sqlite::new());
    let ctx = Ctx::new(s);
    let started = ctx.path("started");
    let mut holder = spawn(ctx.cmd(&[
        "exec",
        "--lease",
        "1s",
        "job",
        "--",
        "sh",
        "-c",
        &format!("touch '{}'; exec sleep 60", started.display()),
    ]));
    wait_for_file(&started, Duration::from_secs(10));
    signal(holder.id(), libc::SIGKILL);
    let _ = holder.wait();
    assert!(ctx.is_held("job"), "the lease outlives its killed holder");
    let t = Instant::now();
    let o = ctx.run(&["acquire", "job", "--wait", "20s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Free once the 1s lease ran out: not at once, not never.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn processes_killed_mid_request_never_corrupt_the_file() {
    let s = Sqlite::new();
    let path = s.path();
    let ctx = Ctx::new(Arc::new(s));
    for i in 0..40u64 {
        let name = format!("k{}", i % 3);
        let mut c = ctx.cmd(&["acquire", &name, "--lease", "300ms", "--wait", "2s"]);
        c.stdout(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        // Spread the kills over start-up, the transaction and exit.
        std::thread::sleep(Duration::from_micros(500 * (i % 20)));
        let _ = child.kill();
        let _ = child.wait();
    }
    for n in ["k0", "k1", "k2"] {
        let o = ctx.run(&["acquire", n, "--wait", "5s", "--lease", "1s"]);
        assert_eq!(code(&o), 0, "{n}: {}", stderr(&o));
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_release_by_another_process_wakes_waiters_at_once() {
    let s: Arc<dyn Server> = Arc::new(Sqlite::new());
    let ctx = Ctx::new(s);
    let tok = ctx.acquire("w", "60s");
    let mut waiter = spawn(ctx.cmd(&["acquire", "w", "--wait", "50s"]));
    // Long enough for a backing-off waiter to be sleeping a whole second.
    std::thread::sleep(Duration::from_secs(2));
    assert!(waiter.try_wait().unwrap().is_none());
    assert_eq!(code(&ctx.run(&["release", "w", "--token", &tok])), 0);
    let released = Instant::now();
    assert!(wait_child(&mut waiter, Duration::from_secs(50)).success());
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "woken {:?} after the release",
        released.elapsed()
    );
}

#[test]
fn a_shared_file_keeps_its_wake_files_shareable() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let url = format!("sqlite://{}/locks.db", shared.display());
    let db = shared.join("locks.db");
    // Made by its administrator: dlock sets up an empty file.
    std::fs::File::create(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut c = dlock(&url);
    c.args(["exec", "x", "--", "true"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let wake = shared.join("locks.db-wake");
    assert_eq!(mode(&wake), 0o1777);
    for f in std::fs::read_dir(&wake).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o666);
    }
}

/// How many processes sleep on the (only) bell in `wake_dir`, without waking
/// them: a futex requeue onto itself counts the sleepers it moves.
fn bell_sleepers(wake_dir: &Path) -> i64 {
    let Some(Ok(f)) = std::fs::read_dir(wake_dir).ok().and_then(|mut d| d.next()) else {
        return 0;
    };
    let Ok(file) = std::fs::File::open(f.path()) else {
        return 0;
    };
    // A bell that its creator has not sized yet: reading its mapping would fault (SIGBUS).
    if file.metadata().map_or(true, |m| m.len() < 4) {
        return 0;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: maps 4 bytes of the 4-byte bell read-only, futex-requeues waiters
    // from it onto itself (waking none), and unmaps it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let n = libc::syscall(
            libc::SYS_futex,
            p,
            libc::FUTEX_CMP_REQUEUE,
            0,
            i32::MAX as usize,
            p,
            std::ptr::read_volatile(p as *const u32),
        );
        libc::munmap(p, 4);
        n
    }
}

/// Removes the database and its -wal and -shm files, as a tmp cleaner does
/// (the -wake directory stays, as with `rm locks.db*`).
fn delete_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn a_deleted_file_loses_the_lease_and_waiters_follow_the_new_file() {
    let s = Sqlite::new();
    let db = s.path();
    let ctx = Ctx::new(Arc::new(s));
    let started = ctx.path("started");
    let mut holder = spawn(ctx.cmd(&[
        "exec",
        "--lease",
        "3s",
        "L",
        "--",
        "sh",
        "-c",
        &format!("touch '{}'; exec sleep 60", started.display()),
    ]));
    wait_for_file(&started, Duration::from_secs(10));
    // A waiter that opened the old file and sleeps until its lease runs out.
    let mut waiter = spawn(ctx.cmd(&["-v", "exec", "--wait", "8s", "L", "--", "true"]));
    let mut waiter_err = Lines::of(&mut waiter);
    let mut wake = db.as_os_str().to_owned();
    wake.push("-wake");
    wait_until(
        "the waiter to sleep on its bell",
        Duration::from_secs(10),
        || bell_sleepers(Path::new(&wake)) > 0,
    );

    delete_db(&db);
    // A newcomer makes a new file and takes the lock there: unavoidable,
    // but the holder must stop its command at its next renewal.
    let tok = ctx.acquire("L", "60s");
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&holder.stderr.take().map_or_else(Vec::new, |mut e| {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        v
    }))
    .into_owned();
    assert_eq!(st.code(), Some(79), "{err}");
    assert!(err.contains("was deleted or replaced"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // When the old file's lease runs out, the waiter must find the lock in
    // the file the path names now (held by the newcomer), not take it in
    // the deleted one.
    let st = wait_child(&mut waiter, Duration::from_secs(30));
    let rest = waiter_err.rest();
    assert_eq!(st.code(), Some(75), "{rest}");
    assert!(ctx.is_held("L"));
    assert_eq!(code(&ctx.run(&["release", "L", "--token", &tok])), 0);
}

/// Clears the immutable flag again, even when the test fails, so that the
/// temporary directory can be removed.
struct Immutable(std::path::PathBuf);

impl Immutable {
    /// `chattr +i`, or None where that does not work (not root, or a
    /// filesystem without the flag).
    fn set(p: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(p.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_immutable_shm_file_is_one_line_and_exit_69_not_sigbus() {
    let s = Sqlite::new();
    let db = s.path();
    let probe = s.dir.path().join("probe");
    std::fs::write(&probe, "").unwrap();
    if Immutable::set(&probe).is_none() {
        eprintln!("skipped: chattr +i does not work here (needs root and ext4 or the like)");
        return;
    }
    let ctx = Ctx::new(Arc::new(s));
    let pid_file = ctx.path("pid");
    let mut holder = spawn(ctx.cmd(&[
        "exec",
        "--lease",
        "1500ms",
        "job",
        "--",
        "sh",
        "-c",
        &format!(
            "echo $$ > '{}.tmp'; mv '{0}.tmp' '{0}'; exec sleep 60",
            pid_file.display()
        ),
    ]));
    wait_for_file(&pid_file, Duration::from_secs(10));
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let _flag = Immutable::set(Path::new(&shm)).expect("chattr +i on the -shm file");
    // The next renewal (in 500ms) writes the -shm file.
    let st = wait_child(&mut holder, Duration::from_secs(20));
    let err = Lines::of(&mut holder).rest();
    assert_eq!(st.code(), Some(69), "{st:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}-shm", db.display())) && err.contains("chattr -i"),
        "{err}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "the command outlived dlock"
    );
}

/// A file that dlock may not write is a definite refusal: one line, exit
/// 69, and no clean-up of a request that "went unanswered".
#[test]
fn a_read_only_file_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // Root writes read-only files anyway: run as nobody then, from a copy
    // of the binary that nobody can reach.
    let root = nix::unistd::geteuid().is_root();
    let bin = dir.path().join("dlock");
    std::fs::copy(dlock_bin(), &bin).unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let dlock_as = |args: &[&str]| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        c.args(args)
            .env("DLOCK_URL", &url)
            .env_remove("DLOCK_PREFIX");
        run(c)
    };
    let o = dlock_as(&["acquire", "a", "--lease", "1m"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("l.db"))
        {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
    }
    for args in [
        &["acquire", "b", "--lease", "2s"][..],
        &["exec", "b", "--", "true"],
    ] {
        let o = dlock_as(args);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("readonly"), "{args:?}: {err}");
    }
}

/// A mistyped path is not created: a missing directory is one line and exit
/// 69 (as flock), and `status` of a file that does not exist creates nothing.
#[test]
fn an_explicit_path_creates_no_directory_and_status_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let url = format!("sqlite://{}/locks.db", missing.display());
    for args in [
        &["acquire", "x"][..],
        &["status"],
        &["exec", "x", "--", "true"],
    ] {
        let mut c = dlock(&url);
        c.args(args);
        let o = run(c);
        let err = stderr(&o);
        assert_eq!(code(&o), 69, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("does not exist"), "{err}");
    }
    assert!(!dir.path().join("no").exists(), "created a directory");
    let file = dir.path().join("locks.db");
    let url = format!("sqlite://{}", file.display());
    let mut c = dlock(&url);
    c.args(["status"]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("no locks held"), "{}", stdout(&o));
    let mut c = dlock(&url);
    c.args(["status", "x"]);
    assert_eq!(code(&run(c)), 1);
    let mut c = dlock(&url);
    c.args(["release", "x", "--force"]);
    let o = run(c);
    assert!(code(&o) == 0 || code(&o) == 3, "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "status or release created {left:?}");
    // The first acquisition creates the file.
    let mut c = dlock(&url);
    c.args(["exec", "x", "--", "true"]);
    assert_eq!(code(&run(c)), 0);
    assert!(file.exists());
}

/// What every backend says when other clients' writes beat each of its
/// attempts to update a lock (`backend::engine::gave_up`).
const GAVE_UP: &str = "dlock: error: lock 'job' kept changing: 100 attempts in a row to update it \
                       lost to other clients' writes; try again";

/// A trigger that skips every UPDATE of the table makes each write find the
/// row "changed" as another client's write would: the give-up is then
/// certain, and says the same as on every backend (exit 69, one line).
#[test]
fn a_lock_that_keeps_changing_gives_up_with_exit_69_and_the_shared_words() {
    let s = Arc::new(Sqlite::new());
    let ctx = Ctx::new(s.clone());
    let tok = ctx.acquire("job", "30s");
    let table = format!("{}_leases", ctx.prefix);
    let conn = rusqlite::Connection::open(s.path()).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER lose BEFORE UPDATE ON {table} BEGIN SELECT RAISE(IGNORE); END;"
    ))
    .unwrap();
    for args in [
        vec!["renew", "job", "--token", &tok, "--lease", "30s"],
        vec!["release", "job", "--token", &tok],
        vec!["release", "job", "--force"],
    ] {
        let o = ctx.run(&args);
        assert_eq!(code(&o), 69, "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end(), GAVE_UP, "{args:?}");
    }
    conn.execute_batch("DROP TRIGGER lose").unwrap();
    assert_eq!(code(&ctx.run(&["release", "job", "--token", &tok])), 0);
}
