//! Where a request lives in etcd and what its value says, and the reading of
//! one name's keys as the lock kinds' state (pure, so that it is unit-tested).
//!
//! Each request has one key, `P/NAME/TOKEN` (prefix and name with `%` and `/`
//! written `%25` and `%2F`, so that neither can reach into the other's part).
//! The keys of a name, in create-revision order, are its queue; those whose
//! value says `held` are its holders.

use serde::{Deserialize, Serialize};

use crate::backend::kinds::{Held, State, Ticket};
use crate::backend::{Kind, Mode};
use crate::holder::Holder;

/// What a key's value records (JSON with short field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Holds the lock (true) or waits in its queue.
    #[serde(rename = "held")]
    pub held: bool,
    #[serde(rename = "m", default)]
    pub mode: Mode,
    /// The slot count asked for (1 unless a semaphore).
    #[serde(rename = "n")]
    pub slots: u32,
    #[serde(rename = "s", default)]
    pub slot: u32,
    #[serde(rename = "h")]
    pub holder: Holder,
    /// When the lock was granted (or the wait began), by dlock's clock, µs since the epoch.
    #[serde(rename = "a")]
    pub at_us: i64,
    /// The lease's TTL in whole seconds, as asked and as granted (etcd
    /// raises a short one to its minimum): a renewal asking either again
    /// needs only a keep-alive of the lease; another length, a new lease.
    #[serde(rename = "ask", default)]
    pub ask: i64,
    #[serde(rename = "ttl", default)]
    pub ttl: i64,
}

impl Entry {
    pub fn new(held: bool, kind: &Kind, slot: u32, holder: &Holder, ttls: (i64, i64)) -> Entry {
        Entry {
            held,
            mode: kind.mode,
            slots: kind.slots,
            slot,
            holder: holder.clone(),
            at_us: now_us(),
            ask: ttls.0,
            ttl: ttls.1,
        }
    }

    /// Whether a renewal asking for `ttl` seconds is a keep-alive of this lease.
    pub fn renews_as(&self, ttl: i64) -> bool {
        ttl == self.ask || ttl == self.ttl
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// dlock's own clock: etcd keeps none that a client can read.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One request's key as read from etcd.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub token: String,
    pub key: Vec<u8>,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub lease: i64,
    pub entry: Entry,
}

/// `%` and `/` escaped, so that a part never contains the separator.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// Everything dlock stores under `prefix`.
pub fn all(prefix: &str) -> String {
    format!("{}/", escape(prefix))
}

/// The queue of one name.
pub fn of_name(prefix: &str, name: &str) -> String {
    format!("{}{}/", all(prefix), escape(name))
}

/// One request's key.
pub fn key(prefix: &str, name: &str, token: &str) -> String {
    format!("{}{token}", of_name(prefix, name))
}

/// Where `release --force` records who broke the lease of token id `id`
/// on `name`: outside the range of every request (`all(prefix)`), since
/// an escaped prefix never has a `%` that `%b` follows, so that no read of
/// locks or queues meets it, nor is it another prefix's.
pub fn broken(prefix: &str, name: &str, id: &str) -> String {
    format!("{}%b/{}/{}", escape(prefix), escape(name), escape(id))
}

/// Reads a key under `prefix` back into a node; None for keys that are not
/// dlock's (left by hand, or by another tool under the same prefix).
pub fn node(prefix: &str, key: &[u8], value: &[u8], revs: (i64, i64), lease: i64) -> Option<Node> {
    let k = std::str::from_utf8(key).ok()?;
    let rest = k.strip_prefix(&all(prefix))?;
    let (name, token) = rest.split_once('/')?;
    let entry: Entry = serde_json::from_slice(value).ok()?;
    Some(Node {
        name: unescape(name),
        token: token.to_string(),
        key: key.to_vec(),
        create_rev: revs.0,
        mod_rev: revs.1,
        lease,
        entry,
    })
}

/// Far beyond any lease: etcd, not dlock, expires keys, so the rules must
/// never drop a node for its age.
const NEVER: i64 = i64::MAX / 4;

/// One name's nodes as the lock kinds' state: holders with their create
/// revision as fence, waiters as tickets in create-revision order.
pub fn state(nodes: &[Node]) -> State {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.create_rev);
    let mut st = State::default();
    for n in sorted {
        let e = &n.entry;
        st.fence = st.fence.max(n.create_rev);
        if e.held {
            if st.holders.is_empty() {
                st.slots = e.slots.max(1);
            }
            st.holders.push(Held {
                token: n.token.clone(),
                mode: e.mode,
                slot: e.slot,
                fence: n.create_rev,
                holder: e.holder.clone(),
                acquired_us: e.at_us,
                expires_us: NEVER,
            });
        } else {
            st.queue.push(Ticket {
                token: n.token.clone(),
                mode: e.mode,
                seq: n.create_rev.max(0) as u64,
                expires_us: NEVER,
            });
        }
    }
    st.slots = st.slots.max(1);
    st
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn node_of(token: &str, rev: i64, held: bool, kind: Kind, slot: u32) -> Node {
        Node {
            name: "job".into(),
            token: token.into(),
            key: key("p", "job", token).into_bytes(),
            create_rev: rev,
            mod_rev: rev,
            lease: rev * 100,
            entry: Entry::new(held, &kind, slot, &Holder::default(), (30, 30)),
        }
    }

