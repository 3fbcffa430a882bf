//! The guard: a process that stops the command's group when dlock cannot.
//! It acts when dlock dies (even by SIGKILL), and when the lease deadline
//! passes while dlock's threads are not running: dlock stopped (SIGSTOP,
//! Ctrl-Z), stuck in a system call, or deadlocked. A separate process keeps
//! running in all of these cases; only a pause of the whole host stops it too.
//!
//! It is started with `clone(CLONE_VM)` on a small stack of its own rather
//! than forked: sharing dlock's memory means no page tables to copy and no
//! copy-on-write faults afterwards, which made a fork cost about 0.75 ms of
//! CPU per job. Sharing is also how it learns the deadline: the keeper
//! publishes every move of `stop_by` in a [`Deadline`] word. It never
//! returns, allocates nothing and makes only system calls issued directly
//! ([`sys`]): it also shares the errno of the thread that started it, which
//! libc's wrappers would write when a call fails (`kill` of a group that has
//! just gone) while dlock still runs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// The lease deadline as the guard sees it: when the lost signal must go out
/// (the keeper's `stop_by`) in CLOCK_MONOTONIC nanoseconds, 0 while there is
/// none, plus [`SENT`] once the lost signal has gone out, from dlock or from
/// the guard, whichever marked it first (so the command gets it once).
pub struct Deadline(AtomicU64);

const SENT: u64 = 1 << 63;

impl Deadline {
    /// Publishes a later deadline after a renewal; false if the lost signal
    /// already went out, and the lease must be treated as lost.
    pub fn extend(&self, to: Instant) -> bool {
        let new = mono_ns(to);
        let mut w = self.0.load(SeqCst);
        loop {
            if w & SENT != 0 {
                return false;
            }
            match self.0.compare_exchange(w, new, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// dlock sends the lost signal: true unless the guard already has.
    pub fn claim(&self) -> bool {
        self.0.fetch_or(SENT, SeqCst) & SENT == 0
    }

    /// Whether the lost signal has gone out (from either side).
    pub fn sent(&self) -> bool {
        self.0.load(SeqCst) & SENT != 0
    }
}

/// `t` on CLOCK_MONOTONIC in ns: std's Instant reads that clock on Linux,
/// but keeps its value private, so both are sampled once and offset.
fn mono_ns(t: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(base, ns) = BASE.get_or_init(|| (Instant::now(), sys::monotonic_ns()));
    match t.checked_duration_since(base) {
        Some(d) => ns + d.as_nanos() as u64,
        None => ns.saturating_sub((base - t).as_nanos() as u64).max(1),
    }
}

/// System calls without libc's wrappers, which set errno on failure.
mod sys {
    /// # Safety
    /// SAFETY: `a` must be valid arguments for system call `nr`: pointers
    /// into live memory of the sizes that call reads or writes.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(nr: libc::c_long, a: [usize; 4]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes arguments valid for system call `nr`.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// # Safety
    /// SAFETY: as for x86_64: arguments valid for system call `nr`.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(nr: libc::c_long, a: [usize; 4]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes arguments valid for system call `nr`.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3],
                options(nostack),
            );
        }
        ret
    }

    /// Elsewhere libc's generic wrapper, which may write errno on failure.
    ///
    /// # Safety
    /// SAFETY: as for x86_64: arguments valid for system call `nr`.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn call(nr: libc::c_long, a: [usize; 4]) -> isize {
        // SAFETY: the caller passes arguments valid for system call `nr`.
        unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) as isize }
    }

    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only `ts`.
        unsafe {
            call(
                libc::SYS_clock_gettime,
                [libc::CLOCK_MONOTONIC as usize, (&raw mut ts) as usize, 0, 0],
            )
        };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    pub fn kill_group(pgid: i32, sig: i32) {
        // SAFETY: kill takes no pointers.
        unsafe {
            call(
                libc::SYS_kill,
                [pgid.wrapping_neg() as usize, sig as usize, 0, 0],
            )
        };
    }

    /// Waits up to `ns` (forever for u64::MAX) for `fd` to become readable
    /// (no fd: `fd` < 0); true if it did.
    pub fn wait_readable(fd: i32, ns: u64) -> bool {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as _, // libc deprecates the name time_t on musl
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = if ns == u64::MAX {
            0
        } else {
            (&raw const ts) as usize
        };
        // SAFETY: ppoll reads `p` and `ts` and writes `p.revents`; no signal mask.
        let n = unsafe {
            call(
                libc::SYS_ppoll,
                [(&raw mut p) as usize, usize::from(fd >= 0), timeout, 0],
            )
        };
        n > 0
    }

    /// Reads into `buf`; the count, or 0 at end of file or on error.
    pub fn read(fd: i32, buf: &mut [u8]) -> usize {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            call(
                libc::SYS_read,
                [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0],
            )
        };
        n.max(0) as usize
    }

    pub fn close_range(first: i32, last: u32) {
        // SAFETY: closes descriptors only.
        unsafe { call(libc::SYS_close_range, [first as usize, last as usize, 0, 0]) };
    }

    pub fn exit() -> ! {
        loop {
            // SAFETY: ends this process (not dlock: the guard is a process of its own).
            unsafe { call(libc::SYS_exit_group, [0; 4]) };
        }
    }
}

/// What the guard needs, in memory it shares with dlock (leaked on purpose:
/// the guard may outlive dlock).
struct Args {
    read_fd: i32,
    kill_after_ns: u64,
    /// Waited past the deadline before the guard acts in dlock's place: dlock
    /// sends the lost signal at the deadline when it runs, and marks it sent.
    slack_ns: u64,
    on_lost: i32,
    deadline: Deadline,
}

