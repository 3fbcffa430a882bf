//! The smallest executor the ZooKeeper client needs, so that dlock links no
//! async runtime: the client spawns one task per session (its I/O loop),
//! which gets an OS thread of its own; every request is awaited with
//! `block_on` on the caller's thread. Nothing here runs unless a zk:// URL
//! is used.
//!
//! The crate closes a session (and so deletes its ephemeral nodes) on that
//! task after the last `Client` is dropped; a process that returns from
//! `main` first never sends the close. [`Tasks::finish`] waits for it.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use spawns_core::{Spawn, Task};

/// The session threads of one connection, counted so that closing can wait for them.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<usize>,
    done: Condvar,
}

impl Tasks {
    /// Runs `connect` (or anything else that may spawn the client's tasks)
    /// with this set as the spawner.
    pub fn enter<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> T {
        let spawner = Spawner(Arc::clone(self));
        let _scope = spawns_core::enter(&spawner);
        f()
    }

    /// Waits until every task has ended (the session's close was answered
    /// or gave up), at most `timeout`; true if they all did.
    pub fn finish(&self, timeout: Duration) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (running, _) = self
            .done
            .wait_timeout_while(running, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *running == 0
    }
}

struct Spawner(Arc<Tasks>);

impl Spawn for Spawner {
    fn spawn(&self, task: Task) {
        let tasks = Arc::clone(&self.0);
        *tasks.running.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let run = move || {
            // Tasks that the task spawns in turn go the same way.
            let spawner = Spawner(Arc::clone(&tasks));
            let scope = spawns_core::enter(&spawner);
            async_io::block_on(Box::into_pin(task.future));
            drop(scope);
            *tasks.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            tasks.done.notify_all();
        };
        let started = std::thread::Builder::new()
            .name("zookeeper".into())
            .stack_size(512 * 1024)
            .spawn(run);
        if started.is_err() {
            // The task is lost with the closure; its requests fail as a closed client's.
            *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        }
    }
}

/// Awaits `fut` on this thread for at most `timeout`; None when it did not finish.
pub fn within<T>(timeout: Duration, fut: impl Future<Output = T>) -> Option<T> {
    async_io::block_on(futures_lite::future::or(async { Some(fut.await) }, async {
        async_io::Timer::after(timeout).await;
        None
    }))
}

/// Awaits `fut` until `deadline`; None when it passed first.
pub fn until<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    within(deadline.saturating_duration_since(Instant::now()), fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_own_threads_and_are_counted() {
        let tasks = Arc::new(Tasks::default());
        let (tx, rx) = std::sync::mpsc::channel();
        tasks.enter(|| {
            spawns_core::spawn(async move {
                let _ = tx.send(std::thread::current().name().map(String::from));
            })
        });
        let name = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("zookeeper"));
        assert!(tasks.finish(Duration::from_secs(5)));
    }

    #[test]
    fn within_gives_up_at_the_timeout() {
        let start = Instant::now();
        let r = within(Duration::from_millis(30), std::future::pending::<()>());
        assert!(r.is_none() && start.elapsed() >= Duration::from_millis(30));
        assert_eq!(within(Duration::from_secs(1), async { 7 }), Some(7));
    }
}
