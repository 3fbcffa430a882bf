//! `dlock watch`: successive `status` snapshots turned into events.
//!
//! A watcher only reads. Each snapshot lists the live holders (keyed by
//! name and token id) and the queue length of each held lock; what
//! a snapshot gained or lost since the one before is an event. A holder
//! that vanished after the time its lease had left ran out is "expired";
//! before that, "broken" where the backend records who broke it, else
//! "released". The loop that takes the snapshots is in
//! `commands/watch.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::backend::LockInfo;
use crate::cli::Until;

/// What happened to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Granted,
    Released,
    Expired,
    Broken,
    /// More waiters hold a place in the lock's queue.
    Queued,
    /// Fewer do (one was granted the lock, gave up or lapsed).
    LeftQueue,
}

impl What {
    /// The event's name in text and JSON.
    pub fn word(self) -> &'static str {
        match self {
            What::Granted => "granted",
            What::Released => "released",
            What::Expired => "expired",
            What::Broken => "broken",
            What::Queued => "queued",
            What::LeftQueue => "dequeued",
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
pub struct Change {
    pub what: What,
    pub name: String,
    /// The holder it is about (none for a queue event).
    pub info: Option<LockInfo>,
    /// Waiters queued after the change (queue events).
    pub queued: u32,
    /// Who broke the lease (`broken`).
    pub by: Option<String>,
}

/// A holder as last seen, with when its lease runs out by our clock.
struct Held {
    info: LockInfo,
    /// The read's start plus the time left it reported: never later than
    /// the server's expiry.
    ends: Instant,
}

/// What the last snapshot held.
#[derive(Default)]
pub struct Seen {
    held: BTreeMap<(String, String), Held>,
    /// Queue length per lock, kept while the lock is free (a free lock's
    /// queue is not reported) so that its next holder is compared with it.
    queued: BTreeMap<String, u32>,
    /// How early before its expiry by our clock a vanished lease counts as
    /// expired: [`EXPIRY_SLACK`] plus the backend's `ttl_grain`.
    slack: Duration,
}

/// A lease that vanished this close before its expiry (by our clock) is
/// taken to have expired: the clocks and the read's own time blur it.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);

/// A holder is its token on a lock. Its fence is not part of it: on
/// Redlock a read during an acquisition may see the fence of the nodes
/// reached so far, and the one written back a moment later is the same
/// holder.
fn key(i: &LockInfo) -> (String, String) {
    (i.name.clone(), i.token_id.clone())
}

impl Seen {
    /// The first snapshot, read from `started`: no events. `grain` is how
    /// coarsely the backend counts the time a lease has left.
    pub fn new(infos: Vec<LockInfo>, started: Instant, grain: Duration) -> Seen {
        let mut seen = Seen {
            slack: EXPIRY_SLACK + grain,
            ..Seen::default()
        };
        seen.take(infos, started);
        seen
    }

    fn take(&mut self, infos: Vec<LockInfo>, started: Instant) {
        self.held.clear();
        for i in infos {
            self.queued.insert(i.name.clone(), i.queued);
            let ends = started + i.ttl;
            self.held.insert(key(&i), Held { info: i, ends });
        }
    }

    /// The events between the last snapshot and `infos`, read from
    /// `started` to `done`: per lock, holders gone, holders new, then the
    /// queue. `broken_by` names who broke a holder that vanished early.
    pub fn next(
        &mut self,
        infos: Vec<LockInfo>,
        started: Instant,
        done: Instant,
        mut broken_by: impl FnMut(&LockInfo) -> Option<String>,
    ) -> Vec<Change> {
        let now: BTreeMap<_, _> = infos.iter().map(|i| (key(i), i)).collect();
        let mut names: Vec<&String> = self.held.keys().map(|k| &k.0).collect();
        names.extend(infos.iter().map(|i| &i.name));
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            for (k, h) in self.held.iter().filter(|(k, _)| &k.0 == name) {
                if now.contains_key(k) {
                    continue;
                }
                let (what, by) = if h.ends <= done + self.slack {
                    (What::Expired, None)
                } else {
                    match broken_by(&h.info) {
                        Some(by) => (What::Broken, Some(by)),
                        None => (What::Released, None),
                    }
                };
                out.push(Change {
                    what,
                    name: name.clone(),
                    info: Some(h.info.clone()),
                    queued: 0,
                    by,
                });
            }
            let of_name = infos.iter().filter(|i| &i.name == name);
            for i in of_name.clone() {
                if !self.held.contains_key(&key(i)) {
                    out.push(Change {
                        what: What::Granted,
                        name: name.clone(),
                        info: Some(i.clone()),
                        queued: 0,
                        by: None,
                    });
                }
            }
            if let Some(q) = of_name.map(|i| i.queued).max() {
                let was = self.queued.get(name).copied().unwrap_or(0);
                if q != was {
                    out.push(Change {
                        what: if q > was {
                            What::Queued
                        } else {
                            What::LeftQueue
                        },
                        name: name.clone(),
                        info: None,
                        queued: q,
                        by: None,
                    });
                }
            }
        }
        self.take(infos, started);
        out
    }

    /// When the next lease may run out (by our clock), for a wake-up then.
    /// Our clock's expiry comes a little early (it counts from the read's
    /// start): a lease past it and still listed is looked at again every
    /// 25 ms for 100 ms, then every 100 ms (etcd ends leases in its own time).
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let again = |ends: Instant| match now < ends + Duration::from_millis(100) {
            true => Duration::from_millis(25),
            false => Duration::from_millis(100),
        };
        self.held
            .values()
            .map(|h| h.ends.max(now + again(h.ends)))
            .min()
    }

    /// Whether `name` has a holder.
    pub fn is_held(&self, name: &str) -> bool {
        self.held.keys().any(|k| k.0 == name)
    }

    /// Whether any lock has a holder.
    pub fn any_held(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Whether `--until` holds for what was last seen: every named lock free
/// (or held); without names, no lock under the prefix held (or some).
pub fn holds(until: Until, seen: &Seen, names: Option<&[String]>) -> bool {
    match (until, names) {
        (Until::Free, Some(ns)) => ns.iter().all(|n| !seen.is_held(n)),
        (Until::Held, Some(ns)) => ns.iter().all(|n| seen.is_held(n)),
        (Until::Free, None) => !seen.any_held(),
        (Until::Held, None) => seen.any_held(),
    }
}

#[cfg(test)]
mod tests;
