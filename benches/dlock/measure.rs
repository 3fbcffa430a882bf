//! The statistics and the measurements: uncontended start-up, throughput,
//! hand-off, server operations and memory.

use super::*;

/// Nearest-rank percentile of sorted samples.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

// ---------------------------------------------------------------------------
// The five benchmarks.

pub(crate) struct Timing {
    pub(crate) label: String,
    pub(crate) dlock: bool,
    pub(crate) key: Option<&'static str>,
    pub(crate) median: f64,
    pub(crate) p90: f64,
    pub(crate) runs: usize,
}

/// Benchmark 1: `TOOL NAME -- true`, the tools interleaved run by run so that drift in
/// the machine's state hits them all alike, in a new order each round so that
/// no tool always runs right after the same one (the spin lock's two
/// `redis-cli` processes, say).
pub(crate) fn uncontended(tools: &[Tool], s: &Sizes) -> Vec<Timing> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut order: Vec<usize> = (0..tools.len()).collect();
    let mut seed = mono_ns() | 1;
    for round in 0..s.warmup + s.runs {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let t = &tools[i];
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

/// Fisher-Yates with xorshift64: the order only has to vary, not be unpredictable.
fn shuffle(v: &mut [usize], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

pub(crate) struct Throughput {
    pub(crate) label: String,
    pub(crate) dlock: bool,
    pub(crate) key: Option<&'static str>,
    pub(crate) workers: usize,
    pub(crate) sections: usize,
    pub(crate) secs: f64,
    pub(crate) rate: f64,
    pub(crate) count: u64,
    /// CPU per section, ms: of the locking processes with their commands, and of the server.
    pub(crate) cpu_client: f64,
    pub(crate) cpu_server: Option<f64>,
}

/// Benchmark 2: WORKERS processes each run SECTIONS read-increment-write sections under
/// the lock; the final count must be exact.
pub(crate) fn throughput(tool: &Tool, dir: &Path, workers: usize, per_worker: usize) -> Throughput {
    throughput_logged(tool, dir, workers, per_worker, None)
}

/// [`throughput`], with each section's start and end logged to `log` when given.
pub(crate) fn throughput_logged(
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
pub(crate) fn run_loops(workers: usize, per_worker: usize, section: impl Fn() + Sync) -> f64 {
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

pub(crate) struct Handoff {
    pub(crate) label: String,
    pub(crate) dlock: bool,
    pub(crate) key: Option<&'static str>,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

/// Benchmark 3: A chain of holders: each waiter is started while the previous one holds,
/// and once it blocks, the holder's command is told to exit (t0, taken by the
/// bench just before it writes to the command's stdin); t1 is when the
/// waiter's command's first line reaches the bench. Hand-off = t1 - t0.
pub(crate) fn handoff(tool: &Tool, n: usize) -> Handoff {
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

pub(crate) struct OpsResult {
    pub(crate) label: String,
    pub(crate) dlock: bool,
    pub(crate) key: &'static str,
    pub(crate) waiters: usize,
    pub(crate) acquisitions: usize,
    pub(crate) ops: u64,
    pub(crate) rate: f64,
    /// Requests that clients sent, per acquisition: Redis counts the commands
    /// that Lua scripts call in `commandstats` too; MySQL's Questions leave
    /// out statement prepares.
    pub(crate) requests: f64,
    /// The largest contributors, "name per-acquisition".
    pub(crate) breakdown: String,
    /// MySQL: connections opened per acquisition.
    pub(crate) connections: Option<f64>,
    /// etcd: Raft proposals committed per acquisition.
    pub(crate) raft: Option<f64>,
    /// With a log of the sections: hand-off (p50, p99) in ms.
    pub(crate) handoff: Option<(f64, f64)>,
}

/// The commands dlock's Redis scripts call; `dlock exec` sends none of them
/// itself (it sends EVALSHA, EVAL and BZPOPMIN).
pub(crate) const REDIS_SCRIPT_CALLS: &[&str] = &[
    "hget", "hgetall", "hset", "time", "pexpire", "pttl", "get", "set", "del", "publish", "incr",
    "zadd",
];

/// Benchmark 4: Server operations per acquisition with WAITERS processes contending.
pub(crate) fn server_ops(tool: &Tool, dir: &Path, waiters: usize, per: usize) -> Option<OpsResult> {
    server_ops_logged(tool, dir, waiters, per, None)
}

/// The gaps between one section's end and the next one's start in a log of
/// [`TIMED_SECTION`]s: (p50, p99) in ms.
pub(crate) fn handoff_gaps(log: &Path) -> Option<(f64, f64)> {
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

pub(crate) fn server_ops_logged(
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

pub(crate) struct Rss {
    pub(crate) label: String,
    pub(crate) dlock: bool,
    pub(crate) key: Option<&'static str>,
    pub(crate) hwm_kb: u64,
    pub(crate) rss_kb: u64,
}

/// Benchmark 5: VmHWM of the locking process (dlock itself, not its command) while it holds.
pub(crate) fn rss(tool: &Tool) -> Rss {
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
