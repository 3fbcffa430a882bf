use super::*;
use crate::backend::memory::{Memory, MemoryBackend};
use crate::backend::{kinds, Check, Kind};
use crate::error::{code_of, UNAVAILABLE};
use crate::holder::Holder;

const LONG: Duration = Duration::from_secs(60);
/// Far below any lease the tests wait out: a wake-up that took this long was not one.
const PROMPT: Duration = Duration::from_secs(2);

fn req<'a>(token: &'a str, lease: Duration, h: &'a Holder) -> Request<'a> {
    Request {
        name: "job",
        token,
        lease,
        holder: h,
        kind: crate::backend::Kind::MUTEX,
    }
}

fn held(t: Result<Taken>) -> crate::backend::Grant {
    match t.unwrap() {
        Taken::Held(g, _) => g,
        Taken::Busy(i) => panic!("busy: {i:?}"),
    }
}

/// Takes "job" for `token` at once (no waiting) and returns the grant.
fn take(b: &mut MemoryBackend, token: &str, lease: Duration) -> crate::backend::Grant {
    let h = Holder::default();
    held(acquire(
        b,
        &req(token, lease, &h),
        Wait::For(Duration::ZERO),
        PROMPT,
    ))
}

/// Acquires "job" with `b` on a thread, which is blocked waiting when this returns.
fn wait_in_thread(
    m: &Memory,
    mut b: MemoryBackend,
    wait: Wait,
) -> std::thread::JoinHandle<(Result<Taken>, Instant)> {
    let t = std::thread::spawn(move || {
        let h = Holder::default();
        let r = acquire(&mut b, &req("waiter", LONG, &h), wait, PROMPT);
        (r, Instant::now())
    });
    assert!(m.await_waiters("job", 1, PROMPT), "the waiter never waited");
    t
}

#[test]
fn acquire_takes_a_free_lock_and_wait_0_is_busy_at_once() {
    let (m, h) = (Memory::new(), Holder::default());
    let g = take(&mut m.handle(), "a", LONG);
    assert!(!g.extended);
    let mut b = m.handle();
    let t = Instant::now();
    match acquire(
        &mut b,
        &req("b", LONG, &h),
        Wait::For(Duration::ZERO),
        PROMPT,
    )
    .unwrap()
    {
        Taken::Busy(Some(i)) => assert_eq!((i.token_id.as_str(), i.fence), ("a", g.fence)),
        _ => panic!("not busy"),
    }
    assert!(t.elapsed() < PROMPT);
    assert_eq!(b.knobs().calls().waiter, 0, "wait 0 subscribed to releases");
}

#[test]
fn a_waiter_wakes_on_release_not_at_the_holders_ttl() {
    let m = Memory::new();
    let mut a = m.handle();
    take(&mut a, "a", LONG);
    let waiter = wait_in_thread(&m, m.handle(), Wait::Forever);
    let released = Instant::now();
    assert!(matches!(a.release("job", "a").unwrap(), Check::Done));
    let (r, at) = waiter.join().unwrap();
    held(r);
    assert!(
        at - released < PROMPT,
        "woke {:?} after the release",
        at - released
    );
    assert_eq!(m.peek("job").unwrap().token_id, "waiter");
}

#[test]
fn a_waiter_takes_the_lock_when_the_holders_lease_runs_out() {
    let m = Memory::new();
    let lease = Duration::from_millis(100);
    let taken = Instant::now();
    take(&mut m.handle(), "a", lease);
    let waiter = wait_in_thread(&m, m.handle(), Wait::For(LONG));
    let (r, at) = waiter.join().unwrap();
    held(r);
    // Never released: taken once the lease ran out, soon after.
    assert!(
        at - taken >= lease && at - taken < lease + PROMPT,
        "{:?}",
        at - taken
    );
}

#[test]
fn a_failure_while_waiting_is_retried() {
    let m = Memory::new();
    let mut a = m.handle();
    take(&mut a, "a", LONG);
    let b = m.handle();
    let k = b.knobs();
    // Through: a try, the subscription, the try after it; then two failures.
    k.fail_after(3, 2);
    let waiter = wait_in_thread(&m, b, Wait::For(LONG));
    a.release("job", "a").unwrap();
    let (r, _) = waiter.join().unwrap();
    held(r);
    let c = k.calls();
    assert_eq!((c.acquire, c.waiter, c.failed), (5, 1, 2), "{c:?}");
}