    #[test]
    fn prefixes_names_and_tokens_never_run_into_each_other() {
        assert_eq!(key("dlock", "job", "t1"), "dlock/job/t1");
        assert_eq!(key("a/b", "c", "t"), "a%2Fb/c/t");
        assert_ne!(of_name("a", "b/c"), of_name("a/b", "c"));
        assert!(!key("a", "b%2Fc", "t").starts_with(&of_name("a", "b/c")));
        let e = Entry::new(true, &Kind::MUTEX, 0, &Holder::default(), (1, 2));
        assert!(e.renews_as(1) && e.renews_as(2) && !e.renews_as(3));
        let k = key("a/b", "x/%y 🔒", "tok/with/slash");
        let n = node("a/b", k.as_bytes(), &e.encode(), (7, 9), 42).unwrap();
        assert_eq!(
            (n.name.as_str(), n.token.as_str(), n.create_rev, n.lease),
            ("x/%y 🔒", "tok/with/slash", 7, 42)
        );
        assert!(node("a", k.as_bytes(), &e.encode(), (1, 1), 0).is_none());
        assert!(node("a/b", k.as_bytes(), b"not json", (1, 1), 0).is_none());
        for p in ["dlock", "a/b", "a%b", "a%"] {
            let b = broken(p, "job", "tok/1");
            assert!(!b.starts_with(&all(p)), "{b}");
            assert!(
                ["a%b", "a%", "a"].iter().all(|q| !b.starts_with(&all(q))),
                "{b}"
            );
        }
        assert_eq!(broken("a/b", "x/y", "t"), "a%2Fb%b/x%2Fy/t");
    }

    #[test]
    fn state_orders_by_create_revision_and_splits_holders_from_waiters() {
        let sem = Kind {
            slots: 3,
            ..Kind::MUTEX
        };
        let nodes = [
            node_of("w2", 9, false, sem, 0),
            node_of("h1", 4, true, sem, 1),
            node_of("w1", 7, false, sem, 0),
            node_of("h0", 2, true, sem, 0),
        ];
        let st = state(&nodes);
        let holders: Vec<(&str, i64)> = st
            .holders
            .iter()
            .map(|h| (h.token.as_str(), h.fence))
            .collect();
        assert_eq!(holders, [("h0", 2), ("h1", 4)]);
        let queue: Vec<(&str, u64)> = st.queue.iter().map(|t| (t.token.as_str(), t.seq)).collect();
        assert_eq!(queue, [("w1", 7), ("w2", 9)]);
        assert_eq!((st.slots, st.fence), (3, 9));
        assert_eq!(state(&[]).slots, 1);
    }
}
