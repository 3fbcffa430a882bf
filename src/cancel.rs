//! A request to stop waiting, from whoever owns the wait (the signal
//! thread, for `lease::acquire`) to the code that blocks: a backend's wait
//! returns to its caller when it fires, and the caller cleans up and exits.
//! Backends never handle signals or end the process themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[derive(Default)]
pub struct Cancel {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    fired: bool,
    /// Tasks awaiting [`Cancel::fired`].
    wakers: Vec<Waker>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every wait on this to return now (and any later one at once).
    pub fn fire(&self) {
        let wakers = {
            let mut s = self.state();
            s.fired = true;
            std::mem::take(&mut s.wakers)
        };
        self.changed.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.state().fired
    }

    /// Sleeps for `d`, or less if it fires meanwhile; true when it fired.
    pub fn sleep(&self, d: Duration) -> bool {
        let s = self.state();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, d, |s| !s.fired)
            .unwrap_or_else(|e| e.into_inner());
        s.fired
    }

    /// Completes when it fires: for a `select!` beside an async wait.
    pub fn fired(&self) -> Fired<'_> {
        Fired(self)
    }
}

pub struct Fired<'a>(&'a Cancel);

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.state();
        if s.fired {
            return Poll::Ready(());
        }
        if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            s.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_sleep_ends_when_it_fires() {
        let c = Arc::new(Cancel::new());
        assert!(!c.sleep(Duration::from_millis(1)));
        let other = Arc::clone(&c);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.fire();
        });
        let start = Instant::now();
        assert!(c.sleep(Duration::from_secs(30)));
        assert!(start.elapsed() < Duration::from_secs(10));
        t.join().unwrap();
        assert!(c.is_fired() && c.sleep(Duration::from_secs(30)));
    }

    // Only the backends on tokio (etcd, PostgreSQL) wait asynchronously.
    #[cfg(any(feature = "etcd", feature = "postgres"))]
    #[test]
    fn an_async_wait_ends_when_it_fires() {
        let c = Arc::new(Cancel::new());
        let other = Arc::clone(&c);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.fire();
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let won = rt.block_on(async {
            tokio::select! {
                _ = c.fired() => true,
                _ = tokio::time::sleep(Duration::from_secs(30)) => false,
            }
        });
        assert!(won);
        t.join().unwrap();
    }
}
