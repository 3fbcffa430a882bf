//! The Redis keys of one name as the engine's store (`backend::engine`):
//! one READ of the name's keys with the server's clock, the plan in Rust by
//! `backend::kinds` (the rules every backend shares), then one WRITE that
//! applies it only if lease, state and fence counter still read as they did,
//! with its effects in the same script (the baton for a waiter, the break
//! record and notices of a `release --force`). Plain mutexes take the
//! one-script fast paths of `redis.rs` first and come here only when those
//! find a state key.
//!
//! Storage (see `scripts.rs`): `kinds::split` keeps a lone exclusive holder
//! of a 1-slot lock in the lease string, where the fast scripts and older
//! dlock versions look; the rest of the state is JSON in the state key.

use std::time::Duration;

use anyhow::Result;
use redis::Value;

use super::link::Route;
use super::scripts::{READ_LUA, WRITE_LUA};
use super::{int, text, By, RedisBackend, BATON_TTL_MS};
use crate::backend::engine::{self, Snapshot, Write};
use crate::backend::kinds::{self as rules, Held, Mode, State};
use crate::backend::{Acquire, Check, LockInfo, Request};
use crate::error::{fail, INTERNAL};
use crate::holder::Holder;
use crate::names::token_id;
/// How long (ms) the state key outlives its last lease or ticket, so that
/// rounding to milliseconds never drops a holder early.
const STATE_MARGIN_MS: i64 = 2000;
/// How long (ms) a break record outlives the broken lease, as FORCE keeps it.
const RECORD_MARGIN_MS: i64 = 60_000;

/// A lease value's fields (the format is in `scripts.rs`).
pub struct LeaseValue {
    pub token: String,
    pub fence: i64,
    pub acquired_us: i64,
    pub holder: Holder,
    /// The name as stored; empty in values that predate it.
    pub name: String,
}

pub fn parse_lease(value: &str) -> LeaseValue {
    let mut f = value.splitn(8, '\n');
    let mut next = || f.next().unwrap_or_default().to_string();
    let (token, fence, acquired, host, pid, user, name, command) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    LeaseValue {
        token,
        fence: fence.parse().unwrap_or(0),
        acquired_us: acquired.parse().unwrap_or(0),
        holder: Holder {
            host,
            pid: pid.parse().unwrap_or(0),
            user,
            command,
        },
        name,
    }
}

/// The lease value of a lone exclusive holder.
fn lease_value(h: &Held, name: &str) -> String {
    let o = &h.holder;
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{name}\n{}",
        h.token, h.fence, h.acquired_us, o.host, o.pid, o.user, o.command
    )
}

/// Milliseconds from `now` until `at` (both µs), rounded up, at least 1.
fn ms_until(at: i64, now: i64) -> i64 {
    (at.saturating_sub(now).saturating_add(999) / 1000).max(1)
}

/// One name's keys as READ found them ('' = absent).
pub struct Seen {
    /// The server's clock, µs since the epoch.
    pub now: i64,
    lease: String,
    pttl: i64,
    state: String,
    fence: String,
    /// The break record, "token\nby".
    broken: String,
}

impl Seen {
    fn from_reply(items: &[Value]) -> Option<Seen> {
        let s = |i: usize| items.get(i).map(text).unwrap_or_default();
        Some(Seen {
            now: int(items.first())?,
            lease: s(1),
            pttl: int(items.get(2))?,
            state: s(3),
            fence: s(4),
            broken: s(5),
        })
    }

    /// The holder in the lease string, with its expiry by the server's clock.
    fn legacy(&self) -> Option<Held> {
        if self.lease.is_empty() {
            return None;
        }
        let v = parse_lease(&self.lease);
        // -1: a lease without expiry, which only a hand-made key has.
        let left_us = if self.pttl < 0 {
            i64::MAX / 4
        } else {
            self.pttl * 1000
        };
        Some(Held {
            token: v.token,
            mode: Mode::Exclusive,
            slot: 0,
            fence: v.fence,
            holder: v.holder,
            acquired_us: v.acquired_us,
            expires_us: self.now.saturating_add(left_us),
        })
    }

    fn counter(&self) -> i64 {
        self.fence.parse().unwrap_or(0)
    }

    /// The name's whole state: both places joined, and the fence at least
    /// the counter's, so that new fences pass every earlier grant's.
    fn joined(&self, name: &str) -> Result<State> {
        let mut rest: State = if self.state.is_empty() {
            State::default()
        } else {
            serde_json::from_str(&self.state).map_err(|e| {
                fail(
                    INTERNAL,
                    format!(
                        "lock '{name}' has a state key this dlock cannot read ({e}); \
                         was it written by another dlock version?"
                    ),
                )
            })?
        };
        rest.fence = rest.fence.max(self.counter());
        Ok(rules::join(self.legacy(), rest))
    }
}

