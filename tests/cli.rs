//! The command line as scripts meet it: option bounds, the token a nested
//! dlock may use, output that cannot be written, and what messages and the
//! holder record may quote.

use crate::common;

use std::sync::Arc;

use common::sqlite::Sqlite;
use common::*;

fn sqlite_ctx() -> Ctx {
    Ctx::new(Arc::new(Sqlite::new()))
}

/// The lines of stderr, asserting there is exactly one.
fn one_line(o: &std::process::Output) -> String {
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    err
}

/// Every duration option refuses a value past its bound at parse time, in one
/// line with exit 2, before anything is acquired or run.
#[test]
fn durations_above_their_bound_are_usage_errors() {
    let ctx = sqlite_ctx();
    let marker = ctx.path("ran");
    let touch = format!("touch '{}'", marker.display());
    let huge = "300000000000y";
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("--wait", vec!["acquire", "j", "--wait", huge]),
        ("--lease", vec!["acquire", "j", "--lease", huge]),
        ("--lease", vec!["acquire", "j", "--lease", "1y 1s"]),
        (
            "--connect-timeout",
            vec!["acquire", "j", "--connect-timeout", huge],
        ),
        (
            "--connect-timeout",
            vec!["status", "--connect-timeout", "61m"],
        ),
        (
            "--lease",
            vec!["renew", "j", "--token", "abc", "--lease", huge],
        ),
        ("--wait", vec!["exec", "j", "--wait", huge, "-c", &touch]),
        ("--lease", vec!["exec", "j", "--lease", huge, "-c", &touch]),
        (
            "--kill-after",
            vec!["exec", "j", "--kill-after", huge, "-c", &touch],
        ),
        (
            "--min-hold",
            vec!["exec", "j", "--min-hold", huge, "-c", &touch],
        ),
        (
            "--max-runtime",
            vec!["exec", "j", "--max-runtime", huge, "-c", &touch],
        ),
        (
            "--jitter",
            vec!["exec", "j", "--jitter", huge, "-c", &touch],
        ),
    ];
    for (option, args) in cases {
        let o = ctx.run(&args);
        let err = one_line(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert!(
            err.contains(option) && err.contains("at most"),
            "{args:?}: names the option and its bound: {err}"
        );
        assert!(!ctx.is_held("j"), "{args:?} acquired the lock");
        assert!(!marker.exists(), "{args:?} ran the command");
    }
    let mut c = ctx.cmd(&["status"]);
    c.env("DLOCK_CONNECT_TIMEOUT", huge);
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", one_line(&o));
    assert!(stderr(&o).contains("--connect-timeout"), "{}", stderr(&o));
}

/// `dlock exec` with `$DLOCK_BIN` (the dlock under test) in its environment.
fn exec_sh(ctx: &Ctx, args: &[&str], script: &str) -> std::process::Command {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "sh", "-c", script]);
    let mut c = ctx.cmd(&all);
    c.env("DLOCK_BIN", dlock_bin());
    c
}

/// Inside `exec L`, `acquire L` is not re-entrant (it ignores the inherited
/// DLOCK_TOKEN and waits), and `release L` refuses the inherited token.
#[test]
fn a_job_cannot_reacquire_or_release_its_exec_lock_by_accident() {
    let ctx = sqlite_ctx();
    let script = r#"
        "$DLOCK_BIN" acquire L --wait 300ms; echo "acq=$?"
        "$DLOCK_BIN" release L; echo "rel=$?"
        "$DLOCK_BIN" status L >/dev/null; echo "held=$?""#;
    let o = run(exec_sh(&ctx, &["L"], script));
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}{}", stderr(&o));
    assert!(out.contains("acq=75"), "the nested acquire waited: {out}");
    assert!(out.contains("rel=2"), "the nested release refused: {out}");
    assert!(out.contains("held=0"), "the lock stayed held: {out}");
    let err = stderr(&o);
    assert!(
        err.contains("DLOCK_TOKEN") && err.contains("--token"),
        "says why and what to do: {err}"
    );
    assert!(!ctx.is_held("L"), "exec released it when the job ended");

    // The literal case: exec's own release still finds its lease.
    let mut c = ctx.cmd(&["exec", "L", "--"]);
    c.arg(dlock_bin()).args(["release", "L"]);
    let o = run(c);
    let err = one_line(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(!err.contains("expired"), "{err}");

    // On purpose: an explicit --token, or DLOCK_TOKEN for another lock.
    let o = run(exec_sh(
        &ctx,
        &["L"],
        r#""$DLOCK_BIN" release L --token "$DLOCK_TOKEN" && echo released"#,
    ));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("released"));
    let tok = ctx.acquire("M", "30s");
    // exec sets DLOCK_TOKEN for its job; M's token comes in under another name.
    let mut c = exec_sh(
        &ctx,
        &["L"],
        r#"DLOCK_TOKEN="$M_TOKEN" "$DLOCK_BIN" release M"#,
    );
    c.env("M_TOKEN", &tok);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!ctx.is_held("M"));
}

