//! The wake-up bells of the SQLite backend (see the parent module), and what
//! happens when a file mapped in memory can no longer be written.

use std::fs::{File, OpenOptions, Permissions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::UNAVAILABLE;
use crate::output;

/// A 32-bit counter in a file mapped shared between processes, with a futex
/// on it: futexes on shared file mappings work across processes.
pub struct Bell {
    ptr: std::ptr::NonNull<AtomicU32>,
    /// Device and inode of the mapped file.
    pub id: super::place::FileId,
    /// False for another user's file that we may only read: we can wait on
    /// it but not ring it.
    writable: bool,
}

// SAFETY: the mapping is owned by the Bell and only accessed atomically.
unsafe impl Send for Bell {}

impl Bell {
    /// Opens an existing bell; with `mode`, gives it those permission bits
    /// if it lacks them and is ours (a database file made shared later).
    pub fn open(path: &Path, mode: Option<u32>) -> std::io::Result<Bell> {
        let (file, writable) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => (f, true),
            // Another user's file that we may only read: enough to wait on.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                (File::open(path)?, false)
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if let Some(mode) = mode.filter(|&m| writable && meta.mode() & 0o666 != m) {
            let _ = file.set_permissions(Permissions::from_mode(mode));
        }
        if meta.len() < 4 {
            // A bell being created right now by another process.
            if !writable {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            // Only ever grown: shrinking a mapped file would fault its users.
            allocate(&file)?;
        }
        Bell::map(&file, writable)
    }

    /// Creates the bell with `mode` (whatever the umask), or opens it if
    /// another process just did.
    pub fn create(path: &Path, mode: u32) -> std::io::Result<Bell> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Bell::open(path, Some(mode))
            }
            Err(e) => return Err(e),
        };
        let _ = file.set_permissions(Permissions::from_mode(mode));
        allocate(&file)?;
        Bell::map(&file, true)
    }

    fn map(file: &File, writable: bool) -> std::io::Result<Bell> {
        let meta = file.metadata()?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps 4 bytes of a file at least 4 bytes long; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bell {
            ptr: std::ptr::NonNull::new(p.cast()).expect("mmap never returns null here"),
            id: (meta.dev(), meta.ino()),
            writable,
        })
    }

    fn counter(&self) -> &AtomicU32 {
        // SAFETY: a live, 4-byte-aligned (page-aligned) mapping.
        unsafe { self.ptr.as_ref() }
    }

    pub fn value(&self) -> u32 {
        self.counter().load(Ordering::SeqCst)
    }

    /// Bumps the counter and wakes one sleeper, if any; returns how many
    /// woke. One is enough (see the module comment), and waking all of
    /// them had each run an attempt that could only find the lock taken.
    pub fn ring(&self) -> i64 {
        self.bump(1)
    }

    /// Bumps the counter and wakes every sleeper (a break's listeners).
    pub fn ring_all(&self) {
        self.bump(i32::MAX);
    }

    fn bump(&self, sleepers: i32) -> i64 {
        if !self.writable {
            return 0;
        }
        self.counter().fetch_add(1, Ordering::SeqCst);
        // SAFETY: FUTEX_WAKE on our mapping; no other memory is touched.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ptr.as_ptr(),
                libc::FUTEX_WAKE,
                sleepers,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0,
            )
        }
    }

    /// Sleeps while the counter still reads `seen`, at most `timeout`.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as _, // libc deprecates the name time_t on musl
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT only reads our mapping; returns at once if it no longer reads `seen`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ptr.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0,
            );
        }
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what open mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), 4) };
    }
}

/// Gives a bell file its 4 bytes on disk, not as a hole: a write through the
/// mapping into a hole on a full filesystem would kill the process with
/// SIGBUS, where this fails with ENOSPC. Existing bytes are kept.
fn allocate(file: &File) -> std::io::Result<()> {
    nix::fcntl::posix_fallocate(file, 0, 4).map_err(std::io::Error::from)
}

