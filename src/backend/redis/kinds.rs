//! The generic path, for every lock kind (shared, semaphores, fair queues):
//! one READ of a name's keys, the plan in Rust by `backend::kinds` (the
//! rules every backend shares), then one WRITE that applies it only if
//! lease, state and fence counter still read as they did; else plan again.
//! Plain mutexes come here only when their fast script finds a state key.
//!
//! Storage (see `scripts.rs`): `kinds::split` keeps a lone exclusive holder
//! of a 1-slot lock in the lease string, where the fast scripts and older
//! dlock versions look; the rest of the state is JSON in the state key.

use std::time::Instant;

use anyhow::Result;
use redis::Value;

use super::link::Route;
use super::scripts::{READ_LUA, WRITE_LUA};
use super::{int, text, By, RedisBackend, BATON_TTL_MS};
use crate::backend::kinds::{self as rules, Effects, Held, Mode, State};
use crate::backend::{Acquire, Broken, Check, LockInfo, Request};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use crate::holder::Holder;
use crate::names::token_id;

/// Writes lost to other clients in a row before giving up: each loss means
/// another client's change went through, so this bounds only a stampede.
const MAX_RACES: usize = 50;
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

/// What a plan writes besides the state: a break record ("token\nby" and
/// its PX) and notices for listening holders.
#[derive(Default)]
struct Notes {
    record: Option<(String, i64)>,
    publish: Vec<String>,
}

/// The answer of `plan`, what it changes, and its notes.
type Planned<T> = (T, Effects, Notes);

impl RedisBackend {
    /// READs `name`'s keys; with `ask`, also the eviction policy (see `acquire`).
    fn read(&self, name: &str, by: By, ask: bool) -> Result<Seen> {
        let keys = [
            self.key(name, "lease"),
            self.key(name, "state"),
            self.key(name, "fence"),
        ];
        let (items, info) = self.run_with_info(&READ_LUA, by, &keys, &[], ask)?;
        if let Some(info) = info {
            super::watch::warn_if_evicting(&info, &self.link.shown);
        }
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

    /// Read, plan, write, until a write finds the keys as its read did.
    fn change<T>(
        &mut self,
        name: &str,
        by: By,
        mut ask: bool,
        mut plan: impl FnMut(&Seen, &mut State) -> Result<Planned<T>>,
    ) -> Result<T> {
        for _ in 0..MAX_RACES {
            let seen = self.read(name, by, std::mem::take(&mut ask))?;
            let mut st = seen.joined(name)?;
            let (out, fx, notes) = plan(&seen, &mut st)?;
            if !fx.write && !fx.wake {
                return Ok(out);
            }
            if self.write(name, &seen, st, fx.wake, &notes, by)? {
                return Ok(out);
            }
        }
        Err(fail(
            UNAVAILABLE,
            format!("lock '{name}' kept changing under {MAX_RACES} tries to update it; try again"),
        ))
    }

    /// Any kind of acquisition. A busy attempt that owes a wake-up to a
    /// waiter ahead of it passes one on at most once per ticket refresh,
    /// so that live waiters cannot wake each other in a loop while a dead
    /// waiter's ticket runs out.
    pub(super) fn acquire_generic(&mut self, req: &Request, ask: bool) -> Result<Acquire> {
        let due = self
            .busy_wake
            .is_none_or(|t| t.elapsed() >= rules::TICKET_REFRESH);
        let mut passed = false;
        let out = self.change(req.name, By::Hash, ask, |seen, st| {
            let (out, mut fx) = rules::plan_acquire(seen.now, st, req)?;
            if !matches!(out, Acquire::Acquired(_)) {
                fx.wake &= due;
                passed = fx.wake;
            }
            Ok((out, fx, Notes::default()))
        })?;
        if passed {
            self.busy_wake = Some(Instant::now());
        }
        let ticket = ticket_key(req.name, req.token);
        if matches!(out, Acquire::Queued(_)) {
            self.tickets.insert(ticket);
        } else {
            self.tickets.remove(&ticket);
        }
        Ok(out)
    }

    /// Renews a holder the fast script did not find in the lease string;
    /// `broken_by` is who broke `token`'s lease, as that script read it.
    pub(super) fn renew_generic(
        &mut self,
        name: &str,
        token: &str,
        lease: std::time::Duration,
        broken_by: Option<String>,
    ) -> Result<Check> {
        let check = self.change(name, By::Body, false, |seen, st| {
            let (c, fx) = rules::plan_renew(seen.now, st, name, token, lease);
            Ok((c, fx, Notes::default()))
        })?;
        Ok(with_breaker(check, broken_by))
    }

    /// Releases a holder or ticket the fast script did not find in the lease string.
    pub(super) fn release_generic(
        &mut self,
        name: &str,
        token: &str,
        broken_by: Option<String>,
    ) -> Result<Check> {
        self.tickets.remove(&ticket_key(name, token));
        let check = self.change(name, By::Hash, false, |seen, st| {
            let (c, fx) = rules::plan_release(seen.now, st, name, token);
            Ok((c, fx, Notes::default()))
        })?;
        Ok(with_breaker(check, broken_by))
    }

    /// Breaks every holder, or the one with token id `only`, in one write:
    /// each broken `exec` holder hears of it on the broken channel, and the
    /// break record names the lease-string holder's (else the first) breaker.
    pub(super) fn force_generic(
        &mut self,
        name: &str,
        only: Option<&str>,
        by: &str,
    ) -> Result<Vec<LockInfo>> {
        self.change(name, By::Hash, false, |seen, st| {
            let live: Vec<(String, i64)> = st
                .holders
                .iter()
                .filter(|h| h.expires_us > seen.now)
                .map(|h| (h.token.clone(), h.expires_us))
                .collect();
            let (broken, fx) = rules::plan_force(seen.now, st, name, only);
            let gone: Vec<(String, i64)> = live
                .into_iter()
                .filter(|(t, _)| st.holders.iter().all(|h| &h.token != t))
                .collect();
            let legacy = seen.legacy().map(|h| h.token);
            let first = gone
                .iter()
                .find(|(t, _)| Some(t) == legacy.as_ref())
                .or(gone.first());
            let notes = Notes {
                record: first.map(|(t, exp)| {
                    let ms = ms_until(*exp, seen.now) + RECORD_MARGIN_MS;
                    (format!("{t}\n{by}"), ms)
                }),
                publish: gone
                    .iter()
                    .map(|(t, _)| format!("{}\n{by}", token_id(t)))
                    .collect(),
            };
            Ok((broken, fx, notes))
        })
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

/// A refused renew or release of a lease that was broken says by whom.
fn with_breaker(check: Check, by: Option<String>) -> Check {
    match (check, by) {
        (Check::NotHeld, Some(by)) => Check::Broken(Broken { by, now: None }),
        (Check::HeldByOther(i), Some(by)) => Check::Broken(Broken { by, now: Some(i) }),
        (check, _) => check,
    }
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