/// What a write adds besides the state: a break record ("token\nby" and
/// its PX) and notices for listening holders.
#[derive(Default)]
struct Notes {
    record: Option<(String, i64)>,
    publish: Vec<String>,
}

impl Notes {
    /// The notes of breaking `broken`: a notice to each broken holder, and
    /// the record names the lease-string holder's breaker (else the first).
    fn of(seen: &Seen, broken: &[(String, i64)], by: &str) -> Notes {
        let legacy = seen.legacy().map(|h| h.token);
        let first = broken
            .iter()
            .find(|(t, _)| Some(t) == legacy.as_ref())
            .or(broken.first());
        Notes {
            record: first.map(|(t, exp)| {
                let ms = ms_until(*exp, seen.now) + RECORD_MARGIN_MS;
                (format!("{t}\n{by}"), ms)
            }),
            publish: broken
                .iter()
                .map(|(t, _)| format!("{}\n{by}", token_id(t)))
                .collect(),
        }
    }
}

/// One name's keys, over the backend's link, as the engine's store.
pub(super) struct Keys<'a> {
    pub b: &'a RedisBackend,
    /// How the scripts go (renewals send bodies: one round trip always).
    pub by: By,
    /// Ask for the eviction policy with the next request (see `acquire`).
    pub ask: bool,
    /// The request holds a ticket, which only the loop can refresh.
    pub queued: bool,
}

impl engine::Store for Keys<'_> {
    type Version = Seen;
    const RECORDS_BREAKS: bool = true;

    fn read(&mut self, name: &str) -> Result<Snapshot<Seen>> {
        let seen = self.b.read(name, self.by, std::mem::take(&mut self.ask))?;
        Ok(Snapshot {
            now: seen.now,
            state: seen.joined(name)?,
            version: seen,
        })
    }

    fn write(&mut self, name: &str, seen: &Snapshot<Seen>, new: &State, w: &Write) -> Result<bool> {
        let notes = Notes::of(&seen.version, w.broken, w.by);
        self.b
            .write(name, &seen.version, new.clone(), w.wake, &notes, self.by)
    }

    /// The baton, left by a WRITE that changes nothing else.
    fn wake(&mut self, name: &str, seen: &Snapshot<Seen>) -> Result<bool> {
        let notes = Notes::default();
        self.b.write(
            name,
            &seen.version,
            seen.state.clone(),
            true,
            &notes,
            self.by,
        )
    }

    fn broken_by(&self, seen: &Snapshot<Seen>, token: &str) -> Option<String> {
        let rest = seen
            .version
            .broken
            .strip_prefix(token)?
            .strip_prefix('\n')?;
        Some(rest.to_string())
    }

    fn fast_acquire(&mut self, req: &Request) -> Result<Option<Acquire>> {
        if req.kind != crate::backend::Kind::MUTEX || self.queued {
            return Ok(None);
        }
        self.b.acquire_mutex(req, std::mem::take(&mut self.ask))
    }

    fn fast_renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Option<Check>> {
        self.b.renew_mutex(name, token, lease)
    }

    fn fast_release(&mut self, name: &str, token: &str) -> Result<Option<Check>> {
        self.b.release_mutex(name, token)
    }

    fn fast_force(
        &mut self,
        name: &str,
        only: Option<&str>,
        by: &str,
    ) -> Result<Option<Vec<LockInfo>>> {
        self.b.force_mutex(name, only, by)
    }
}

impl RedisBackend {
    /// READs `name`'s keys; with `ask`, also the eviction policy (see `acquire`).
    fn read(&self, name: &str, by: By, ask: bool) -> Result<Seen> {
        let keys = [
            self.key(name, "lease"),
            self.key(name, "state"),
            self.key(name, "fence"),
            self.key(name, "broken"),
        ];
        let (items, asked) = self.run_with_info(&READ_LUA, by, &keys, &[], ask)?;
        self.heed(&asked)?;
        Seen::from_reply(&items).ok_or_else(|| {
            fail(
                INTERNAL,
                format!("unexpected read reply from {}", self.link.shown),
            )
        })
    }

