//! The keeper against the in-memory backend: renewal schedule, deadline
//! arithmetic while renewals fail, lost-lease events, release and lapse.

use std::sync::mpsc::Receiver;

use super::*;
use crate::backend::memory::{Knobs, Memory};
use crate::backend::{Acquire, Request};
use crate::holder::Holder;

/// Short enough for fast tests; the margins of [`Timing::new`] scaled down.
const TIMING: Timing = Timing {
    lease: Duration::from_millis(300),
    period: Duration::from_millis(100),
    margin: Duration::from_millis(30),
    kill_after: Duration::from_millis(60),
};
const PROMPT: Duration = Duration::from_secs(2);

/// Takes "job" as `token` in a new handle of `m` and hands it to a keeper
/// whose first renewal is due at `acquired_sent + period`.
fn keeper(m: &Memory, acquired_sent: Instant) -> (Keeper, Arc<Knobs>, Receiver<Event>) {
    keeper_of(m, &["job"], acquired_sent)
}

/// The same for every name in `names`, all held by "tok".
fn keeper_of(
    m: &Memory,
    names: &[&str],
    acquired_sent: Instant,
) -> (Keeper, Arc<Knobs>, Receiver<Event>) {
    let mut b = m.handle();
    let h = Holder::default();
    for name in names {
        let req = Request {
            name,
            token: "tok",
            lease: TIMING.lease,
            holder: &h,
            kind: crate::backend::Kind::MUTEX,
        };
        assert!(matches!(b.acquire(&req).unwrap(), Acquire::Acquired(_)));
    }
    let knobs = b.knobs();
    let (tx, rx) = mpsc::channel();
    let names = names.iter().map(|n| n.to_string()).collect();
    let k = Keeper::new(
        Box::new(b),
        names,
        "tok".into(),
        TIMING,
        acquired_sent,
        PROMPT,
        tx,
    );
    (k, knobs, rx)
}

/// An acquisition one period ago: the first renewal is due at once.
fn a_period_ago() -> Instant {
    Instant::now() - TIMING.period
}

#[test]
fn renews_every_period_and_releases() {
    let m = Memory::new();
    let sent = Instant::now();
    let (k, knobs, _rx) = keeper(&m, sent);
    assert_eq!(k.stop_by(), TIMING.stop_by(sent));
    assert_eq!(k.first_renewal(), Some(sent + TIMING.period));
    k.start_now();
    let c = knobs.await_calls(PROMPT, |c| c.renew >= 3);
    let elapsed = sent.elapsed();
    assert!(c.renew >= 3, "{c:?}");
    // Each renewal a period after the one before, never sooner.
    assert!(elapsed >= TIMING.period * 3, "3 renewals in {elapsed:?}");
    assert!(k.stop_by() > TIMING.stop_by(sent));
    assert!(matches!(worst(k.release()).unwrap(), Check::Done));
    assert!(m.peek("job").is_none());
    assert_eq!(knobs.calls().failed, 0);
}

#[test]
fn failing_renewals_hold_the_deadline_of_the_last_success() {
    let m = Memory::new();
    let (k, knobs, _rx) = keeper(&m, a_period_ago());
    // The first renewal goes through; every one after it fails.
    knobs.fail_after(1, u32::MAX);
    k.start_now();
    let c = knobs.await_calls(PROMPT, |c| c.failed >= 2);
    assert!(c.failed >= 2, "{c:?}");
    let (lo, hi) = knobs.last_renewal_sent().expect("no renewal went through");
    let stop_by = k.stop_by();
    assert!(TIMING.stop_by(lo) <= stop_by && stop_by <= TIMING.stop_by(hi));
    let c = knobs.await_calls(PROMPT, |c| c.failed >= 3 && c.reconnect >= 3);
    assert!(c.failed >= 3 && c.reconnect >= 3, "{c:?}");
    assert_eq!(k.stop_by(), stop_by, "a failed renewal moved the deadline");
    assert!(!k.lose_if_due(stop_by - Duration::from_micros(1)));
    assert!(k.lose_if_due(stop_by));
    assert!(!k.lose_if_due(stop_by), "lost twice");
    // Lost: no release is sent to the server that failed us.
    assert!(matches!(worst(k.release()).unwrap(), Check::NotHeld));
    assert_eq!(knobs.calls().release, 0);
}

