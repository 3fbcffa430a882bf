//! What runs before dlock's own work: the duties of std's `main` wrapper
//! that dlock keeps where it starts without that wrapper (main.rs), and
//! warming what the first request would otherwise wait for.

/// Fills std's cache of CPU features, which the first search for a byte
/// (the Redis client's reply parser, through `memchr`) would otherwise fill on
/// the main thread: about ten CPUID instructions, each a trap to the
/// hypervisor on a virtual machine (7 µs apiece on the 2-core test VM). A
/// race with the main thread only repeats the same reads.
pub fn warm_cpu_features() {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let _ = std::arch::is_x86_feature_detected!("avx2");
}

/// Runs `run` in an executable started without std's `main` wrapper
/// (main.rs), after doing what dlock needs of that wrapper: descriptors 0-2
/// open, on /dev/null where they were closed (so that no socket becomes
/// stdout); SIGPIPE ignored, so that a write to a closed pipe fails with
/// EPIPE; and exit status 101 after a panic.
pub fn without_std_main(run: fn() -> !) -> ! {
    open_standard_fds();
    // SAFETY: SIG_IGN installs no handler code; no other thread runs yet.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let _ = std::panic::catch_unwind(|| -> () { run() });
    std::process::exit(101)
}

/// Puts /dev/null on whichever of descriptors 0-2 is closed.
fn open_standard_fds() {
    use std::os::fd::IntoRawFd;
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags; it touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // Takes the lowest free descriptor: `fd`, as the lower ones are open.
            let null = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
            // Kept open for the life of the process.
            let _ = null.map(IntoRawFd::into_raw_fd);
        }
    }
}
