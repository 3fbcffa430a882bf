//! Benchmark 6: the lock kinds, per backend. A 3-slot semaphore under 8
//! workers whose sections take 20 ms, so that the parallelism shows (one
//! holder at a time could finish at most 50 sections a second, three at most
//! 150), and the hand-off between `--fair` waiters, which hold a place in the
//! lock's queue while they wait.

use std::fmt::Write as _;
use std::path::Path;

use super::{handoff, ms, run_loops, run_ok, Backend, Handoff, Sizes, Tool};

/// Checks the slot number and that no two holders share a slot (so no more
/// than three hold at once), then works for 20 ms.
const SECTION: &str = r#"case "$DLOCK_SLOT" in 0|1|2) ;; *) echo "bad DLOCK_SLOT '$DLOCK_SLOT'" >&2; exit 9;; esac
d="$BENCH_DIR/slot$DLOCK_SLOT"
mkdir "$d" || { echo "SLOT $DLOCK_SLOT HELD TWICE" >&2; exit 9; }
sleep 0.02
rmdir "$d""#;

const SLOTS: usize = 3;
const WORKERS: usize = 8;
const WORK_SECS: f64 = 0.02;

pub struct KindsRow {
    label: String,
    sections: usize,
    secs: f64,
    rate: f64,
    fair: Handoff,
}

pub fn measure(b: &Backend, dir: &Path, s: &Sizes) -> KindsRow {
    let per = if s.runs < 100 { 3 } else { 25 };
    let sem = Tool::Kind(b, &["--slots", "3"]);
    eprintln!("bench:     {} × {WORKERS}", sem.label());
    let (sections, secs) = semaphore(&sem, dir, per);
    let fair = Tool::Kind(b, &["--fair"]);
    eprintln!("bench:     {} hand-off", fair.label());
    KindsRow {
        label: format!("dlock · {}", b.label),
        sections,
        secs,
        rate: sections as f64 / secs,
        fair: handoff(&fair, s.handoffs.min(50)),
    }
}

/// WORKERS processes each run `per` sections under the semaphore; returns
/// the sections run and the seconds they took.
fn semaphore(tool: &Tool, dir: &Path, per: usize) -> (usize, f64) {
    let slots = tempfile::tempdir_in(dir).unwrap();
    let secs = run_loops(WORKERS, per, || {
        let mut c = tool.command("sem", &["sh", "-c", SECTION]);
        c.env("BENCH_DIR", slots.path());
        run_ok(c, &tool.label());
    });
    (WORKERS * per, secs)
}

pub fn markdown(w: &mut String, rows: &[KindsRow]) {
    let ideal = SLOTS as f64 / WORK_SECS;
    let _ = writeln!(
        w,
        "\n### 6. Lock kinds\n\n{WORKERS} workers loop `dlock exec --slots {SLOTS} sem -- sh -c 'check the slot; sleep 0.02'` \
         (at most {ideal:.0} sections/s with {SLOTS} holders at once, {:.0} with one); \
         hand-off as in 3, between `dlock exec --fair` waiters.\n\n\
         | backend | semaphore sections | seconds | sections/s | of the {ideal:.0}/s ceiling | `--fair` hand-off p50 ms | p99 ms | hand-offs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        1.0 / WORK_SECS
    );
    for r in rows {
        let _ = writeln!(
            w,
            "| **{}** | {} | {:.2} | {:.0} | {:.0} % | {} | {} | {} |",
            r.label,
            r.sections,
            r.secs,
            r.rate,
            100.0 * r.rate / ideal,
            ms(r.fair.p50),
            ms(r.fair.p99),
            r.fair.n
        );
    }
}