const STACK: usize = 64 * 1024;

extern "C" fn guard_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked Args, never freed.
    let a = unsafe { &*(arg as *const Args) };
    let r = a.read_fd;
    // Keep only the pipe: no copy of dlock's backend connection or terminal.
    if r > 0 {
        sys::close_range(0, (r - 1) as u32);
    }
    sys::close_range(r + 1, u32::MAX);
    let mut pgid = [0u8; 4];
    let mut got = 0usize;
    while got < 4 {
        let n = sys::read(r, &mut pgid[got..]);
        if n == 0 {
            sys::exit(); // dlock went away before starting the command
        }
        got += n;
    }
    watch(a, i32::from_ne_bytes(pgid))
}

/// Watches dlock and the deadline until the command's group has been killed.
/// Integer arithmetic saturates: a panic here would run dlock's panic
/// machinery in a process that only borrows dlock's memory.
fn watch(a: &Args, pgid: i32) -> ! {
    const NONE: u64 = u64::MAX;
    let (ka, slack) = (a.kill_after_ns, a.slack_ns);
    let mut kill_at = NONE;
    let mut dead = false;
    let mut mourned = false;
    loop {
        let now = sys::monotonic_ns();
        let w = a.deadline.0.load(SeqCst);
        let due = w & !SENT;
        // SIGKILL when dlock's would go out, a margin before the lease expires:
        // when the guard sends the lost signal, the grace period is cut by the slack.
        let hard = if due == 0 {
            NONE
        } else {
            due.saturating_add(ka)
        };
        if dead && !mourned {
            // dlock is gone (its command got SIGKILL from the kernel): stop the rest.
            mourned = true;
            sys::kill_group(pgid, libc::SIGTERM);
            sys::kill_group(pgid, libc::SIGCONT);
            kill_at = kill_at.min(now.saturating_add(ka)).min(hard);
        } else if kill_at == NONE && w & SENT != 0 {
            // dlock sent the lost signal; SIGKILL in case it cannot follow up.
            kill_at = hard;
        } else if kill_at == NONE && due != 0 && now >= due.saturating_add(slack) {
            // The deadline passed and dlock has not acted: it is not running.
            if a.deadline
                .0
                .compare_exchange(w, w | SENT, SeqCst, SeqCst)
                .is_err()
            {
                continue; // renewed or marked meanwhile
            }
            sys::kill_group(pgid, a.on_lost);
            sys::kill_group(pgid, libc::SIGCONT);
            kill_at = hard;
        }
        if now >= kill_at {
            sys::kill_group(pgid, libc::SIGKILL);
            sys::exit();
        }
        let wake = if kill_at != NONE {
            kill_at
        } else if due != 0 {
            due.saturating_add(slack)
        } else {
            NONE
        };
        let left = if wake == NONE {
            NONE
        } else {
            wake.saturating_sub(now)
        };
        // The pipe's only writer is dlock: readable (at end of file) once it has died.
        if sys::wait_readable(if dead { -1 } else { a.read_fd }, left) {
            dead = true;
        }
    }
}

/// The running guard, as dlock sees it.
pub struct Guard {
    pub pid: Pid,
    /// The pipe's write end: the command writes its process group there.
    pub write_fd: OwnedFd,
    /// Where the keeper publishes the deadline for the guard.
    pub deadline: &'static Deadline,
    /// Set once dlock has reaped it (it ended by itself): its pid may be
    /// another process's by then, so it is neither signalled nor waited for.
    pub reaped: bool,
    dismissed: bool,
}

impl Guard {
    pub fn start(kill_after: Duration, slack: Duration, on_lost: Signal) -> Option<Guard> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
        // Used only as the guard's stack, and kept: the guard may outlive dlock.
        let stack = crate::spawn::map_stack(STACK).ok()?;
        let args: &'static Args = Box::leak(Box::new(Args {
            read_fd: r.as_raw_fd(),
            kill_after_ns: kill_after.as_nanos() as u64,
            slack_ns: slack.as_nanos() as u64,
            on_lost: on_lost as i32,
            deadline: Deadline(AtomicU64::new(0)),
        }));
        // Not nix's clone: it passes the closure by a pointer into this
        // function's frame, which the guard would read after it has returned.
        // SAFETY: the stack grows down from the end of its mapping, which is
        // never unmapped; guard_main never returns and touches only `args`
        // (leaked) and its own stack. Without CLONE_FILES the guard has its
        // own copy of the descriptor table, so closing `r` here is no harm.
        let pid = unsafe {
            libc::clone(
                guard_main,
                stack.cast::<u8>().add(STACK).cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                (args as *const Args).cast_mut().cast(),
            )
        };
        drop(r);
        (pid != -1).then(|| Guard {
            pid: Pid::from_raw(pid),
            write_fd: w,
            deadline: &args.deadline,
            reaped: false,
            dismissed: false,
        })
    }

    /// The job is over: the guard must not act any more. It dies of SIGKILL
    /// as soon as the scheduler runs it, and is reaped when dropped.
    pub fn dismiss(&mut self) {
        if !self.reaped && !self.dismissed {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        }
        self.dismissed = true;
    }
}

/// Reaps the guard, so that it is not left behind for dlock's parent (or
/// PID 1) once dlock exits. Kept until then (after the release) rather than
/// waited for at once: on a loaded host the killed guard may wait
/// milliseconds for a CPU to die on. The signal thread may have reaped it
/// meanwhile (then this wait finds no such child).
impl Drop for Guard {
    fn drop(&mut self) {
        self.dismiss();
        if !self.reaped {
            while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
        }
    }
}
