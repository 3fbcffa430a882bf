//! Taking several names against the in-memory backend: all or nothing,
//! nothing held while waiting, and no deadlock between opposite orders.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::*;
use crate::backend::memory::Memory;
use crate::backend::{Acquire, Check, Kind};
use crate::holder::Holder;

const LONG: Duration = Duration::from_secs(60);
const PROMPT: Duration = Duration::from_secs(5);

fn cfg() -> Config {
    Config {
        url: None,
        prefix: "test".into(),
        timeout: PROMPT,
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

fn take_all(b: &mut dyn Backend, list: &[&str], token: &str, wait: Wait) -> TakenAll {
    let h = Holder::default();
    let template = Request {
        name: list[0],
        token,
        lease: LONG,
        holder: &h,
        kind: Kind::MUTEX,
    };
    acquire_all(b, &names(list), &template, wait, &cfg()).unwrap()
}

fn hold_one(m: &Memory, name: &str, token: &str) {
    let h = Holder::default();
    let req = Request {
        name,
        token,
        lease: LONG,
        holder: &h,
        kind: Kind::MUTEX,
    };
    assert!(matches!(
        m.handle().acquire(&req).unwrap(),
        Acquire::Acquired(_)
    ));
}

#[test]
fn every_part_is_held_and_reported_in_the_order_given() {
    let m = Memory::new();
    let TakenAll::Held(parts) = take_all(
        &mut m.handle(),
        &["b", "a"],
        "tok",
        Wait::For(Duration::ZERO),
    ) else {
        panic!("busy")
    };
    let got: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, ["b", "a"]);
    for n in ["a", "b"] {
        assert_eq!(m.peek(n).expect("not held").token_id, "tok");
    }
    assert_ne!(parts[0].grant.fence, 0);
}

#[test]
fn a_busy_part_leaves_nothing_held() {
    let m = Memory::new();
    hold_one(&m, "b", "other");
    match take_all(
        &mut m.handle(),
        &["a", "b", "c"],
        "tok",
        Wait::For(Duration::ZERO),
    ) {
        TakenAll::Busy(name, info) => {
            assert_eq!(name, "b");
            assert_eq!(info.expect("no holder said").token_id, "other");
        }
        TakenAll::Held(_) => panic!("took a lock that another token holds"),
    }
    assert!(
        m.peek("a").is_none(),
        "the part taken before the busy one is still held"
    );
    assert!(m.peek("c").is_none());
}

#[test]
fn a_waiting_request_holds_nothing_and_takes_all_once_free() {
    let m = Memory::new();
    hold_one(&m, "b", "other");
    let mut b = m.handle();
    let t = std::thread::spawn(move || take_all(&mut b, &["a", "b"], "tok", Wait::For(PROMPT)));
    assert!(m.await_waiters("b", 1, PROMPT), "never waited for 'b'");
    assert!(
        m.peek("a").is_none(),
        "'a' is kept from others while waiting for 'b'"
    );
    assert!(matches!(
        m.handle().release("b", "other").unwrap(),
        Check::Done
    ));
    assert!(matches!(t.join().unwrap(), TakenAll::Held(_)));
    assert_eq!(m.peek("a").unwrap().token_id, "tok");
    assert_eq!(m.peek("b").unwrap().token_id, "tok");
}

#[test]
fn opposite_orders_never_deadlock_nor_overlap() {
    const ROUNDS: u32 = 200;
    let m = Memory::new();
    let inside = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let workers: Vec<_> = [["a", "b"], ["b", "a"]]
        .into_iter()
        .enumerate()
        .map(|(i, list)| {
            let (mut b, inside, done) = (m.handle(), Arc::clone(&inside), Arc::clone(&done));
            std::thread::spawn(move || {
                let token = format!("tok{i}");
                for _ in 0..ROUNDS {
                    let TakenAll::Held(parts) = take_all(&mut b, &list, &token, Wait::For(PROMPT))
                    else {
                        panic!("--wait ran out: the two requests waited on each other")
                    };
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    inside.fetch_sub(1, Ordering::SeqCst);
                    for p in parts.iter().rev() {
                        assert!(matches!(b.release(&p.name, &token).unwrap(), Check::Done));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 2 * ROUNDS);
}
