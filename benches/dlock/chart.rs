//! The chart: one SVG of horizontal bars, drawn here so the suite needs no
//! plotting package.

use super::*;

pub(crate) struct Bar {
    pub(crate) label: String,
    pub(crate) value: f64,
    /// A thin extension to a second value (p90, p99).
    pub(crate) whisker: Option<f64>,
    pub(crate) dlock: bool,
    /// The target for this bar, drawn as a red tick.
    pub(crate) target: Option<f64>,
    pub(crate) text: String,
    /// "target …: met" or "…: missed", for bars that have a target.
    pub(crate) verdict: Option<String>,
}

pub(crate) fn verdict(what: &str, met: bool) -> String {
    format!("{what}: {}", if met { "met" } else { "MISSED" })
}

pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) bars: Vec<Bar>,
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn panels(r: &Results) -> Vec<Panel> {
    let mut out = Vec::new();
    let flock_t = r
        .uncontended
        .iter()
        .find(|t| t.key.is_none())
        .map(|t| t.median);
    out.push(Panel {
        title: "1. Uncontended `TOOL NAME -- true`: median, whisker to p90 (ms)".into(),
        bars: r
            .uncontended
            .iter()
            .map(|t| Bar {
                label: t.label.clone(),
                value: t.median,
                whisker: Some(t.p90),
                dlock: t.dlock,
                target: (t.dlock && t.key == Some("redis"))
                    .then(|| flock_t.map(|f| 1.5 * f))
                    .flatten(),
                text: format!("{} / {}", ms(t.median), ms(t.p90)),
                verdict: (t.dlock && t.key == Some("redis"))
                    .then(|| flock_t.map(|f| verdict("target ≤ 1.5× flock", t.median <= 1.5 * f)))
                    .flatten(),
            })
            .collect(),
    });
    out.push(Panel {
        title: "2. Contended throughput (sections/s; more is better)".into(),
        bars: r
            .throughput
            .iter()
            .map(|t| {
                let f = r
                    .throughput
                    .iter()
                    .find(|x| x.key.is_none() && x.workers == t.workers)
                    .map(|x| x.rate);
                let k = match (t.dlock, t.key, t.workers) {
                    (true, Some("redis"), 4) => Some(0.7),
                    (true, Some("sqlite"), 4) => Some(0.8),
                    (true, Some("mysql"), 4) => Some(0.5),
                    _ => None,
                };
                Bar {
                    label: format!("{} · {} workers", t.label, t.workers),
                    value: t.rate,
                    whisker: None,
                    dlock: t.dlock,
                    target: k.zip(f).map(|(k, f)| k * f),
                    text: format!("{:.0}/s", t.rate),
                    verdict: k
                        .zip(f)
                        .map(|(k, f)| verdict(&format!("target ≥ {k}× flock"), t.rate >= k * f)),
                }
            })
            .collect(),
    });
    out.push(Panel {
        title: "3. Hand-off: p50, whisker to p99 (ms)".into(),
        bars: r
            .handoff
            .iter()
            .map(|h| Bar {
                label: h.label.clone(),
                value: h.p50,
                whisker: Some(h.p99),
                dlock: h.dlock,
                target: (h.dlock && h.key == Some("redis")).then_some(2.0),
                text: format!("{} / {}", ms(h.p50), ms(h.p99)),
                verdict: (h.dlock && h.key == Some("redis")).then(|| {
                    format!(
                        "{}, {}",
                        verdict("target p50 < 2 ms", h.p50 < 2.0),
                        verdict("p99 < 20 ms", h.p99 < 20.0)
                    )
                }),
            })
            .collect(),
    });
    out.push(Panel {
        title: "4. Server operations per acquisition, 8 waiters".into(),
        bars: r
            .ops
            .iter()
            .map(|o| {
                let per = o.ops as f64 / o.acquisitions as f64;
                Bar {
                    label: o.label.clone(),
                    value: per,
                    whisker: None,
                    dlock: o.dlock,
                    target: (o.dlock && o.key == "redis").then_some(10.0),
                    text: format!("{per:.1}"),
                    verdict: (o.dlock && o.key == "redis")
                        .then(|| verdict("target ≤ 10", per <= 10.0)),
                }
            })
            .collect(),
    });
    out.push(Panel {
        title: "5. Peak RSS of the holding process (MB)".into(),
        bars: r
            .rss
            .iter()
            .map(|x| {
                let mb = x.hwm_kb as f64 * 1024.0 / 1e6;
                Bar {
                    label: x.label.clone(),
                    value: mb,
                    whisker: None,
                    dlock: x.dlock,
                    target: (x.dlock && x.key == Some("redis")).then_some(8.0),
                    text: format!("{mb:.1}"),
                    verdict: (x.dlock && x.key == Some("redis"))
                        .then(|| verdict("target < 8 MB", mb < 8.0)),
                }
            })
            .collect(),
    });
    out
}