fn lost_message(rx: &Receiver<Event>) -> String {
    match rx.recv_timeout(PROMPT) {
        Ok(Event::Lost(msg)) => msg,
        Ok(_) => panic!("an event other than Lost"),
        Err(e) => panic!("no Lost event: {e}"),
    }
}

#[test]
fn a_lease_the_server_lost_is_reported() {
    let m = Memory::new();
    let (k, _knobs, rx) = keeper(&m, a_period_ago());
    m.drop_lease("job");
    k.start_now();
    let msg = lost_message(&rx);
    assert!(msg.contains("no longer has the lease on 'job'"), "{msg}");
    assert!(k.lose());
    assert!(matches!(worst(k.release()).unwrap(), Check::NotHeld));
}

#[test]
fn a_lease_taken_by_another_is_reported_with_its_holder() {
    let m = Memory::new();
    let (k, _knobs, rx) = keeper(&m, a_period_ago());
    let mut other = m.handle();
    other.force_release("job", None).unwrap();
    let h = Holder {
        host: "far".into(),
        pid: 42,
        user: "ops".into(),
        command: "x".into(),
    };
    let req = Request {
        name: "job",
        token: "other",
        lease: TIMING.lease,
        holder: &h,
        kind: crate::backend::Kind::MUTEX,
    };
    let Acquire::Acquired(g) = other.acquire(&req).unwrap() else {
        panic!("busy after --force");
    };
    k.start_now();
    let msg = lost_message(&rx);
    let want = format!("now held by far:42 (ops) with fence {}", g.fence);
    assert!(msg.contains(&want), "{msg}");
    let _ = k.lose();
    let _ = k.release();
    assert_eq!(m.peek("job").unwrap().token_id, "other");
}

#[test]
fn release_before_the_first_renewal_frees_the_lock() {
    let m = Memory::new();
    let (k, knobs, _rx) = keeper(&m, Instant::now());
    assert!(matches!(worst(k.release()).unwrap(), Check::Done));
    assert!(m.peek("job").is_none());
    assert_eq!(knobs.calls().renew, 0);
}

#[test]
fn lapse_after_sets_the_lease_to_run_out() {
    let m = Memory::new();
    let (k, knobs, _rx) = keeper(&m, Instant::now());
    let left = Duration::from_secs(30);
    assert!(matches!(worst(k.lapse_after(left)).unwrap(), Check::Done));
    let ttl = m.peek("job").expect("released instead of lapsing").ttl;
    // Longer than the 300ms lease: the lapse set it, not a renewal.
    assert!(ttl <= left && ttl > left - PROMPT, "{ttl:?}");
    let c = knobs.calls();
    assert_eq!((c.renew, c.release), (1, 0), "{c:?}");
    m.advance(left);
    assert!(m.peek("job").is_none());
}

/// A keeper of two names ("job" and "job2", both held by `tok`).
fn keeper_of_two(m: &Memory) -> (Keeper, Arc<Knobs>, Receiver<Event>) {
    keeper_of(m, &["job", "job2"], a_period_ago())
}

#[test]
fn every_name_is_renewed_and_released_in_reverse_order() {
    let m = Memory::new();
    let (k, knobs, _rx) = keeper_of_two(&m);
    k.start_now();
    let c = knobs.await_calls(PROMPT, |c| c.renew >= 4);
    assert!(c.renew >= 4, "{c:?}");
    // Both leases were extended past the one granted at acquisition.
    for n in ["job", "job2"] {
        assert!(m.peek(n).unwrap().ttl > TIMING.lease / 2, "{n} not renewed");
    }
    let ended = k.release();
    let order: Vec<&str> = ended.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, ["job2", "job"]);
    assert!(ended.iter().all(|(_, r)| matches!(r, Ok(Check::Done))));
    assert!(m.peek("job").is_none() && m.peek("job2").is_none());
}

#[test]
fn losing_any_name_is_losing_the_lease_and_names_it() {
    let m = Memory::new();
    let (k, _knobs, rx) = keeper_of_two(&m);
    m.drop_lease("job2");
    k.start_now();
    let msg = lost_message(&rx);
    assert!(msg.contains("no longer has the lease on 'job2'"), "{msg}");
}