#[test]
fn a_failure_with_wait_0_is_returned_and_cleaned_up() {
    let (m, h) = (Memory::new(), Holder::default());
    let mut b = m.handle();
    let k = b.knobs();
    // The acquire takes the lock but its reply is lost.
    k.lose_replies(true);
    k.fail_next(1);
    let e = acquire(
        &mut b,
        &req("b", LONG, &h),
        Wait::For(Duration::ZERO),
        PROMPT,
    )
    .err()
    .expect("the failure was not returned");
    assert_eq!(code_of(&e), UNAVAILABLE, "{e:#}");
    let c = k.calls();
    assert_eq!((c.failed, c.reconnect, c.release), (1, 1, 1), "{c:?}");
    assert!(
        m.peek("job").is_none(),
        "the unanswered acquire's lock was left behind"
    );
}

fn with_kind<'a>(token: &'a str, kind: Kind, h: &'a Holder) -> Request<'a> {
    Request {
        kind,
        ..req(token, LONG, h)
    }
}

#[test]
fn a_freed_semaphore_slot_wakes_a_waiter_into_that_slot() {
    let (m, h) = (Memory::new(), Holder::default());
    let sem = Kind {
        slots: 2,
        ..Kind::MUTEX
    };
    let mut a = m.handle();
    for t in ["a", "b"] {
        held(acquire(
            &mut a,
            &with_kind(t, sem, &h),
            Wait::For(Duration::ZERO),
            PROMPT,
        ));
    }
    let mut c = m.handle();
    let waiter = std::thread::spawn(move || {
        let h = Holder::default();
        acquire(&mut c, &with_kind("c", sem, &h), Wait::For(LONG), PROMPT)
    });
    assert!(m.await_waiters("job", 1, PROMPT), "the waiter never waited");
    a.release("job", "a").unwrap();
    let g = held(waiter.join().unwrap());
    assert_eq!(g.slot, Some(0), "the freed slot");
}

#[test]
fn a_queued_waiter_refreshes_its_place_while_it_waits() {
    let m = Memory::new();
    let mut a = m.handle();
    take(&mut a, "a", LONG);
    let fair = Kind {
        fair: true,
        ..Kind::MUTEX
    };
    let mut f = m.handle();
    let fk = f.knobs();
    let fairw = std::thread::spawn(move || {
        let h = Holder::default();
        acquire(&mut f, &with_kind("f", fair, &h), Wait::For(LONG), PROMPT)
    });
    let queued = |m: &Memory| m.peek("job").map_or(0, |i| i.queued);
    fk.await_calls(PROMPT, |c| c.acquire >= 2);
    assert_eq!(queued(&m), 1);
    // Most of the ticket's life passes; the waiter's next try renews it.
    for _ in 0..2 {
        m.advance(kinds::TICKET_TTL - Duration::from_millis(500));
        let before = fk.calls().acquire;
        fk.await_calls(PROMPT, |c| c.acquire > before);
    }
    assert_eq!(queued(&m), 1, "the live waiter's ticket lapsed");
    a.release("job", "a").unwrap();
    held(fairw.join().unwrap());
    assert_eq!(m.peek("job").unwrap().token_id, "f");
}

#[test]
fn a_backend_that_owns_its_wait_gets_the_whole_wait() {
    let m = Memory::new();
    let mut a = m.handle();
    take(&mut a, "a", LONG);
    let b = m.handle();
    let k = b.knobs();
    k.own_wait(true);
    let waiter = wait_in_thread(&m, b, Wait::For(LONG));
    a.release("job", "a").unwrap();
    let (r, at) = waiter.join().unwrap();
    let (g, sent) = match r.unwrap() {
        Taken::Held(g, sent) => (g, sent),
        Taken::Busy(i) => panic!("busy: {i:?}"),
    };
    assert!(!g.extended && sent <= at);
    assert_eq!(
        k.calls().own_waits,
        1,
        "the core did not hand the wait over"
    );
}