/// The reported job: the nested acquire/release must not let a second exec in
/// while the first job still runs.
#[test]
fn a_nested_release_does_not_let_another_exec_in() {
    let ctx = sqlite_ctx();
    let released = Fifo::new(ctx.dir.path(), "released");
    let go = Fifo::new(ctx.dir.path(), "go");
    let script = r#""$DLOCK_BIN" release L --token "$("$DLOCK_BIN" acquire L --wait 1s)"
        echo "$?" > "$RELEASED"; read x < "$GO""#;
    let mut c = exec_sh(&ctx, &["--lease", "3s", "L"], script);
    c.env("RELEASED", &released.path).env("GO", &go.path);
    let mut first = spawn(c);
    released.read_line(std::time::Duration::from_secs(30));
    let o = ctx.run(&["exec", "L", "--", "echo", "in"]);
    assert!(
        !stdout(&o).contains("in"),
        "a second exec ran while the first job runs: {}",
        stderr(&o)
    );
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    go.write_line("go");
    let st = wait_child(&mut first, std::time::Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    let o = ctx.run(&["exec", "L", "--", "echo", "in"]);
    assert_eq!(stdout(&o).trim(), "in", "{}", stderr(&o));
}

/// Runs `c` with stdout a pipe whose reading end is already closed, and stdin
/// and stderr as `run` has them (stderr closed too with `close_stderr`).
fn run_with_stdout(mut c: std::process::Command, stdout: Stdout) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    match stdout {
        Stdout::BrokenPipe | Stdout::BrokenPipeNoStderr => {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: both descriptors were just created and are owned here.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            drop(r);
            c.stdout(Stdio::from(w));
        }
        Stdout::Closed => {
            // SAFETY: close is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::close(1);
                    Ok(())
                });
            }
        }
    }
    if stdout == Stdout::BrokenPipeNoStderr {
        // SAFETY: close is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::close(2);
                Ok(())
            });
        }
        c.stderr(Stdio::inherit());
    } else {
        c.stderr(Stdio::piped());
    }
    c.stdin(Stdio::null())
        .spawn()
        .expect("spawn dlock")
        .wait_with_output()
        .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    BrokenPipe,
    BrokenPipeNoStderr,
    Closed,
}

/// dlock started with stdin and stdout closed puts /dev/null on them before
/// it opens anything, so that its connection to the server does not become
/// descriptor 0 or 1, where a stray write would reach the server. (SQLite
/// guards its own files from them; a Redis connection is a plain socket.)
#[test]
fn closed_standard_descriptors_are_never_a_connection() {
    use std::os::unix::process::CommandExt;
    let ctx = Ctx::new(Arc::new(Redis::start()));
    // The command's parent is dlock itself.
    let mut c = exec_sh(
        &ctx,
        &["L"],
        r#"echo "$(readlink /proc/$PPID/fd/0) $(readlink /proc/$PPID/fd/1)" >&2"#,
    );
    // SAFETY: close is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::close(0);
            libc::close(1);
            Ok(())
        });
    }
    let o = c.stderr(std::process::Stdio::piped()).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim(), "/dev/null /dev/null");
}

/// A token that cannot be written is not left holding the lock: exit 74,
/// one line, and the lock is free; never a panic.
#[test]
fn acquire_releases_a_token_it_cannot_write() {
    let ctx = sqlite_ctx();
    for how in [Stdout::BrokenPipe, Stdout::Closed] {
        for args in [
            vec!["acquire", "L"],
            vec!["acquire", "L", "--json"],
            vec!["acquire", "L", "--keepalive-pid", "1"],
        ] {
            let o = run_with_stdout(ctx.cmd(&args), how);
            let err = one_line(&o);
            assert_eq!(code(&o), 74, "{args:?}: {err}");
            assert!(
                err.contains("could not write the token") && err.contains("released"),
                "{args:?}: {err}"
            );
            assert!(!ctx.is_held("L"), "{args:?} left the lock held");
        }
    }
    let o = run_with_stdout(ctx.cmd(&["acquire", "L"]), Stdout::BrokenPipeNoStderr);
    assert_eq!(code(&o), 74, "quietly, with the code");
    assert!(!ctx.is_held("L"));

    // Only extended: the caller holds it with its own token, which stays valid.
    let tok = ctx.acquire("L", "30s");
    let o = run_with_stdout(
        ctx.cmd(&["acquire", "L", "--token", &tok]),
        Stdout::BrokenPipe,
    );
    assert_eq!(code(&o), 74, "{}", one_line(&o));
    assert!(ctx.is_held("L"));
    assert_eq!(code(&ctx.run(&["release", "L", "--token", &tok])), 0);
}

