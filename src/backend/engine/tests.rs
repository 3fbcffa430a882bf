use super::*;
use crate::backend::kinds::{Held, Mode};
use crate::backend::memory::Memory;
use crate::backend::Backend;
use crate::error::code_of;

fn req<'a>(name: &'a str, token: &'a str, h: &'a Holder) -> Request<'a> {
    Request {
        name,
        token,
        lease: Duration::from_secs(10),
        holder: h,
        kind: crate::backend::Kind::MUTEX,
    }
}

fn held(token: &str, expires_us: i64) -> Held {
    Held {
        token: token.into(),
        mode: Mode::Shared,
        slot: 0,
        fence: 1,
        holder: Holder::default(),
        acquired_us: 0,
        expires_us,
    }
}

/// A request that changes a lock: its kind, the lock's name, the call.
type Op<'a> = Box<dyn Fn(&mut dyn Backend) -> Result<()> + 'a>;

#[test]
fn every_change_gives_up_alike_after_the_same_number_of_lost_races() {
    let (m, h) = (Memory::new(), Holder::default());
    let mut b = m.handle();
    let k = b.knobs();
    assert!(matches!(
        b.acquire(&req("x", "tok-a", &h)).unwrap(),
        Acquire::Acquired(_)
    ));
    let ops: [(&str, &str, Op); 4] = [
        (
            "acquire",
            "y",
            Box::new(|b| b.acquire(&req("y", "tok-b", &h)).map(drop)),
        ),
        (
            "renew",
            "x",
            Box::new(|b| b.renew("x", "tok-a", Duration::from_secs(9)).map(drop)),
        ),
        (
            "release",
            "x",
            Box::new(|b| b.release("x", "tok-a").map(drop)),
        ),
        (
            "force",
            "x",
            Box::new(|b| b.force_release("x", None).map(drop)),
        ),
    ];
    for (what, name, op) in &ops {
        let lost = k.calls().lost;
        k.lose_races(MAX_RACES);
        let e = op(&mut b).expect_err(what);
        assert_eq!(code_of(&e), UNAVAILABLE, "{what}: {e:#}");
        assert_eq!(format!("{e:#}"), format!("{:#}", gave_up(name)), "{what}");
        assert_eq!(k.calls().lost - lost, MAX_RACES as u32, "{what}");
    }
    let text = format!("{:#}", gave_up("x"));
    assert!(!text.contains('\n') && text.contains("lock 'x'") && text.contains("try again"));
    // Nothing was written: x is still held as before, y never was.
    assert_eq!(m.peek("x").map(|i| i.token_id), Some("tok-a".into()));
    assert!(m.peek("y").is_none());
}

#[test]
fn a_write_that_lost_a_race_is_planned_again_from_a_new_read() {
    let (m, h) = (Memory::new(), Holder::default());
    let (mut a, mut b) = (m.handle(), m.handle());
    a.knobs().lose_races(MAX_RACES - 1);
    let Acquire::Acquired(g) = a.acquire(&req("x", "tok-a", &h)).unwrap() else {
        panic!("busy")
    };
    assert_eq!(a.knobs().calls().lost, MAX_RACES as u32 - 1);
    assert!(!g.extended);
    // The other client's view agrees: one holder, the fence granted.
    let info = b.status(Some(&["x".into()])).unwrap();
    assert_eq!((info.len(), info[0].fence), (1, g.fence));
    assert!(matches!(
        b.acquire(&req("x", "tok-b", &h)).unwrap(),
        Acquire::Busy(_)
    ));
}

#[test]
fn a_read_only_step_cannot_lose_a_race() {
    let (m, h) = (Memory::new(), Holder::default());
    let (mut a, mut b) = (m.handle(), m.handle());
    a.acquire(&req("x", "tok-a", &h)).unwrap();
    b.knobs().lose_races(MAX_RACES);
    // Busy, with nothing to write: answered from the read alone.
    assert!(matches!(
        b.acquire(&req("x", "tok-b", &h)).unwrap(),
        Acquire::Busy(_)
    ));
    assert_eq!(b.knobs().calls().lost, 0);
}

#[test]
fn force_reports_the_live_leases_it_removed() {
    let now = 1_000;
    let before = [held("a", 2_000), held("b", 2_000), held("dead", 500)];
    let mut after = State::default();
    after.holders.push(held("b", 2_000));
    assert_eq!(gone(&before, &after, now), vec![("a".to_string(), 2_000)]);
    assert!(gone(&before, &State::default(), 3_000).is_empty());
}

#[test]
fn a_refusal_names_who_broke_the_lease() {
    let by = || Some("me@vm (pid 1)".to_string());
    assert!(matches!(
        with_breaker(Check::NotHeld, by()),
        Check::Broken(Broken { now: None, .. })
    ));
    assert!(matches!(with_breaker(Check::Done, by()), Check::Done));
    assert!(matches!(with_breaker(Check::NotHeld, None), Check::NotHeld));
}

#[test]
fn a_wake_up_is_passed_on_once_a_refresh_per_ticket_but_at_once_to_another() {
    let mut p = PassOn::default();
    assert!(p.pass(7), "the first pass-on goes");
    assert!(
        !p.may(7) && !p.pass(7),
        "the same ticket again within a refresh: damped"
    );
    assert!(p.pass(8), "the next hand-off's ticket is not held back");
}