/// The backend's own wait fails like any request: the core backs off and
/// hands it the wait again, rather than ending the wait with the error.
#[test]
fn a_backend_that_owns_its_wait_has_its_failures_retried_by_the_core() {
    let m = Memory::new();
    let mut b = m.handle();
    let k = b.knobs();
    k.own_wait(true);
    k.fail_next(2);
    let h = Holder::default();
    let g = held(acquire(
        &mut b,
        &req("b", LONG, &h),
        Wait::For(LONG),
        PROMPT,
    ));
    assert!(!g.extended);
    assert_eq!(
        k.calls().own_waits,
        3,
        "not every try went to the backend's wait"
    );
}

#[test]
fn a_mismatched_kind_fails_at_once_whatever_the_wait() {
    let (m, h) = (Memory::new(), Holder::default());
    let sem = |n| Kind {
        slots: n,
        ..Kind::MUTEX
    };
    held(acquire(
        &mut m.handle(),
        &with_kind("a", sem(3), &h),
        Wait::For(Duration::ZERO),
        PROMPT,
    ));
    let t = Instant::now();
    let e = acquire(
        &mut m.handle(),
        &with_kind("b", sem(5), &h),
        Wait::For(LONG),
        PROMPT,
    )
    .err()
    .expect("a 5-slot request on a 3-slot semaphore was not refused");
    assert_eq!(code_of(&e), USAGE, "{e:#}");
    assert!(t.elapsed() < PROMPT, "it waited {:?}", t.elapsed());
}

#[test]
fn a_queued_waiter_that_gives_up_leaves_the_queue_at_once() {
    let (m, h) = (Memory::new(), Holder::default());
    take(&mut m.handle(), "a", LONG);
    let fair = Kind {
        fair: true,
        ..Kind::MUTEX
    };
    let r = acquire(
        &mut m.handle(),
        &with_kind("f", fair, &h),
        Wait::For(Duration::from_millis(50)),
        PROMPT,
    );
    assert!(matches!(r.unwrap(), Taken::Busy(_)));
    assert_eq!(
        m.peek("job").unwrap().queued,
        0,
        "the ticket outlived the wait"
    );
}

#[test]
fn timing_leaves_room_to_renew_and_kill() {
    let t = Timing::new(Duration::from_secs(30), None).unwrap();
    assert_eq!(t.period, Duration::from_secs(10));
    assert_eq!(t.kill_after, Duration::from_secs(5));
    assert_eq!(t.margin, Duration::from_secs(3));
    let now = Instant::now();
    // SIGKILL goes out a margin before the server-side expiry.
    assert_eq!(t.stop_by(now) + t.kill_after + t.margin, now + t.lease);

    let short = Timing::new(Duration::from_secs(1), None).unwrap();
    assert_eq!(short.kill_after, Duration::from_millis(200));
    assert!(short.stop_by(now) > now + short.period);

    assert!(Timing::new(Duration::from_millis(100), None).is_err());
    assert!(Timing::new(Duration::from_secs(10), Some(Duration::from_secs(5))).is_err());
    Timing::new(Duration::from_secs(10), Some(Duration::from_secs(4))).unwrap();
}

#[test]
fn a_granted_lease_drives_the_schedule() {
    let asked = Timing::new(Duration::from_secs(30), None).unwrap();
    assert_eq!(asked.granted(asked.lease).lease, asked.lease);
    // Less than asked (a quorum's validity): the deadline moves in.
    let less = asked.granted(Duration::from_secs(6));
    assert_eq!(
        (less.period, less.margin),
        (Duration::from_secs(2), Duration::from_millis(600))
    );
    assert_eq!(less.kill_after, Duration::from_millis(2400));
    let now = Instant::now();
    assert!(less.stop_by(now) + less.kill_after + less.margin <= now + less.lease);
    // More (a server that rounds up): the schedule follows, the grace stays.
    let more = asked.granted(Duration::from_secs(60));
    assert_eq!(
        (more.period, more.kill_after),
        (Duration::from_secs(20), asked.kill_after)
    );
}