/// A reader that left before status or help wrote (`dlock status | true`)
/// ends dlock as it ends ls: killed by SIGPIPE, without a word. A closed
/// stdout is still an error (74) that says so.
#[test]
fn status_and_help_end_quietly_when_their_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let ctx = sqlite_ctx();
    ctx.acquire("L", "30s");
    for args in [
        vec!["status"],
        vec!["status", "--json", "L"],
        vec!["status", "--names-only"],
        vec!["--help"],
        vec!["status", "--help"],
        vec!["--version"],
    ] {
        for how in [Stdout::BrokenPipe, Stdout::BrokenPipeNoStderr] {
            let o = run_with_stdout(ctx.cmd(&args), how);
            assert_eq!(
                o.status.signal(),
                Some(libc::SIGPIPE),
                "{args:?}: {:?} {}",
                o.status,
                stderr(&o)
            );
            assert_eq!(stderr(&o), "", "{args:?}");
        }
        let o = run_with_stdout(ctx.cmd(&args), Stdout::Closed);
        let err = one_line(&o);
        assert_eq!(code(&o), 74, "{args:?}: {err}");
        assert!(err.contains("could not write"), "{args:?}: {err}");
    }
}

/// A parent whose command line carries the URL (a cron `sh -c`) must not put
/// the password into every host's `status`, for `acquire` and for the
/// process watched by `--keepalive-pid`.
#[test]
fn status_never_shows_a_password_from_a_command_line() {
    let server = Arc::new(Redis::with_password("s3cret"));
    let ctx = Ctx::new(server.clone());
    let url = ctx.url();
    assert!(url.contains(":s3cret@"), "{url}");
    let done = Fifo::new(ctx.dir.path(), "done");
    let go = Fifo::new(ctx.dir.path(), "go");
    // The URL in use, another URL, a query password and the bare secret, all
    // literally in the parent's command line (`true` keeps sh from exec'ing dlock).
    let script = format!(
        r#": DLOCK_URL={url} mysql://u:s3cret@db/x redis+unix:///s?pass=s3cret s3cret
        "$DLOCK_BIN" acquire plain >/dev/null && "$DLOCK_BIN" acquire kept --keepalive-pid $$ >/dev/null
        echo "$?" > "$DONE"; read x < "$GO"; true"#
    );
    let mut c = std::process::Command::new("sh");
    c.args(["-c", &script])
        .env("DLOCK_BIN", dlock_bin())
        .env("DLOCK_URL", &url)
        .env("DLOCK_PREFIX", &ctx.prefix)
        .env("DONE", &done.path)
        .env("GO", &go.path);
    let mut parent = spawn(c);
    assert_eq!(done.read_line(std::time::Duration::from_secs(30)), "0");
    let table = stdout(&ctx.run(&["status"]));
    let json = ctx.status_json(&["plain", "kept"]);
    go.write_line("go");
    wait_child(&mut parent, std::time::Duration::from_secs(30));
    for lock in json["locks"].as_array().unwrap() {
        let cmd = lock["holder"]["command"]
            .as_str()
            .expect("held, with a command");
        assert!(cmd.contains("acquire plain"), "the parent's command: {cmd}");
    }
    assert!(table.contains("acquire plain"), "{table}");
    assert!(!table.contains("s3cret"), "{table}");
    assert!(!json.to_string().contains("s3cret"), "{json}");
}

