//! The dlock executable; everything it does is in the library (`dlock::main`).
//!
//! With glibc it starts without std's `main` wrapper: on every run that
//! wrapper reads /proc/self/maps to locate the main thread's stack guard and
//! maps an alternate signal stack for each thread, about 75 µs of an `exec`
//! that takes 3 ms (docs/build.md). What dlock needs of it is done by
//! `dlock::start`. Elsewhere std's wrapper stays: on musl, std learns the
//! arguments only from it.
#![cfg_attr(all(target_os = "linux", target_env = "gnu"), no_main)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
// SAFETY: this is the C entry point, which libc's start-up calls once; no
// other object in the executable defines `main`.
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    dlock::start()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    dlock::main()
}