    /// Writes `st` (planned from `seen`) back, if nobody changed the keys
    /// since; false if somebody did.
    fn write(
        &self,
        name: &str,
        seen: &Seen,
        st: State,
        wake: bool,
        notes: &Notes,
        by: By,
    ) -> Result<bool> {
        let (now, keep) = (seen.now, String::new);
        let before = seen.legacy();
        let (legacy, rest) = rules::split(st);
        let (lease, lease_ms) = match (&before, &legacy) {
            (None, None) => (keep(), 0),
            (Some(_), None) => ("-".to_string(), 0),
            (Some(a), Some(b)) if a == b => (keep(), 0),
            (_, Some(b)) => (lease_value(b, name), ms_until(b.expires_us, now)),
        };
        let (state, state_ms) = if rest.is_idle() {
            let gone = if seen.state.is_empty() {
                keep()
            } else {
                "-".into()
            };
            (gone, 0)
        } else {
            let json = serde_json::to_string(&rest)?;
            let ms = ms_until(rest.last_expiry(), now) + STATE_MARGIN_MS;
            (if json == seen.state { keep() } else { json }, ms)
        };
        let fence = if rest.fence > seen.counter() {
            rest.fence.to_string()
        } else {
            keep()
        };
        let (record, record_ms) = notes.record.clone().unwrap_or_default();
        let (lease_ms, state_ms, record_ms) = (
            lease_ms.to_string(),
            state_ms.to_string(),
            record_ms.to_string(),
        );
        let mut args: Vec<&str> = vec![
            &seen.lease,
            &seen.state,
            &seen.fence,
            &lease,
            &lease_ms,
            &state,
            &state_ms,
            &fence,
            if wake { "1" } else { "" },
            BATON_TTL_MS,
            &record,
            &record_ms,
        ];
        args.extend(notes.publish.iter().map(String::as_str));
        let keys = [
            self.key(name, "lease"),
            self.key(name, "state"),
            self.key(name, "fence"),
            self.key(name, "wake"),
            self.key(name, "broken"),
        ];
        let items = self.run(&WRITE_LUA, by, &keys, &args)?;
        Ok(int(items.first()) == Some(1))
    }

    /// The holders of `names`, one entry each, read in one round trip (one
    /// per name in a cluster, where names live on different nodes).
    pub(super) fn status_of(&self, names: &[String]) -> Result<Vec<LockInfo>> {
        let mut out = Vec::new();
        if self.link.is_cluster() {
            for n in names {
                out.extend(self.status_batch(std::slice::from_ref(n))?);
            }
        } else if !names.is_empty() {
            out = self.status_batch(names)?;
        }
        out.sort_by(|a, b| (&a.name, a.fence).cmp(&(&b.name, b.fence)));
        Ok(out)
    }

    fn status_batch(&self, names: &[String]) -> Result<Vec<LockInfo>> {
        let route_key = self.key(&names[0], "lease");
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for n in names {
            let lease = self.key(n, "lease");
            pipe.cmd("GET").arg(&lease).cmd("PTTL").arg(&lease);
            pipe.cmd("GET").arg(self.key(n, "state"));
        }
        let replies: Vec<Value> = self
            .link
            .with_con(Route::Key(&route_key), |con| pipe.query(con))?;
        let now = match replies.first() {
            Some(Value::Array(t)) => match (int(t.first()), int(t.get(1))) {
                (Some(s), Some(us)) => s * 1_000_000 + us,
                _ => 0,
            },
            _ => 0,
        };
        let mut out = Vec::new();
        let per_name = replies.get(1..).unwrap_or_default().chunks(3);
        for (n, r) in names.iter().zip(per_name) {
            let seen = Seen {
                now,
                lease: r.first().map(text).unwrap_or_default(),
                pttl: int(r.get(1)).unwrap_or(-2),
                state: r.get(2).map(text).unwrap_or_default(),
                fence: String::new(),
                broken: String::new(),
            };
            out.extend(seen.joined(n)?.infos(n, now));
        }
        Ok(out)
    }
}

/// The backend's memory of which of its requests hold a ticket.
pub fn ticket_key(name: &str, token: &str) -> String {
    format!("{name}\n{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lease: &str, pttl: i64, state: &str, fence: &str) -> Seen {
        Seen {
            now: 1_000_000_000,
            lease: lease.into(),
            pttl,
            state: state.into(),
            fence: fence.into(),
            broken: String::new(),
        }
    }

    #[test]
    fn a_lease_value_comes_back_as_it_was_written() {
        let v = "tok\n42\n999\nvm\n7\nroot\njob\nsh -c 'a\nb'";
        let s = seen(v, 1500, "", "42");
        let h = s.legacy().unwrap();
        assert_eq!((h.fence, h.expires_us), (42, 1_000_000_000 + 1_500_000));
        assert_eq!(lease_value(&h, "job"), v);
        assert!(seen("", -2, "", "").legacy().is_none());
    }

    #[test]
    fn the_joined_fence_is_at_least_the_counter() {
        let s = seen("tok\n42\n999\nvm\n7\nroot\njob\nx", 1500, "", "77");
        let st = s.joined("job").unwrap();
        assert_eq!((st.fence, st.holders.len()), (77, 1));
        let err = seen("", -2, "{not json", "").joined("job").unwrap_err();
        assert!(format!("{err:#}").contains("lock 'job'"), "{err:#}");
    }

    #[test]
    fn milliseconds_round_up() {
        assert_eq!(ms_until(2_000_001, 1_000_000), 1001);
        assert_eq!(ms_until(5, 10), 1);
    }
}