/// An empty URL setting is refused, never read as "use this host's file".
#[test]
fn an_empty_url_setting_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let bare = || {
        let mut c = dlock("");
        c.env_remove("DLOCK_URL")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home.path());
        c
    };
    let cases: Vec<(&str, std::process::Command)> = vec![
        ("DLOCK_URL is set but empty", {
            let mut c = bare();
            c.env("DLOCK_URL", "").args(["status"]);
            c
        }),
        ("--url is empty", {
            let mut c = bare();
            c.args(["status", "--url", ""]);
            c
        }),
        ("DLOCK_URL_FILE is set but empty", {
            let mut c = bare();
            c.env("DLOCK_URL_FILE", "")
                .args(["exec", "j", "--", "true"]);
            c
        }),
        ("--url-file is empty", {
            let mut c = bare();
            c.args(["acquire", "j", "--url-file", ""]);
            c
        }),
    ];
    for (says, c) in cases {
        let o = run(c);
        let err = one_line(&o);
        assert_eq!(code(&o), 2, "{err}");
        assert!(err.contains(says) && err.contains("SQLite"), "{err}");
    }
    assert!(
        !home.path().join(".local").exists(),
        "no local SQLite file was used"
    );
    // A URL on the command line still beats an empty one in the environment.
    let db = home.path().join("x.db");
    let mut c = bare();
    c.env("DLOCK_URL_FILE", "")
        .args(["status", "--url", &format!("sqlite://{}", db.display())]);
    let o = run(c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Huge user input is quoted shortened, so the error stays one short line.
#[test]
fn huge_input_is_not_echoed_whole() {
    let ctx = sqlite_ctx();
    let huge = "a".repeat(100_000);
    let file = format!("/{huge}");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "status".into(),
            "--url".into(),
            format!("redis://{huge}:1/0"),
        ],
        #[cfg(feature = "mysql")]
        vec![
            "status".into(),
            "--url".into(),
            format!("mysql://u:p@{huge}/db"),
        ],
        vec![
            "status".into(),
            "--url".into(),
            format!("redis://127.0.0.1:1/{huge}"),
        ],
        vec!["status".into(), "--url-file".into(), file],
        vec!["acquire".into(), "j".into(), "--lease".into(), huge.clone()],
        vec!["exec".into(), "j".into(), "--".into(), format!("/{huge}")],
    ];
    for args in cases {
        let mut c = ctx.cmd(&[]);
        c.args(&args).env("DLOCK_CONNECT_TIMEOUT", "2s");
        let o = run(c);
        let err = one_line(&o);
        assert_ne!(code(&o), 0);
        assert!(err.len() < 1000, "{} bytes: {}…", err.len(), &err[..300]);
        assert!(err.contains('…'), "{err}");
    }
}

/// An argument that is not UTF-8 is a usage error in one line, never a panic,
/// in text and JSON log modes alike.
#[test]
fn arguments_that_are_not_utf8_are_usage_errors() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let ctx = sqlite_ctx();
    let bad = |b: &[u8]| OsString::from_vec(b.to_vec());
    let utf8 = "invalid UTF-8";
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (vec!["acquire".into(), bad(b"\xff\xfe")], utf8),
        (vec!["status".into(), bad(b"\xff")], utf8),
        (vec!["--prefix".into(), bad(b"\xff"), "status".into()], utf8),
        (
            vec!["release".into(), "x".into(), "--token".into(), bad(b"\xff")],
            utf8,
        ),
        (
            vec!["--url".into(), bad(b"redis://h/\xff"), "status".into()],
            utf8,
        ),
        (vec![bad(b"\xff")], "unrecognized subcommand"),
    ];
    for json in [false, true] {
        for (args, says) in &cases {
            let mut c = ctx.cmd(&[]);
            c.args(args);
            if json {
                c.env("DLOCK_LOG_FORMAT", "json");
            }
            let o = run(c);
            let err = one_line(&o);
            assert_eq!(code(&o), 2, "{args:?} (json {json}): {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(err.contains(says), "{args:?} names the problem: {err}");
        }
    }
}
/// dlock with `url` (and no other DLOCK_ setting), its exit code and stderr.
fn with_url(url: &str, args: &[&str]) -> (i32, String) {
    let mut c = dlock(url);
    c.args(args).env("DLOCK_CONNECT_TIMEOUT", "2s");
    let o = run(c);
    (code(&o), stderr(&o))
}