pub(crate) fn chart(r: &Results) -> String {
    const W: f64 = 1240.0;
    const LEFT: f64 = 330.0;
    const PLOT: f64 = 520.0;
    // The column of "target …: met / MISSED", right of the longest value label.
    const VERDICT: f64 = LEFT + PLOT + 120.0;
    const BAR: f64 = 18.0;
    const GAP: f64 = 6.0;
    let panels = panels(r);
    let mut body = String::new();
    let mut y = 58.0;
    for p in &panels {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.1}" class="title">{}</text>"#,
            y,
            esc(&p.title)
        );
        y += 10.0;
        let max = p
            .bars
            .iter()
            .flat_map(|b| [Some(b.value), b.whisker, b.target])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.05;
        let x = |v: f64| LEFT + (v / max) * PLOT;
        for b in &p.bars {
            let cls = if b.dlock { "dlock" } else { "base" };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" class="label">{}</text>"#,
                LEFT - 8.0,
                y + BAR * 0.72,
                esc(&b.label)
            );
            let wbar = (x(b.value) - LEFT).max(1.5);
            let _ = writeln!(
                body,
                r#"<rect x="{LEFT:.1}" y="{y:.1}" width="{wbar:.1}" height="{BAR:.1}" class="{cls}"/>"#
            );
            let mut end = LEFT + wbar;
            if let Some(wv) = b.whisker.filter(|wv| *wv > b.value) {
                let (x0, x1, my) = (LEFT + wbar, x(wv), y + BAR / 2.0);
                let _ = writeln!(
                    body,
                    r#"<path d="M{x0:.1} {my:.1}H{x1:.1}M{x1:.1} {:.1}V{:.1}" class="whisker"/>"#,
                    y + 3.0,
                    y + BAR - 3.0
                );
                end = end.max(x1);
            }
            if let Some(t) = b.target {
                let xt = x(t);
                let _ = writeln!(
                    body,
                    r#"<path d="M{xt:.1} {:.1}V{:.1}" class="target"/>"#,
                    y - 3.0,
                    y + BAR + 3.0
                );
                // Keep the label clear of a tick just past the bar.
                if xt > end && xt < end + 70.0 {
                    end = xt;
                }
            }
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" class="value">{}</text>"#,
                end + 6.0,
                y + BAR * 0.72,
                esc(&b.text)
            );
            if let Some(v) = &b.verdict {
                let cls = if v.contains("MISSED") {
                    "missed"
                } else {
                    "met"
                };
                let _ = writeln!(
                    body,
                    r#"<text x="{VERDICT:.1}" y="{:.1}" class="{cls}">{}</text>"#,
                    y + BAR * 0.72,
                    esc(v)
                );
            }
            y += BAR + GAP;
        }
        y += 26.0;
    }
    let h = y;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<style>
.title {{ font-size: 14px; font-weight: bold; fill: #222; }}
.label {{ text-anchor: end; fill: #333; }}
.value {{ fill: #333; }}
.dlock {{ fill: #3b6fb6; }}
.base {{ fill: #a8a8a8; }}
.whisker {{ stroke: #333; stroke-width: 1.2; fill: none; }}
.target {{ stroke: #d62728; stroke-width: 2; stroke-dasharray: 3 2; fill: none; }}
.missed {{ fill: #d62728; font-size: 11px; }}
.met {{ fill: #2a7d2a; font-size: 11px; }}
</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="22" font-size="16" font-weight="bold">dlock benchmarks (scripts/bench)</text>
<rect x="10" y="32" width="12" height="12" class="dlock"/><text x="27" y="42">dlock</text>
<rect x="80" y="32" width="12" height="12" class="base"/><text x="97" y="42">baseline (flock, hand-written spin lock)</text>
<path d="M360 32V45" class="target"/><text x="368" y="42">target</text>
<path d="M430 38H455M455 33V43" class="whisker"/><text x="462" y="42">p90 / p99</text>
{body}</svg>
"##
    )
}
