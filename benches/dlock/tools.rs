//! The commands under test (dlock, flock, the spin locks) and the processes
//! the bench runs them as.

use super::*;

/// One thing that runs a command under a lock.
#[derive(Clone)]
pub(crate) enum Tool<'a> {
    Flock(PathBuf),
    Dlock(&'a Backend),
    /// dlock with lock-kind options (`--slots 3`, `--fair`).
    Kind(&'a Backend, &'static [&'static str]),
    /// The `--baseline` binary, for a paired comparison of builds.
    Baseline(&'a Backend),
    Wrapper(&'a Backend),
}

impl Tool<'_> {
    pub(crate) fn label(&self) -> String {
        match self {
            Tool::Flock(_) => "flock".into(),
            Tool::Dlock(b) => format!("dlock · {}", b.label),
            Tool::Kind(b, args) => format!("dlock · {} {}", b.label, args.join(" ")),
            Tool::Baseline(b) => format!("baseline dlock · {}", b.label),
            Tool::Wrapper(b) => b.wrapper.as_ref().expect("has a wrapper").0.clone(),
        }
    }

    pub(crate) fn is_dlock(&self) -> bool {
        matches!(self, Tool::Dlock(_) | Tool::Kind(..))
    }

    pub(crate) fn backend(&self) -> Option<&Backend> {
        match self {
            Tool::Dlock(b) | Tool::Kind(b, _) | Tool::Baseline(b) | Tool::Wrapper(b) => Some(b),
            Tool::Flock(_) => None,
        }
    }

    /// The dlock binary of this tool with the bench's environment, before
    /// any subcommand (other subcommands than `exec` use it too).
    pub(crate) fn dlock(&self) -> Command {
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
    pub(crate) fn command(&self, name: &str, argv: &[&str]) -> Command {
        self.command_v(name, argv, false)
    }

    /// The same; `verbose` makes dlock report each step on stderr ("waiting").
    pub(crate) fn command_v(&self, name: &str, argv: &[&str], verbose: bool) -> Command {
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
pub(crate) static DLOCK_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The previous build that `--baseline PATH` compares with.
pub(crate) static BASELINE_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

pub(crate) fn mono_ns() -> u64 {
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
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    /// Stdout lines with CLOCK_MONOTONIC (ns) at the moment each arrived.
    pub(crate) out: Receiver<(u64, String)>,
    pub(crate) err: Receiver<(u64, String)>,
    pub(crate) err_seen: Vec<String>,
}

impl Proc {
    pub(crate) fn spawn(mut c: Command) -> Proc {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the next stdout line arrived.
    pub(crate) fn line(&mut self, what: &str) -> u64 {
        match self.out.recv_timeout(Duration::from_secs(30)) {
            Ok((t, _)) => t,
            Err(_) => {
                self.drain_err();
                panic!("{what}: no output within 30s; stderr: {:?}", self.err_seen)
            }
        }
    }

    pub(crate) fn drain_err(&mut self) {
        while let Ok((_, l)) = self.err.try_recv() {
            self.err_seen.push(l);
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub(crate) fn expect_err(&mut self, needle: &str) {
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
    pub(crate) fn release(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"go\n");
        }
    }

    pub(crate) fn finish(mut self, what: &str) {
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
pub(crate) fn settle(pid: u32) {
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

pub(crate) fn run_ok(mut c: Command, what: &str) {
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