/// Wrong URLs are usage errors (exit 2) in one line that echoes the input,
/// without its password, and says what is wrong with it.
#[test]
fn a_wrong_url_says_what_is_wrong_and_what_to_write() {
    for (url, want) in [
        (
            "127.0.0.1:6379",
            &["'127.0.0.1:6379' is not a URL", "redis://127.0.0.1:6379"][..],
        ),
        ("redis:/host", &["write two slashes", "redis://host"]),
        ("postgres://u@127.0.0.1:0/db", &["'0' is not a port"]),
        ("postgres://,/db", &["malformed URL", "a host is empty"]),
        (
            "postgres://u:p@ss-s3cret@localhost/db",
            &["malformed URL", "%40"],
        ),
        ("etcd://127.0.0.1:1?bogus=1", &["unknown option 'bogus'"]),
        ("etcd://h\u{f6}st.example:2379", &["not ASCII"]),
        ("zk://127.0.0.1:1/zookeeper", &["ZooKeeper's own tree"]),
        (
            "zk://127.0.0.1:1/zookeeper/quota",
            &["ZooKeeper's own tree"],
        ),
        (
            "mongodb://u:s3cret@h/d",
            &["unsupported URL scheme 'mongodb'", "redis://"],
        ),
    ] {
        let (code, err) = with_url(url, &["status"]);
        assert_eq!(code, 2, "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{url}: {err}");
        // A backend left out of this build may refuse the URL for that first.
        let (feature, built) = common::feature_of(url);
        if !built && err.contains(&format!("cargo feature `{feature}`")) {
            continue;
        }
        for w in want {
            assert!(err.contains(w), "{url}: wanted '{w}' in: {err}");
        }
        assert!(
            !err.contains("s3cret") && !err.contains("unsupported URL '"),
            "{url}: {err}"
        );
        assert!(
            !err.contains("for TLS") && !err.contains("resolve"),
            "{url}: {err}"
        );
    }
}

/// In a build without some backends (cargo features), their URLs are usage
/// errors that name the feature to build with, and `dlock urls` marks them.
#[cfg(not(all_backends))]
#[test]
fn a_left_out_backend_names_the_feature_to_build_with() {
    let urls = [
        "sqlite:///tmp/x.db",
        "redis://127.0.0.1:1",
        "rediss://u:s3cret@127.0.0.1:1",
        "mysql://u:s3cret@127.0.0.1:1/d",
        "postgres://u:s3cret@127.0.0.1:1/d",
        "etcds://127.0.0.1:1",
        "zk://127.0.0.1:1",
    ];
    let mut c = dlock("not a url");
    c.arg("urls");
    let listed = stdout(&run(c));
    let mut seen = 0;
    for url in urls {
        let (feature, built) = common::feature_of(url);
        let scheme = url.split("://").next().unwrap();
        let line = listed
            .lines()
            .find(|l| l.starts_with(&format!("{scheme}://")))
            .unwrap_or_else(|| panic!("`dlock urls` lists {scheme}: {listed}"));
        assert_eq!(line.contains("not in this build"), !built, "{line}");
        if built {
            continue;
        }
        seen += 1;
        let (code, err) = with_url(url, &["status"]);
        assert_eq!(code, 2, "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{url}: {err}");
        let want = format!("built without {scheme}:// support (cargo feature `{feature}`)");
        assert!(err.contains(&want), "{url}: {err}");
        assert!(err.contains(&format!("--features {feature}")), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    assert!(seen > 0, "this build leaves some backend out");
}

/// `dlock urls` lists every scheme from the registry, whatever URL is set;
/// the generated help names none of them but its examples.
#[test]
fn dlock_urls_lists_every_scheme() {
    let (code, _) = with_url("not a url", &["urls"]);
    assert_eq!(code, 0);
    let mut c = dlock("not a url");
    c.arg("urls");
    let out = stdout(&run(c));
    for scheme in [
        "sqlite",
        "redis",
        "redis+sentinel",
        "redlock",
        "mysql",
        "postgres",
        "etcds",
        "zk",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{scheme}://"))),
            "{scheme} missing from:\n{out}"
        );
    }
    let mut c = dlock("");
    c.arg("--help");
    let help = stdout(&run(c));
    assert!(
        help.contains("dlock urls") && !help.contains("etcd://"),
        "{help}"
    );
}

/// An error line stays short however much a backend has to say: 5001
/// unreachable sentinels once made one line of 188 KB.
#[test]
fn error_lines_are_capped() {
    let hosts = vec!["127.0.0.1:1"; 5001].join(",");
    let url = format!("redis+sentinel://{hosts}/svc");
    let mut c = dlock(&url);
    c.args(["status"]).env("DLOCK_CONNECT_TIMEOUT", "1s");
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(code(&o), 69, "{}", &err[..err.len().min(600)]);
    assert_eq!(err.lines().count(), 1);
    assert!(err.len() <= 700, "{} bytes: {}", err.len(), &err[..600]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    // clap's usage errors too: a subcommand of 3000 words.
    let mut c = dlock("");
    c.arg("a ".repeat(3000));
    let o = run(c);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).len() <= 700, "{} bytes", stderr(&o).len());
}
