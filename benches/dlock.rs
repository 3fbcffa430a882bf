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

#[path = "dlock/chart.rs"]
mod chart;
#[path = "dlock/checks.rs"]
mod checks;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "dlock/kinds.rs"]
mod kinds;
#[path = "dlock/measure.rs"]
mod measure;
#[path = "dlock/report.rs"]
mod report;
#[path = "dlock/servers.rs"]
mod servers;
#[path = "dlock/tools.rs"]
mod tools;
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

use chart::*;
use checks::*;
use common::Server;
use measure::*;
use report::*;
use servers::*;
use tools::*;

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
