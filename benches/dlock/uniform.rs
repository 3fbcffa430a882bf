//! Benchmark 7: the behaviour every backend shares (docs/backends.md, "The
//! same behaviour on every backend"), measured per backend: how soon
//! `release --force` stops a live `exec` holder, and whether `--fair`
//! hand-offs stall or cost throughput.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{ms, pct, run_loops, run_ok, sorted, verdict, Backend, Check, Proc, Sizes, Tool};

/// A break must stop the holder's command this soon after the force exits.
const REACH_MS: f64 = 250.0;
/// A hand-off slower than this is a stall.
const STALL_MS: f64 = 250.0;
/// `--fair` throughput, against plain, at least.
const FAIR_RATIO: f64 = 0.8;
const WORKERS: usize = 4;

/// Marks its start and end with the wall clock; no work between, so that
/// the lock's hand-off is what the rate measures.
const SECTION: &str =
    r#"echo "s $(date +%s%N)" >> "$BENCH_LOG"; echo "e $(date +%s%N)" >> "$BENCH_LOG""#;

pub struct UniformRow {
    label: &'static str,
    /// Force's exit → holder's exit, ms, sorted.
    reach: Vec<f64>,
    /// Plain and `--fair` runs, for backends with lock kinds.
    fair: Option<(Sections, Sections)>,
}

#[derive(Default)]
struct Sections {
    n: usize,
    secs: f64,
    /// Longest time from one section's end to the next one's start, ms.
    longest: f64,
    stalls: usize,
}

impl Sections {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }

    fn add(&mut self, o: Sections) {
        self.n += o.n;
        self.secs += o.secs;
        self.longest = self.longest.max(o.longest);
        self.stalls += o.stalls;
    }
}

pub fn measure(b: &Backend, dir: &Path, s: &Sizes, kinds: bool) -> UniformRow {
    let quick = s.runs < 100;
    let trials = if quick { 3 } else { 10 };
    eprintln!("bench:     dlock · {} release --force × {trials}", b.label);
    let reach = sorted((0..trials).map(|i| force_reach(b, i)).collect());
    let fair = kinds.then(|| {
        let per = if quick { 10 } else { 50 };
        let tools = [Tool::Dlock(b), Tool::Kind(b, &["--fair"])];
        eprintln!(
            "bench:     dlock · {} plain and --fair, {WORKERS} × {per}",
            b.label
        );
        // In halves, plain, fair, fair, plain, so that a drift in the
        // machine's load hits both alike.
        let mut both = [Sections::default(), Sections::default()];
        for (i, half) in [
            (0, per / 2),
            (1, per / 2),
            (1, per - per / 2),
            (0, per - per / 2),
        ] {
            both[i].add(sections(&tools[i], ["plain", "fair"][i], dir, half));
        }
        let [plain, fair] = both;
        (plain, fair)
    });
    UniformRow {
        label: b.label,
        reach,
        fair,
    }
}

/// One `exec --lease 10s` holder broken with `release --force`: ms from the
/// force's exit to the holder's. The renewal is seconds away, so only a
/// pushed notice stops the holder this soon.
fn force_reach(b: &Backend, trial: usize) -> f64 {
    let name = format!("force{trial}");
    let holder = Tool::Kind(b, &["--lease", "10s"]);
    let mut p =
        Proc::spawn(holder.command_v(&name, &["sh", "-c", "echo running; exec sleep 60"], true));
    p.line("the holder to be broken");
    let up = Instant::now();
    // Listeners start 100 ms after the command (src/backend/notice.rs) and
    // say so under -v; a build without them (--dlock OLD) has its renewals.
    let by = up + Duration::from_secs(2);
    while let Ok((_, l)) = p
        .err
        .recv_timeout(by.saturating_duration_since(Instant::now()))
    {
        let heard = l.contains("listening for breaks");
        p.err_seen.push(l);
        if heard {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(150).saturating_sub(up.elapsed()));
    let mut force = holder.dlock();
    force.args(["release", "--force", &name]);
    run_ok(force, &format!("{} release --force", b.label));
    let done = Instant::now();
    let deadline = done + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not stopped in 30 s",
            b.label
        );
        // Polled every half millisecond: the figure is the latency, not the poll.
        std::thread::sleep(Duration::from_micros(500));
    };
    let took = done.elapsed().as_secs_f64() * 1e3;
    p.expect_err("broken with --force");
    assert_eq!(
        st.code(),
        Some(79),
        "{}: a broken holder must exit 79 (lease lost); stderr: {:?}",
        b.label,
        p.err_seen
    );
    took
}

