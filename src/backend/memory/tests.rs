use super::*;
use crate::backend::Grant;
use crate::error::code_of;
use crate::holder::Holder;

pub fn req<'a>(name: &'a str, token: &'a str, lease_ms: u64, h: &'a Holder) -> Request<'a> {
    Request {
        name,
        token,
        lease: Duration::from_millis(lease_ms),
        holder: h,
        kind: crate::backend::Kind::MUTEX,
    }
}

fn grant(a: Acquire) -> Grant {
    match a {
        Acquire::Acquired(g) => g,
        other => panic!("busy: {other:?}"),
    }
}

#[test]
fn same_token_extends_and_others_are_busy() {
    let (m, h) = (Memory::new(), Holder::default());
    let (mut a, mut b) = (m.handle(), m.handle());
    let g = grant(a.acquire(&req("x", "tok-a", 1000, &h)).unwrap());
    assert!(!g.extended);
    let again = grant(a.acquire(&req("x", "tok-a", 1000, &h)).unwrap());
    assert!(again.extended && again.fence == g.fence, "{again:?}");
    match b.acquire(&req("x", "tok-b", 1000, &h)).unwrap() {
        Acquire::Busy(Some(i)) => {
            assert_eq!((i.token_id.as_str(), i.fence), ("tok-a", g.fence));
            assert!(i.ttl <= Duration::from_millis(1000) && !i.ttl.is_zero());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fences_only_grow_through_release_force_and_data_loss() {
    let (m, h) = (Memory::new(), Holder::default());
    let mut a = m.handle();
    let mut last = 0;
    for step in 0..4 {
        let g = grant(a.acquire(&req("x", "t", 1000, &h)).unwrap());
        assert!(g.fence > last, "step {step}: {} after {last}", g.fence);
        last = g.fence;
        match step {
            0 => assert!(matches!(a.release("x", "t").unwrap(), Check::Done)),
            1 => assert_eq!(a.force_release("x", None).unwrap()[0].fence, last),
            2 => m.drop_lease("x"),
            _ => {}
        }
    }
}

#[test]
fn renew_and_release_check_the_token_and_never_revive() {
    let (m, h) = (Memory::new(), Holder::default());
    let (mut a, mut b) = (m.handle(), m.handle());
    grant(a.acquire(&req("x", "a", 1000, &h)).unwrap());
    assert!(matches!(
        a.renew("x", "a", Duration::from_secs(1)).unwrap(),
        Check::Done
    ));
    assert!(matches!(
        b.renew("x", "b", Duration::from_secs(1)).unwrap(),
        Check::HeldByOther(i) if i.token_id == "a"
    ));
    assert!(matches!(
        b.release("x", "b").unwrap(),
        Check::HeldByOther(_)
    ));
    m.advance(Duration::from_millis(1001));
    assert!(matches!(
        a.renew("x", "a", Duration::from_secs(1)).unwrap(),
        Check::NotHeld
    ));
    assert!(m.peek("x").is_none(), "renew revived an expired lease");
    assert!(matches!(a.release("x", "a").unwrap(), Check::NotHeld));
    assert!(a.force_release("x", None).unwrap().is_empty());
}

#[test]
fn status_lists_held_locks_only() {
    let (m, h) = (Memory::new(), Holder::default());
    let mut a = m.handle();
    grant(a.acquire(&req("b", "t1", 1000, &h)).unwrap());
    grant(a.acquire(&req("a", "t2", 1000, &h)).unwrap());
    grant(a.acquire(&req("c", "t3", 1000, &h)).unwrap());
    a.release("c", "t3").unwrap();
    let all: Vec<_> = a
        .status(None)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(all, ["a", "b"]);
    let named = a.status(Some(&["c".into(), "b".into()])).unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].name, "b");
}

#[test]
fn a_waiter_is_woken_by_a_release_even_before_it_waits() {
    let (m, h) = (Memory::new(), Holder::default());
    let (mut a, mut b) = (m.handle(), m.handle());
    grant(a.acquire(&req("x", "a", 60_000, &h)).unwrap());
    let mut w = b.waiter("x").unwrap();
    a.release("x", "a").unwrap();
    // Released between the subscription and the wait: returns at once.
    let t = Instant::now();
    w.wait(Duration::from_secs(30)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));

    grant(a.acquire(&req("x", "a", 60_000, &h)).unwrap());
    let waiting = std::thread::spawn(move || {
        w.wait(Duration::from_secs(30)).unwrap();
        Instant::now()
    });
    assert!(m.await_waiters("x", 1, Duration::from_secs(5)));
    let released = Instant::now();
    a.release("x", "a").unwrap();
    let woke = waiting.join().unwrap();
    assert!(woke >= released && woke - released < Duration::from_secs(5));
}

#[test]
fn injected_failures_and_hangs_are_unavailable_errors() {
    let (m, h) = (Memory::new(), Holder::default());
    let mut a = m.handle();
    let k = a.knobs();
    k.fail_after(1, 2);
    grant(a.acquire(&req("x", "a", 1000, &h)).unwrap());
    for _ in 0..2 {
        let e = a.renew("x", "a", Duration::from_secs(1)).unwrap_err();
        assert_eq!(code_of(&e), UNAVAILABLE, "{e:#}");
    }
    assert!(matches!(a.release("x", "a").unwrap(), Check::Done));
    assert_eq!(k.calls().failed, 2);

    // A lost reply: the acquire took the lock although it failed.
    k.lose_replies(true);
    k.fail_next(1);
    assert!(a.acquire(&req("x", "a", 1000, &h)).is_err());
    assert_eq!(m.peek("x").unwrap().token_id, "a");

    k.hang(Duration::from_secs(60));
    a.set_timeout(Duration::from_millis(20)).unwrap();
    let e = a.status(None).unwrap_err();
    assert_eq!(code_of(&e), UNAVAILABLE);
    assert!(format!("{e:#}").contains("no answer within"), "{e:#}");
}
