//! Taking a lease (with waiting) and keeping it (the renewal thread).
//!
//! Safety rests on one local, monotonic deadline: a renewal sent at `t` and
//! confirmed gives the server-side lease until at least `t + lease`, because
//! the server starts the TTL only after it receives the request. The command
//! must be dead before then, so the lost signal goes out at
//! `t + lease - margin - kill_after` and SIGKILL at `t + lease - margin`.
//! The keeper publishes that deadline to the guard process (src/guard.rs),
//! which enforces it when dlock's own threads do not run (stopped or stuck).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::backend::{Acquire, Backend, Request, Waiter};
use crate::cli::Wait;
use crate::error::{fail, USAGE};
use crate::output::{self, Level};
use crate::signals;
use serde_json::json;

mod keeper;
pub(crate) mod retry;
pub use keeper::Keeper;
use retry::Trouble;

/// Shortest lease accepted: below this, scheduling noise eats the margins.
pub const MIN_LEASE: Duration = Duration::from_millis(500);
/// Longest default grace period between the lost signal and SIGKILL.
pub const MAX_DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

/// The renewal schedule derived from a lease.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    /// Renew this often: a third of the lease, so two attempts fit before the deadline.
    pub period: Duration,
    /// Kept back from the lease for scheduling delay and clock-rate differences: a tenth of it.
    pub margin: Duration,
    /// Between the lost signal and SIGKILL.
    pub kill_after: Duration,
}

impl Timing {
    pub fn new(lease: Duration, kill_after: Option<Duration>) -> Result<Timing> {
        if lease < MIN_LEASE {
            return Err(fail(
                USAGE,
                format!(
                    "--lease {} is too short for exec: use at least {}",
                    crate::duration::format(lease),
                    crate::duration::format(MIN_LEASE)
                ),
            ));
        }
        let margin = lease / 10;
        let kill_after = kill_after.unwrap_or_else(|| (lease / 5).min(MAX_DEFAULT_KILL_AFTER));
        // Keep at least half the lease for renewing, or a single slow renewal loses the lock.
        if kill_after + margin > lease / 2 {
            return Err(fail(
                USAGE,
                format!(
                    "--kill-after {} leaves too little of the {} lease for renewals: \
                     use a --kill-after of at most {} or a longer --lease",
                    crate::duration::format(kill_after),
                    crate::duration::format(lease),
                    crate::duration::format(round_ms(lease / 2 - margin)),
                ),
            ));
        }
        Ok(Timing {
            lease,
            period: lease / 3,
            margin,
            kill_after,
        })
    }

    /// The schedule for the lease the backend granted, which may differ from
    /// the one asked for: every part scales with it, and the grace period
    /// shrinks if it must, so that the deadline stays inside what was granted.
    pub fn granted(self, lease: Duration) -> Timing {
        if lease == self.lease {
            return self;
        }
        let margin = lease / 10;
        Timing {
            lease,
            period: lease / 3,
            margin,
            kill_after: self.kill_after.min((lease / 2).saturating_sub(margin)),
        }
    }

    /// When the lost signal must go out if nothing renewed after a request sent at `sent`.
    pub fn stop_by(&self, sent: Instant) -> Instant {
        sent + self.lease - self.margin - self.kill_after
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The result of trying to take a lock within `--wait`.
pub enum Taken {
    /// Held, with the instant the successful request was sent.
    Held(crate::backend::Grant, Instant),
    Busy(Option<crate::backend::LockInfo>),
}

/// Tries, subscribes to releases, tries again (closing the lost-wake-up
/// window, unless the backend keeps wake-ups for late waiters), then retries
/// on each release notification or when the holder's lease runs out, until
/// `wait` is over. Never polls at a fixed interval.
///
/// A failed request (the server restarts, refuses a connection, or answers
/// too late) does not end a wait: dlock backs off and tries again with the
/// same token until `wait` runs out, so an acquire that the server applied
/// but whose reply was lost is found again as ours. With no wait left it
/// fails, after releasing what such an acquire may have taken.
pub fn acquire(
    backend: &mut dyn Backend,
    req: &Request,
    wait: Wait,
    timeout: Duration,
) -> Result<Taken> {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => None,
    };
    if let Some(r) = backend.acquire_waiting(req, deadline) {
        return match r? {
            (Acquire::Acquired(g), sent) => Ok(Taken::Held(g, sent)),
            (Acquire::Busy(i) | Acquire::Queued(i), _) => Ok(Taken::Busy(i)),
        };
    }
    let mut waiter: Option<Box<dyn Waiter>> = None;
    let mut trouble = Trouble::new(timeout);
    loop {
        let sent = Instant::now();
        let (result, pending) = signals::in_flight(|| backend.acquire(req));
        if let Some(sig) = pending {
            let taken = match &result {
                Ok(Acquire::Acquired(g)) => !g.extended,
                Ok(Acquire::Busy(_) | Acquire::Queued(_)) => false,
                Err(e) => !crate::error::unsent(e),
            };
            trouble.unsure |= taken;
            trouble.give_up(backend, req);
            std::process::exit(signals::exit_code(sig));
        }
        let busy = match result {
            Ok(Acquire::Acquired(g)) => return Ok(Taken::Held(trouble.grant(g), sent)),
            Ok(Acquire::Busy(info)) => {
                trouble.recovered(req.name);
                info
            }
            Ok(Acquire::Queued(info)) => {
                trouble.recovered(req.name);
                trouble.queued = true;
                info
            }
            Err(e) => {
                trouble.unsure |= !crate::error::unsent(&e);
                trouble.failed(backend, req, e, deadline)?;
                continue;
            }
        };
        let now = Instant::now();
        let left = match deadline {
            Some(d) if d <= now => {
                trouble.give_up(backend, req);
                return Ok(Taken::Busy(busy));
            }
            Some(d) => d - now,
            None => Duration::from_secs(3600),
        };
        let w = match &mut waiter {
            Some(w) => w,
            None => {
                output::event(
                    Level::Debug,
                    "waiting",
                    Some(req.name),
                    &format!("lock '{}' is busy; waiting", req.name),
                    json!({ "holder": busy.as_ref().map(|b| &b.holder) }),
                );
                match backend.waiter(req.name) {
                    Ok(w) if w.keeps_wakeups() => waiter.insert(w),
                    Ok(w) => {
                        waiter = Some(w);
                        continue;
                    }
                    Err(e) => {
                        trouble.failed(backend, req, e, deadline)?;
                        continue;
                    }
                }
            }
        };
        // Wake when the holder's lease would run out, even if no release is announced.
        let mut ttl = busy
            .as_ref()
            .map(|b| b.ttl + Duration::from_millis(1))
            .unwrap_or(left);
        if trouble.queued {
            // Come back before the place in the queue lapses.
            ttl = ttl.min(crate::backend::kinds::TICKET_REFRESH);
        }
        if let Err(e) = w.wait(left.min(ttl)) {
            trouble.failed(backend, req, e, deadline)?;
        }
    }
}

#[cfg(test)]
mod tests {
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
}
