use super::*;

const NOW: i64 = 1_000_000_000;

fn req<'a>(token: &'a str, kind: Kind, h: &'a Holder) -> Request<'a> {
    Request {
        name: "n",
        token,
        lease: Duration::from_secs(1),
        holder: h,
        kind,
    }
}

fn kind(mode: Mode, slots: u32, fair: bool) -> Kind {
    Kind { mode, slots, fair }
}

const SHARED: Kind = Kind {
    mode: Mode::Shared,
    slots: 1,
    fair: false,
};

fn sem(n: u32) -> Kind {
    kind(Mode::Exclusive, n, false)
}

fn take(st: &mut State, now: i64, token: &str, k: Kind) -> Acquire {
    let h = Holder::default();
    plan_acquire(now, st, &req(token, k, &h)).unwrap().0
}

fn got(a: &Acquire) -> &Grant {
    match a {
        Acquire::Acquired(g) => g,
        other => panic!("not acquired: {other:?}"),
    }
}

#[test]
fn a_semaphore_takes_n_holders_with_distinct_slots_and_rising_fences() {
    let mut st = State::default();
    let mut fences = Vec::new();
    let mut slots = Vec::new();
    for t in ["a", "b", "c"] {
        let a = take(&mut st, NOW, t, sem(3));
        fences.push(got(&a).fence);
        slots.push(got(&a).slot.unwrap());
    }
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    assert_eq!(slots, vec![0, 1, 2]);
    assert!(matches!(take(&mut st, NOW, "d", sem(3)), Acquire::Busy(_)));
    // A freed slot is the one the next holder gets.
    assert!(matches!(
        plan_release(NOW, &mut st, "n", "b").0,
        Check::Done
    ));
    let a = take(&mut st, NOW, "d", sem(3));
    assert_eq!(got(&a).slot, Some(1));
    assert!(got(&a).fence > fences[2]);
}

#[test]
fn readers_share_and_a_writer_excludes_them() {
    let mut st = State::default();
    for t in ["r1", "r2", "r3", "r4"] {
        got(&take(&mut st, NOW, t, SHARED));
    }
    // The writer queues behind readers, and later readers queue behind it.
    assert!(matches!(
        take(&mut st, NOW, "w", Kind::MUTEX),
        Acquire::Queued(_)
    ));
    assert!(matches!(take(&mut st, NOW, "r5", SHARED), Acquire::Busy(_)));
    for t in ["r1", "r2", "r3"] {
        plan_release(NOW, &mut st, "n", t);
        assert!(matches!(
            take(&mut st, NOW, "w", Kind::MUTEX),
            Acquire::Queued(_)
        ));
    }
    plan_release(NOW, &mut st, "n", "r4");
    got(&take(&mut st, NOW, "w", Kind::MUTEX));
    assert!(
        st.queue.is_empty(),
        "the writer's ticket went with its grant"
    );
    assert!(matches!(take(&mut st, NOW, "r5", SHARED), Acquire::Busy(_)));
}

#[test]
fn fair_waiters_go_in_arrival_order_and_newcomers_do_not_barge() {
    let mut st = State::default();
    let fair = kind(Mode::Exclusive, 1, true);
    got(&take(&mut st, NOW, "h", Kind::MUTEX));
    for t in ["w1", "w2", "w3"] {
        assert!(matches!(take(&mut st, NOW, t, fair), Acquire::Queued(_)));
    }
    plan_release(NOW, &mut st, "n", "h");
    // Neither a later waiter nor a plain newcomer gets in ahead of w1.
    assert!(matches!(take(&mut st, NOW, "w2", fair), Acquire::Queued(_)));
    assert!(matches!(
        take(&mut st, NOW, "x", Kind::MUTEX),
        Acquire::Busy(_)
    ));
    got(&take(&mut st, NOW, "w1", fair));
    plan_release(NOW, &mut st, "n", "w1");
    got(&take(&mut st, NOW, "w2", fair));
}

#[test]
fn a_dead_waiters_ticket_lapses_and_the_next_goes() {
    let mut st = State::default();
    let fair = kind(Mode::Exclusive, 1, true);
    got(&take(&mut st, NOW, "h", Kind::MUTEX));
    take(&mut st, NOW, "dead", fair);
    take(&mut st, NOW, "live", fair);
    plan_release(NOW, &mut st, "n", "h");
    assert!(matches!(
        take(&mut st, NOW, "live", fair),
        Acquire::Queued(_)
    ));
    let later = NOW + lease_us(TICKET_TTL) + 1;
    // "live" refreshed its ticket at NOW; refresh again just before it lapses.
    let (a, fx) = {
        let h = Holder::default();
        plan_acquire(later - 2, &mut st, &req("live", fair, &h)).unwrap()
    };
    assert!(matches!(a, Acquire::Queued(_)) && fx.write);
    got(&take(&mut st, later, "live", fair));
}

