//! Who may go next, decided from one read of a name's keys by the lock
//! kinds' own rules, plus etcd's one of its own: grants happen in queue
//! order (a request goes only when no waiter is ahead of it), so that each
//! holder's create revision, its fence, is greater than every earlier grant's.

use anyhow::Result;

use super::keys::{state, Node};
use crate::backend::kinds;
use crate::backend::{Acquire, Kind, LockInfo, Request};

/// What a request should do now.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Its token holds the lock already: only the lease is extended.
    Extend,
    /// It may take the lock now, in this slot.
    Take { slot: u32 },
    /// It must wait for a change to one of these keys.
    Wait(Behind),
}

/// What a waiter watches.
#[derive(Debug, PartialEq)]
pub enum Behind {
    /// The waiter just ahead: its grant (a put) or its leaving (a delete)
    /// is the next thing that can let this one go. One watcher per key, so a
    /// release wakes one waiter, not all.
    Waiter(Vec<u8>),
    /// Only holders are ahead: the first of them to leave may let it go.
    Holders(Vec<Vec<u8>>),
}

/// Decides for `req` (whose key, if it has one yet, is among `nodes`).
/// A request whose kind contradicts the holders' is a usage error, as on
/// every backend; the info is the holder a busy request reports.
pub fn decide(nodes: &[Node], req: &Request) -> Result<(Decision, Option<LockInfo>)> {
    let mut st = state(nodes);
    // Every waiter on etcd holds its place in the queue: fair by construction.
    let queued = Request {
        kind: Kind {
            fair: true,
            ..req.kind
        },
        ..*req
    };
    let (out, _) = kinds::plan_acquire(0, &mut st, &queued)?;
    let mine = nodes.iter().find(|n| n.token == req.token);
    let my_rev = mine.map_or(i64::MAX, |n| n.create_rev);
    let mut ahead: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.token != req.token && n.create_rev < my_rev)
        .collect();
    ahead.sort_by_key(|n| n.create_rev);
    let info = match out {
        Acquire::Acquired(g) if g.extended => return Ok((Decision::Extend, None)),
        Acquire::Acquired(g) if ahead.iter().all(|n| n.entry.held) => {
            return Ok((
                Decision::Take {
                    slot: g.slot.unwrap_or(0),
                },
                None,
            ))
        }
        Acquire::Acquired(_) => None,
        Acquire::Busy(i) | Acquire::Queued(i) => i,
    };
    let behind = match ahead.last() {
        Some(p) if !p.entry.held => Behind::Waiter(p.key.clone()),
        Some(_) => Behind::Holders(ahead.iter().map(|n| n.key.clone()).collect()),
        // Nothing ahead yet not allowed in: holders behind it (left by
        // another tool, or a race): any of them leaving may change that.
        None => Behind::Holders(
            nodes
                .iter()
                .filter(|n| n.entry.held && n.token != req.token)
                .map(|n| n.key.clone())
                .collect(),
        ),
    };
    let info = info.or_else(|| st.infos(req.name, 0).into_iter().next());
    Ok((Decision::Wait(behind), info))
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::node_of;
    use super::*;
    use crate::backend::Mode;
    use crate::holder::Holder;
    use std::time::Duration;

    const SHARED: Kind = Kind {
        mode: Mode::Shared,
        slots: 1,
        fair: false,
    };
    const SEM2: Kind = Kind {
        mode: Mode::Exclusive,
        slots: 2,
        fair: false,
    };

    fn ask(nodes: &[Node], token: &str, kind: Kind) -> Result<Decision> {
        let h = Holder::default();
        let req = Request {
            name: "job",
            token,
            lease: Duration::from_secs(30),
            holder: &h,
            kind,
        };
        decide(nodes, &req).map(|(d, _)| d)
    }

    fn key(t: &str) -> Vec<u8> {
        super::super::keys::key("p", "job", t).into_bytes()
    }

    #[test]
    fn a_mutex_waiter_watches_only_the_key_ahead_of_it() {
        let m = Kind::MUTEX;
        assert_eq!(ask(&[], "a", m).unwrap(), Decision::Take { slot: 0 });
        let q = [
            node_of("a", 2, true, m, 0),
            node_of("b", 3, false, m, 0),
            node_of("c", 5, false, m, 0),
        ];
        assert_eq!(ask(&q, "a", m).unwrap(), Decision::Extend);
        assert_eq!(
            ask(&q, "b", m).unwrap(),
            Decision::Wait(Behind::Holders(vec![key("a")]))
        );
        assert_eq!(
            ask(&q, "c", m).unwrap(),
            Decision::Wait(Behind::Waiter(key("b")))
        );
        // A newcomer without a key yet queues behind the last one.
        assert_eq!(
            ask(&q, "d", m).unwrap(),
            Decision::Wait(Behind::Waiter(key("c")))
        );
        // The holder left: the first waiter goes.
        assert_eq!(ask(&q[1..], "b", m).unwrap(), Decision::Take { slot: 0 });
    }

    #[test]
    fn readers_share_but_queue_behind_a_waiting_writer() {
        let q = [
            node_of("r1", 2, true, SHARED, 0),
            node_of("r2", 3, true, SHARED, 0),
        ];
        assert_eq!(ask(&q, "r3", SHARED).unwrap(), Decision::Take { slot: 0 });
        let w = node_of("w", 4, false, Kind::MUTEX, 0);
        let q = [q[0].clone(), q[1].clone(), w];
        assert_eq!(
            ask(&q, "w", Kind::MUTEX).unwrap(),
            Decision::Wait(Behind::Holders(vec![key("r1"), key("r2")]))
        );
        assert_eq!(
            ask(&q, "r3", SHARED).unwrap(),
            Decision::Wait(Behind::Waiter(key("w")))
        );
    }

    #[test]
    fn grants_follow_the_queue_so_fences_only_grow() {
        // Two free slots, but the first waiter has not taken its own yet:
        // the one behind it waits for that grant instead of passing it.
        let q = [
            node_of("a", 2, true, SEM2, 0),
            node_of("b", 4, false, SEM2, 0),
            node_of("c", 6, false, SEM2, 0),
        ];
        assert_eq!(ask(&q, "b", SEM2).unwrap(), Decision::Take { slot: 1 });
        assert_eq!(
            ask(&q, "c", SEM2).unwrap(),
            Decision::Wait(Behind::Waiter(key("b")))
        );
        let q = [
            node_of("b", 4, true, SEM2, 1),
            node_of("c", 6, false, SEM2, 0),
        ];
        assert_eq!(ask(&q, "c", SEM2).unwrap(), Decision::Take { slot: 0 });
    }

    #[test]
    fn a_kind_that_contradicts_the_holders_is_a_usage_error() {
        let q = [node_of("a", 2, true, SEM2, 0)];
        let e = ask(&q, "b", Kind::MUTEX).unwrap_err();
        assert_eq!(crate::error::code_of(&e), crate::error::USAGE);
        assert!(e.to_string().contains("held as a 2-slot semaphore"), "{e}");
    }
}
