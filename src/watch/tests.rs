use super::*;
use crate::backend::Mode;
use crate::holder::Holder;

fn info(name: &str, token: &str, fence: u64, ttl_ms: u64, queued: u32) -> LockInfo {
    LockInfo {
        name: name.into(),
        holder: Holder::default(),
        token_id: token.into(),
        fence,
        acquired_at_us: 1,
        ttl: Duration::from_millis(ttl_ms),
        mode: Mode::Exclusive,
        slots: 1,
        slot: None,
        queued,
    }
}

fn words(c: &[Change]) -> Vec<(&'static str, &str)> {
    c.iter().map(|c| (c.what.word(), c.name.as_str())).collect()
}

#[test]
fn differences_become_events_in_order() {
    let t0 = Instant::now();
    let mut seen = Seen::new(vec![], t0, Duration::ZERO);
    let none = |_: &LockInfo| None;
    let c = seen.next(vec![info("a", "t1", 1, 30_000, 0)], t0, t0, none);
    assert_eq!(words(&c), [("granted", "a")]);
    let c = seen.next(vec![info("a", "t1", 1, 30_000, 2)], t0, t0, none);
    assert_eq!(words(&c), [("queued", "a")]);
    assert_eq!(c[0].queued, 2);
    // Released early; the next holder came from the queue.
    let c = seen.next(vec![info("a", "t2", 2, 30_000, 1)], t0, t0, none);
    assert_eq!(
        words(&c),
        [("released", "a"), ("granted", "a"), ("dequeued", "a")]
    );
    // Broken, where the backend says by whom.
    let c = seen.next(vec![], t0, t0, |i: &LockInfo| {
        (i.token_id == "t2").then(|| "me@h (pid 1)".to_string())
    });
    assert_eq!(words(&c), [("broken", "a")]);
    assert_eq!(c[0].by.as_deref(), Some("me@h (pid 1)"));
    // The queue of a free lock is remembered for its next holder.
    let c = seen.next(vec![info("a", "t3", 3, 10, 1)], t0, t0, none);
    assert_eq!(words(&c), [("granted", "a")]);
    let later = t0 + Duration::from_millis(20);
    assert_eq!(seen.next_expiry(t0), Some(t0 + Duration::from_millis(25)));
    let c = seen.next(vec![], later, later, none);
    assert_eq!(words(&c), [("expired", "a")]);
}

#[test]
fn until_looks_at_the_named_locks() {
    let t0 = Instant::now();
    let seen = Seen::new(vec![info("a", "t1", 1, 30_000, 0)], t0, Duration::ZERO);
    let a = ["a".to_string()];
    let ab = ["a".to_string(), "b".to_string()];
    assert!(holds(Until::Held, &seen, Some(&a)));
    assert!(!holds(Until::Held, &seen, Some(&ab)));
    assert!(!holds(Until::Free, &seen, Some(&ab)));
    assert!(holds(Until::Free, &seen, Some(&ab[1..])));
    assert!(holds(Until::Held, &seen, None));
    assert!(!holds(Until::Free, &seen, None));
}