#[test]
fn a_queued_try_out_of_turn_writes_only_to_refresh_an_older_ticket() {
    let mut st = State::default();
    let fair = kind(Mode::Exclusive, 1, true);
    let h = Holder::default();
    let try_at = |st: &mut State, now: i64, token: &str| {
        let (a, fx) = plan_acquire(now, st, &req(token, fair, &h)).unwrap();
        assert!(matches!(a, Acquire::Queued(_)), "{a:?}");
        fx.write
    };
    got(&take(&mut st, NOW, "h", Kind::MUTEX));
    assert!(try_at(&mut st, NOW, "w1"), "a new ticket is written");
    assert!(try_at(&mut st, NOW, "w2"), "a new ticket is written");
    // A wake-up that was not w2's turn: nothing to write, so no write that
    // makes the next in line's compare-and-set lose or wakes its watchers.
    let soon = NOW + lease_us(TICKET_REFRESH) / 2 - 1;
    assert!(!try_at(&mut st, soon, "w2"));
    let expiry = |st: &State| {
        st.queue
            .iter()
            .find(|t| t.token == "w2")
            .unwrap()
            .expires_us
    };
    assert_eq!(expiry(&st), NOW + lease_us(TICKET_TTL));
    // Half a refresh period old, it is refreshed, in its place.
    let later = NOW + lease_us(TICKET_REFRESH) / 2;
    assert!(try_at(&mut st, later, "w2"));
    assert_eq!(expiry(&st), later + lease_us(TICKET_TTL));
    assert!(!st.turn_of("w1") && !st.turn_of("w2"), "h holds the lock");
    plan_release(later, &mut st, "n", "h");
    assert!(st.turn_of("w1") && !st.turn_of("w2") && !st.turn_of("h"));
    got(&take(&mut st, later, "w1", fair));
    assert!(!st.turn_of("w2"), "w1 holds the lock now");
    plan_release(later, &mut st, "n", "w1");
    assert!(st.turn_of("w2"));
}

#[test]
fn a_semaphore_with_free_slots_serves_earlier_tickets_first() {
    let mut st = State::default();
    let fair = kind(Mode::Exclusive, 2, true);
    got(&take(&mut st, NOW, "a", fair));
    got(&take(&mut st, NOW, "b", fair));
    take(&mut st, NOW, "q1", fair);
    take(&mut st, NOW, "q2", fair);
    plan_release(NOW, &mut st, "n", "a");
    assert!(matches!(take(&mut st, NOW, "q2", fair), Acquire::Queued(_)));
    plan_release(NOW, &mut st, "n", "b");
    // Two free slots, one ticket ahead: q2 may go alongside q1.
    got(&take(&mut st, NOW, "q2", fair));
    got(&take(&mut st, NOW, "q1", fair));
}

#[test]
fn mismatched_kinds_are_usage_errors_naming_the_lock() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "a", sem(3)));
    let h = Holder::default();
    for (k, says) in [
        (sem(5), "asks for --slots 5"),
        (SHARED, "asks for a shared lock"),
        (Kind::MUTEX, "asks for an exclusive lock"),
    ] {
        let e = plan_acquire(NOW, &mut st, &req("b", k, &h)).unwrap_err();
        let msg = e.to_string();
        assert_eq!(crate::error::code_of(&e), USAGE);
        assert!(
            msg.contains("lock 'n' is held as a 3-slot semaphore (1 of 3 slots taken)")
                && msg.contains(says),
            "{msg}"
        );
    }
    // The holder itself may extend whatever it asks.
    got(&take(&mut st, NOW, "a", sem(3)));
}

