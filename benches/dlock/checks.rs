//! The targets each measurement is checked against.

use super::*;

pub(crate) struct Check {
    pub(crate) id: &'static str,
    pub(crate) what: String,
    pub(crate) backend: &'static str,
    pub(crate) measured: String,
    pub(crate) target: String,
    pub(crate) met: bool,
}

pub(crate) fn label_of(key: &str) -> &'static str {
    match key {
        "redis" => "Redis",
        "mysql" => "MySQL (MariaDB)",
        "postgres" => "PostgreSQL",
        "sqlite" => "SQLite (embedded)",
        "zookeeper" => "ZooKeeper (3 servers)",
        _ => "?",
    }
}

pub(crate) struct Results {
    pub(crate) uncontended: Vec<Timing>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) handoff: Vec<Handoff>,
    pub(crate) ops: Vec<OpsResult>,
    /// etcd at each queue depth: (dlock, etcdctl lock).
    pub(crate) depths: Vec<(OpsResult, OpsResult)>,
    pub(crate) rss: Vec<Rss>,
    pub(crate) kinds: Vec<kinds::KindsRow>,
    pub(crate) uniform: Vec<uniform::UniformRow>,
}

pub(crate) fn checks(r: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let flock_t = r.uncontended.iter().find(|t| t.key.is_none());
    if let (Some(f), Some(d)) = (
        flock_t,
        r.uncontended
            .iter()
            .find(|t| t.dlock && t.key == Some("redis")),
    ) {
        let ratio = d.median / f.median;
        out.push(Check {
            id: "1",
            what: "uncontended `exec -- true`, median".into(),
            backend: "Redis",
            measured: format!(
                "{:.2} ms = {ratio:.2}× flock ({:.2} ms)",
                d.median, f.median
            ),
            target: "≤ 1.5× flock".into(),
            met: ratio <= 1.5,
        });
    }
    let flock4 = r
        .throughput
        .iter()
        .find(|t| t.key.is_none() && t.workers == 4);
    for (key, min) in [("redis", 0.7), ("sqlite", 0.8), ("mysql", 0.5)] {
        if let (Some(f), Some(d)) = (
            flock4,
            r.throughput
                .iter()
                .find(|t| t.dlock && t.key == Some(key) && t.workers == 4),
        ) {
            let ratio = d.rate / f.rate;
            out.push(Check {
                id: "2",
                what: "throughput, 4 workers".into(),
                backend: label_of(key),
                measured: format!("{:.0}/s = {ratio:.2}× flock ({:.0}/s)", d.rate, f.rate),
                target: format!("≥ {min}× flock"),
                met: ratio >= min,
            });
        }
    }
    if let Some(h) = r.handoff.iter().find(|h| h.dlock && h.key == Some("redis")) {
        out.push(Check {
            id: "3",
            what: "hand-off p50".into(),
            backend: "Redis",
            measured: format!("{:.2} ms", h.p50),
            target: "< 2 ms".into(),
            met: h.p50 < 2.0,
        });
        out.push(Check {
            id: "3",
            what: "hand-off p99".into(),
            backend: "Redis",
            measured: format!("{:.2} ms", h.p99),
            target: "< 20 ms".into(),
            met: h.p99 < 20.0,
        });
    }
    if let Some(o) = r.ops.iter().find(|o| o.dlock && o.key == "redis") {
        let per = o.ops as f64 / o.acquisitions as f64;
        out.push(Check {
            id: "4",
            what: format!("server ops per acquisition, {} waiters", o.waiters),
            backend: "Redis",
            measured: format!("{per:.1}"),
            target: "≤ 10".into(),
            met: per <= 10.0,
        });
    }
    if let Some(m) = r.rss.iter().find(|m| m.dlock && m.key == Some("redis")) {
        let mb = m.hwm_kb as f64 * 1024.0 / 1e6;
        out.push(Check {
            id: "5",
            what: "peak RSS (VmHWM) of a holding `dlock exec`".into(),
            backend: "Redis",
            measured: format!("{mb:.1} MB"),
            target: "< 8 MB".into(),
            met: mb < 8.0,
        });
    }
    uniform::checks(&r.uniform, &mut out);
    out
}