/// The line printed when a mapped file faults, built before any fault.
static BUS_MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_bus_error(_: libc::c_int) {
    if let Some(m) = BUS_MESSAGE.get() {
        // SAFETY: write(2) is async-signal-safe; the buffer lives for the whole process.
        unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
    }
    // SAFETY: _exit is async-signal-safe; nothing can be unwound from a fault.
    unsafe { libc::_exit(UNAVAILABLE) };
}

/// A write through a shared mapping to a file made immutable (`chattr +i`)
/// after it was mapped, or that its filesystem can no longer store, raises
/// SIGBUS, which nothing can recover from. SQLite writes its `-shm` file that
/// way in every transaction; bells are only rung through a mapping made just
/// before, of a file opened for writing and allocated on disk, so in practice
/// it is the `-shm` file. Instead of dying without a word (exit 135), print
/// one line naming it and exit 69; an `exec` command dies with dlock, as
/// after any death of dlock.
pub fn report_bus_errors(db: &Path) {
    let msg = format!(
        "error: could not write SQLite file {}-shm through its memory mapping (made immutable \
         with chattr +i, or its filesystem turned read-only or full): make it writable again \
         (chattr -i) or use another --url; dlock stopped, and any command it ran was killed",
        db.display()
    );
    let mut line = output::error_line(&msg).into_bytes();
    line.push(b'\n');
    if BUS_MESSAGE.set(line).is_ok() {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_bus_error),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only calls async-signal-safe functions.
        let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGBUS, &action) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Instant;

    #[test]
    fn bells_wake_sleepers_and_remember_rings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let a = Bell::create(&path, 0o600).unwrap();
        let b = Bell::open(&path, None).unwrap();
        // A ring between reading the value and waiting is not lost.
        let seen = b.value();
        a.ring();
        let t = Instant::now();
        b.wait(seen, Duration::from_secs(20));
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_ne!(b.value(), seen);

        let seen = b.value();
        let sleeper = std::thread::spawn(move || {
            let t = Instant::now();
            b.wait(seen, Duration::from_secs(20));
            t.elapsed()
        });
        a.ring();
        assert!(sleeper.join().unwrap() < Duration::from_secs(10));

        let t = Instant::now();
        a.wait(a.value(), Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "a quiet bell times out"
        );
    }

    /// How many threads sleep on `bell`, without waking them: a requeue onto
    /// the same futex counts the sleepers it moves. Only while nobody rings.
    fn sleepers(bell: &Bell) -> i64 {
        // SAFETY: FUTEX_CMP_REQUEUE from our mapping onto itself: wakes none.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                bell.ptr.as_ptr(),
                libc::FUTEX_CMP_REQUEUE,
                0,
                i32::MAX as usize,
                bell.ptr.as_ptr(),
                bell.value(),
            )
        }
    }

    #[test]
    fn a_ring_wakes_one_sleeper_and_the_next_ring_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let ringer = Bell::create(&path, 0o600).unwrap();
        let seen = ringer.value();
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (tx, b) = (tx.clone(), Bell::open(&path, None).unwrap());
                std::thread::spawn(move || {
                    b.wait(seen, Duration::from_secs(60));
                    tx.send(i).unwrap();
                })
            })
            .collect();
        // Both asleep in the kernel (each through its own mapping), so a
        // wake-all would wake both.
        while sleepers(&ringer) < 2 {
            std::thread::yield_now();
        }
        assert_eq!(ringer.ring(), 1, "one release, one sleeper woken");
        let first = rx.recv().unwrap();
        assert_eq!(sleepers(&ringer), 1, "the other sleeps on");
        assert!(rx.try_recv().is_err());
        assert_eq!(ringer.ring(), 1);
        assert_ne!(rx.recv().unwrap(), first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ringer.ring(), 0, "nobody left to wake");
    }

    #[test]
    fn another_users_bell_is_waited_on_but_never_rung() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let owner = Bell::create(&path, 0o600).unwrap();
        let file = File::open(&path).unwrap();
        let reader = Bell::map(&file, false).unwrap();
        let seen = reader.value();
        // A read-only mapping would fault on the increment.
        assert_eq!(reader.ring(), 0);
        assert_eq!(owner.value(), seen);
        owner.ring();
        reader.wait(seen, Duration::from_secs(20));
        assert_ne!(reader.value(), seen);
    }
}