#[test]
fn renew_and_release_are_per_holder() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "a", sem(2)));
    got(&take(&mut st, NOW, "b", sem(2)));
    let (c, fx) = plan_renew(NOW + 10, &mut st, "n", "a", Duration::from_secs(5));
    assert!(matches!(c, Check::Done) && fx.write);
    assert_eq!(st.holders[0].expires_us, NOW + 10 + 5_000_000);
    assert_eq!(st.holders[1].expires_us, NOW + 1_000_000);
    // A token that holds no slot of a semaphore is "not held", not "another holds it".
    assert!(matches!(
        plan_release(NOW, &mut st, "n", "x").0,
        Check::NotHeld
    ));
    assert!(matches!(
        plan_release(NOW, &mut st, "n", "a").0,
        Check::Done
    ));
    assert_eq!(st.infos("n", NOW).len(), 1);
    // Expired stays lost.
    let late = NOW + 2_000_000;
    assert!(matches!(
        plan_renew(late, &mut st, "n", "b", Duration::from_secs(1)).0,
        Check::NotHeld
    ));
}

#[test]
fn a_mutex_held_by_another_token_is_reported_as_such() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "a", Kind::MUTEX));
    assert!(matches!(
        plan_release(NOW, &mut st, "n", "b").0,
        Check::HeldByOther(_)
    ));
}

#[test]
fn force_breaks_all_or_one_by_token_id() {
    let mut st = State::default();
    let toks = ["aaaaaaaa11", "bbbbbbbb22", "cccccccc33"];
    for t in toks {
        got(&take(&mut st, NOW, t, sem(3)));
    }
    let id = token_id(toks[1]);
    let (one, fx) = plan_force(NOW, &mut st, "n", Some(&id));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].token_id, id);
    assert!(fx.write && fx.wake);
    let (none, fx) = plan_force(NOW, &mut st, "n", Some("nomatch"));
    assert!(none.is_empty() && !fx.write);
    let (rest, _) = plan_force(NOW, &mut st, "n", None);
    assert_eq!(rest.len(), 2);
    assert!(st.holders.is_empty() && st.fence > 0, "the fence stays");
}

#[test]
fn release_of_a_queued_token_drops_its_ticket() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "h", Kind::MUTEX));
    take(&mut st, NOW, "w", kind(Mode::Exclusive, 1, true));
    assert_eq!(st.queued(NOW), 1);
    let (c, fx) = plan_release(NOW, &mut st, "n", "w");
    assert!(matches!(c, Check::NotHeld) && fx.write, "{c:?}");
    assert_eq!(st.queued(NOW), 0);
    let (c, _) = plan_release(NOW, &mut st, "n", "w");
    assert!(matches!(c, Check::HeldByOther(_)), "no ticket left: {c:?}");
}

#[test]
fn room_after_a_grant_asks_for_one_more_wake_up() {
    let mut st = State::default();
    let h = Holder::default();
    let (_, fx) = plan_acquire(NOW, &mut st, &req("r", SHARED, &h)).unwrap();
    assert!(fx.wake, "more readers may come in");
    let (_, fx) = plan_acquire(NOW, &mut State::default(), &req("m", Kind::MUTEX, &h)).unwrap();
    assert!(!fx.wake, "a mutex leaves no room");
    let mut st = State::default();
    let (_, fx) = plan_acquire(NOW, &mut st, &req("a", sem(2), &h)).unwrap();
    assert!(fx.wake);
    let (_, fx) = plan_acquire(NOW, &mut st, &req("b", sem(2), &h)).unwrap();
    assert!(!fx.wake, "the last slot leaves no room");
}

#[test]
fn state_round_trips_through_json() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "a", sem(3)));
    take(&mut st, NOW, "q", kind(Mode::Exclusive, 3, true));
    let s = serde_json::to_string(&st).unwrap();
    assert_eq!(serde_json::from_str::<State>(&s).unwrap(), st);
    assert_eq!(serde_json::from_str::<State>("{}").unwrap().slots, 1);
}

#[test]
fn a_lone_exclusive_holder_splits_off_and_joins_back() {
    let mut st = State::default();
    got(&take(&mut st, NOW, "m", Kind::MUTEX));
    take(&mut st, NOW, "q", kind(Mode::Exclusive, 1, true));
    let (legacy, rest) = split(st.clone());
    assert_eq!(legacy.as_ref().map(|h| h.token.as_str()), Some("m"));
    assert!(rest.holders.is_empty() && rest.queue.len() == 1 && !rest.is_idle());
    assert_eq!(rest.last_expiry(), NOW + lease_us(TICKET_TTL));
    assert_eq!(join(legacy, rest), st);
    let mut sem2 = State::default();
    got(&take(&mut sem2, NOW, "a", sem(2)));
    let (legacy, rest) = split(sem2.clone());
    assert!(
        legacy.is_none() && rest == sem2,
        "a semaphore holder stays in the rest"
    );
}
