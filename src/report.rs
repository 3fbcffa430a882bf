//! What commands print on stdout: the `status` table and JSON, and the
//! `acquire --json` object.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::{Location, LockInfo};
use crate::duration::format_left;
use crate::watch::{Change, What};

/// RFC 3339 UTC with milliseconds, from µs since the epoch.
pub fn format_time_us(us: i64) -> String {
    if us <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_micros(us as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One status entry: a held lock, or a named lock that is free.
pub enum Row<'a> {
    Held(&'a LockInfo),
    Free(&'a str),
}

pub fn status_table(loc: &Location, prefix: &str, rows: &[Row]) -> String {
    let header = [
        "NAME", "KIND", "HOLDER", "USER", "TOKEN", "FENCE", "ACQUIRED", "LEFT", "COMMAND",
    ];
    let mut table: Vec<[String; 9]> = vec![header.map(String::from)];
    for row in rows {
        table.push(match row {
            Row::Held(l) => {
                let [host, user, token, fence] = holder_cells(l);
                [
                    l.name.clone(),
                    kind_cell(l, rows),
                    host,
                    user,
                    token,
                    fence,
                    format_time_us(l.acquired_at_us),
                    format_left(l.ttl),
                    l.holder.command.clone(),
                ]
            }
            Row::Free(name) => [
                name.to_string(),
                "-".into(),
                "(free)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    let mut widths = [0usize; 9];
    for r in &table {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "# {} backend at {} (prefix '{}')\n",
        loc.backend, loc.location, prefix
    );
    if rows.is_empty() {
        out.push_str("no locks held\n");
        return out;
    }
    for r in &table {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The HOLDER, USER, TOKEN and FENCE cells of a holder's row.
fn holder_cells(l: &LockInfo) -> [String; 4] {
    [
        format!("{}:{}", l.holder.host, l.holder.pid),
        l.holder.user.clone(),
        l.token_id.clone(),
        l.fence.to_string(),
    ]
}

/// A `dlock watch` event as a line: the time it was seen and the event,
/// then the cells of a `status` row (NAME, KIND, HOLDER, USER, TOKEN, FENCE,
/// COMMAND; "-" where the event has none), then who broke it or how many
/// wait. Fields are separated by two spaces, as the table's columns.
pub fn watch_line(c: &Change, seen_us: i64) -> String {
    let mut cells = vec![
        format_time_us(seen_us),
        c.what.word().into(),
        c.name.clone(),
    ];
    match &c.info {
        Some(l) => {
            let kind = match l.slot {
                Some(k) => format!("slot {k} of {}", l.slots),
                None => l.kind().to_string(),
            };
            cells.push(kind);
            cells.extend(holder_cells(l));
            let command = &l.holder.command;
            cells.push(if command.is_empty() {
                "-".into()
            } else {
                format!("'{command}'")
            });
        }
        None => cells.extend(["-"; 6].map(String::from)),
    }
    if let Some(by) = &c.by {
        cells.push(format!("by {by}"));
    }
    if matches!(c.what, What::Queued | What::LeftQueue) {
        cells.push(format!("{} queued", c.queued));
    }
    format!("{}\n", cells.join("  "))
}

/// A `dlock watch` event as one JSON line, keys in the order README.md
/// documents them; a holder's fields are those of `status --json`.
pub fn watch_json(c: &Change, seen_us: i64) -> String {
    #[derive(Serialize)]
    struct Event<'a> {
        event: &'static str,
        name: &'a str,
        time: String,
        holder: Option<&'a crate::holder::Holder>,
        token_id: Option<&'a str>,
        fence: Option<u64>,
        kind: Option<&'static str>,
        slot: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        queued: Option<u32>,
    }
    let l = c.info.as_ref();
    let queue = matches!(c.what, What::Queued | What::LeftQueue);
    let e = Event {
        event: c.what.word(),
        name: &c.name,
        time: format_time_us(seen_us),
        holder: l.map(|l| &l.holder),
        token_id: l.map(|l| l.token_id.as_str()),
        fence: l.map(|l| l.fence),
        kind: l.map(LockInfo::kind),
        slot: l.and_then(|l| l.slot),
        by: c.by.as_deref(),
        queued: queue.then_some(c.queued),
    };
    format!(
        "{}\n",
        serde_json::to_string(&e).expect("plain data serializes")
    )
}

/// "exclusive", "shared", or "slot 1 of 3 (2/3 taken)"; with waiters
/// queued, "… +2 queued".
fn kind_cell(l: &LockInfo, rows: &[Row]) -> String {
    let kind = match l.slot {
        Some(k) => {
            let taken = rows
                .iter()
                .filter(|r| matches!(r, Row::Held(o) if o.name == l.name))
                .count();
            format!("slot {k} of {n} ({taken}/{n} taken)", n = l.slots)
        }
        None => l.kind().to_string(),
    };
    match l.queued {
        0 => kind,
        n => format!("{kind} +{n} queued"),
    }
}

/// `acquire --json`: one line, keys in the order README.md documents them.
pub fn acquired_json(token: &str, parts: &[crate::lease::Part]) -> String {
    #[derive(Serialize)]
    struct Acquired<'a> {
        name: &'a str,
        token: &'a str,
        #[serde(flatten)]
        first: Lease,
        /// Every name's lease, in the order given (one with no --also).
        parts: Vec<Named<'a>>,
    }
    #[derive(Serialize)]
    struct Named<'a> {
        name: &'a str,
        #[serde(flatten)]
        lease: Lease,
    }
    #[derive(Serialize)]
    struct Lease {
        fence: u64,
        slot: Option<u32>,
        lease_ms: u64,
        expires_at: String,
        extended: bool,
    }
    let lease = |g: &crate::backend::Grant| Lease {
        fence: g.fence,
        slot: g.slot,
        lease_ms: g.lease.as_millis() as u64,
        expires_at: format_time_us(g.server_now_us + g.lease.as_micros() as i64),
        extended: g.extended,
    };
    serde_json::to_string(&Acquired {
        name: &parts[0].name,
        token,
        first: lease(&parts[0].grant),
        parts: parts
            .iter()
            .map(|p| Named {
                name: &p.name,
                lease: lease(&p.grant),
            })
            .collect(),
    })
    .expect("plain data serializes")
}

/// The version of the `status --json` layout; README.md documents each.
/// 2 added `schema`, `kind`, `slots`, `holders` and `queued`.
pub const STATUS_SCHEMA: u32 = 2;

/// `status --json`: one line, keys in the order README.md documents them
/// (structs, since serde_json's own maps sort their keys). `rows` holds one
/// entry per holder, those of one lock next to each other.
pub fn status_json(loc: &Location, prefix: &str, rows: &[Row]) -> String {
    #[derive(Serialize)]
    struct Status<'a> {
        schema: u32,
        backend: &'a str,
        location: &'a str,
        prefix: &'a str,
        locks: Vec<Entry<'a>>,
    }
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        held: bool,
        kind: Option<&'static str>,
        slots: Option<u32>,
        holders: Vec<HolderEntry<'a>>,
        queued: u32,
        // Schema 1's fields: the first holder's.
        holder: Option<&'a crate::holder::Holder>,
        token_id: Option<&'a str>,
        fence: Option<u64>,
        acquired_at: Option<String>,
        ttl_ms: Option<u64>,
    }
    #[derive(Serialize)]
    struct HolderEntry<'a> {
        holder: &'a crate::holder::Holder,
        token_id: &'a str,
        fence: u64,
        acquired_at: String,
        ttl_ms: u64,
        mode: crate::backend::Mode,
        slot: Option<u32>,
    }
    let mut locks: Vec<Entry> = Vec::new();
    for row in rows {
        let l = match row {
            Row::Free(name) => {
                locks.push(Entry {
                    name,
                    held: false,
                    kind: None,
                    slots: None,
                    holders: Vec::new(),
                    queued: 0,
                    holder: None,
                    token_id: None,
                    fence: None,
                    acquired_at: None,
                    ttl_ms: None,
                });
                continue;
            }
            Row::Held(l) => l,
        };
        let one = HolderEntry {
            holder: &l.holder,
            token_id: &l.token_id,
            fence: l.fence,
            acquired_at: format_time_us(l.acquired_at_us),
            ttl_ms: l.ttl.as_millis() as u64,
            mode: l.mode,
            slot: l.slot,
        };
        match locks.last_mut() {
            Some(e) if e.held && e.name == l.name => e.holders.push(one),
            _ => locks.push(Entry {
                name: &l.name,
                held: true,
                kind: Some(l.kind()),
                slots: Some(l.slots),
                queued: l.queued,
                holder: Some(&l.holder),
                token_id: Some(&l.token_id),
                fence: Some(l.fence),
                acquired_at: Some(one.acquired_at.clone()),
                ttl_ms: Some(one.ttl_ms),
                holders: vec![one],
            }),
        }
    }
    let status = Status {
        schema: STATUS_SCHEMA,
        backend: loc.backend,
        location: &loc.location,
        prefix,
        locks,
    };
    serde_json::to_string(&status).expect("plain data serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holder::Holder;
    use serde_json::Value;

    #[test]
    fn table_is_aligned() {
        let l = LockInfo {
            name: "deploy job".into(),
            holder: Holder {
                host: "h".into(),
                pid: 42,
                user: "ops".into(),
                command: "make".into(),
            },
            token_id: "abcd1234".into(),
            fence: 7,
            acquired_at_us: 1_700_000_000_000_000,
            ttl: Duration::from_secs(3),
            mode: crate::backend::Mode::Exclusive,
            slots: 1,
            slot: None,
            queued: 0,
        };
        let loc = Location {
            backend: "redis",
            location: "redis://x".into(),
        };
        let t = status_table(&loc, "dlock", &[Row::Held(&l), Row::Free("x")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let col = |s: &str| {
            s.find("USER")
                .or_else(|| s.find("ops"))
                .or_else(|| s.find(" -"))
        };
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(t.contains("2023-11-14T22:13:20.000Z"), "{t}");
        let j: Value = serde_json::from_str(&status_json(
            &loc,
            "dlock",
            &[Row::Held(&l), Row::Free("x")],
        ))
        .unwrap();
        assert_eq!(j["locks"][0]["holder"]["pid"], 42);
        assert_eq!(j["locks"][1]["held"], false);
    }
}