/// WORKERS × `per` sections under `tool`; the sections' marks must not
/// overlap (mutual exclusion), and give the gaps between them.
fn sections(tool: &Tool, name: &str, dir: &Path, per: usize) -> Sections {
    let log = dir.join(format!("sections-{}", super::mono_ns()));
    let secs = run_loops(WORKERS, per, || {
        let mut c = tool.command(name, &["sh", "-c", SECTION]);
        c.env("BENCH_LOG", &log);
        run_ok(c, &tool.label());
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let mut marks: Vec<(u64, bool)> = text
        .lines()
        .filter_map(|l| {
            let (what, t) = l.split_once(' ')?;
            Some((t.parse().ok()?, what == "s"))
        })
        .collect();
    marks.sort();
    assert_eq!(
        marks.len(),
        2 * WORKERS * per,
        "{}: section marks missing or garbled",
        tool.label()
    );
    let mut gaps = Vec::new();
    for pair in marks.windows(2) {
        let ((t0, start0), (t1, start1)) = (pair[0], pair[1]);
        assert!(
            start0 != start1,
            "MUTUAL EXCLUSION FAILED: {}: sections overlap",
            tool.label()
        );
        if !start0 {
            gaps.push((t1 - t0) as f64 / 1e6);
        }
    }
    Sections {
        n: WORKERS * per,
        secs,
        longest: gaps.iter().copied().fold(0.0, f64::max),
        stalls: gaps.iter().filter(|g| **g >= STALL_MS).count(),
    }
}

/// The rows' verdicts, for the Targets table.
pub fn checks(rows: &[UniformRow], out: &mut Vec<Check>) {
    for r in rows {
        let (p50, max) = (pct(&r.reach, 50.0), pct(&r.reach, 100.0));
        out.push(Check {
            id: "7",
            what: "`release --force` → `exec` holder stopped, max".into(),
            backend: r.label,
            measured: format!("{} ms (median {})", ms(max), ms(p50)),
            target: format!("≤ {REACH_MS:.0} ms"),
            met: max <= REACH_MS,
        });
        if let Some((plain, fair)) = &r.fair {
            let k = fair.rate() / plain.rate();
            out.push(Check {
                id: "7",
                what: format!("`--fair` hand-off, {WORKERS} workers"),
                backend: r.label,
                measured: format!("{k:.2}× plain, {} gaps ≥ {STALL_MS:.0} ms", fair.stalls),
                target: format!("≥ {FAIR_RATIO}× plain, 0 gaps"),
                met: k >= FAIR_RATIO && fair.stalls == 0,
            });
        }
    }
}

pub fn markdown(w: &mut String, rows: &[UniformRow], s: &Sizes) {
    let per = if s.runs < 100 { 10 } else { 50 };
    let _ = writeln!(
        w,
        "\n### 7. The same behaviour on every backend\n\n\
         Force: an `exec --lease 10s NAME -- sleep 60` holder that listens for breaks, then \
         `dlock release --force NAME`; ms from the force's exit to the holder's exit (with 79, lease lost; \
         0 if the holder stopped first). Hand-off: {WORKERS} workers × {per} sections \
         `sh -c 'date >> LOG; date >> LOG'` each plain and `--fair`, in halves (plain, fair, fair, plain); \
         a gap is one section's end to the next one's start.\n\n\
         | backend | force → stopped, median ms | max ms | trials | plain sections/s | `--fair` sections/s | `--fair` ÷ plain | longest gap ms, plain / `--fair` | gaps ≥ {STALL_MS:.0} ms, plain / `--fair` | targets |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in rows {
        let max = pct(&r.reach, 100.0);
        let mut targets = verdict(&format!("≤ {REACH_MS:.0} ms"), max <= REACH_MS);
        let fair = match &r.fair {
            Some((p, f)) => {
                let k = f.rate() / p.rate();
                let _ = write!(
                    targets,
                    ", {}, {}",
                    verdict(&format!("≥ {FAIR_RATIO}×"), k >= FAIR_RATIO),
                    verdict("no stall", f.stalls == 0)
                );
                format!(
                    "{:.0} | {:.0} | {k:.2} | {} / {} | {} / {}",
                    p.rate(),
                    f.rate(),
                    ms(p.longest),
                    ms(f.longest),
                    p.stalls,
                    f.stalls
                )
            }
            None => "no kinds | | | | ".into(),
        };
        let _ = writeln!(
            w,
            "| **dlock · {}** | {} | {} | {} | {fair} | {targets} |",
            r.label,
            ms(pct(&r.reach, 50.0)),
            ms(max),
            r.reach.len()
        );
    }
}
