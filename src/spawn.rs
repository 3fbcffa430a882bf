//! Starting the command without copying dlock: `clone(CLONE_VM | CLONE_VFORK)`
//! runs the child on a small stack of its own in dlock's memory until it
//! execs, as `posix_spawn` does, instead of `fork`, which copies the page
//! tables of the whole process and then pays copy-on-write faults on both
//! sides (about a third of a millisecond per job here). `posix_spawn` itself
//! cannot set the parent-death signal, which dlock needs.
//!
//! Everything the child touches is prepared beforehand: it allocates nothing
//! (other dlock threads keep running and may hold the allocator's locks) and
//! makes only system calls. The calling thread is suspended until the child
//! has exec'd or exited.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::ptr;

const STACK: usize = 64 * 1024;

/// What the child needs; every pointer points into this struct's vectors.
struct Plan {
    /// Paths to try in order, as execvp does for a name without a slash.
    paths: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// `/bin/sh PATH ARGS…` for a file without a `#!` line (ENOEXEC), as
    /// execvp does; slot 1 is filled in by the child.
    sh_argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    tty: i32,
    /// Where to write the new process group's id before exec (the guard's pipe), or -1.
    guard: i32,
    parent: libc::pid_t,
    /// The child's errno when no exec succeeded, read by the parent afterwards.
    error: i32,
}

/// Starts `argv` with `env` added to dlock's environment, in a new process
/// group of its own, which takes the terminal `tty` when given. The child
/// dies with dlock (SIGKILL as parent-death signal) and starts with an empty
/// signal mask and default SIGPIPE. When `guard` is given, the child writes
/// its process group id there before it execs: a guard that learnt it only
/// from dlock after the spawn would miss a dlock killed in between.
pub fn spawn(
    argv: &[OsString],
    env: &[(String, String)],
    tty: Option<i32>,
    guard: Option<i32>,
) -> io::Result<i32> {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let args: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    let vars: Vec<CString> = merged_env(env)
        .into_iter()
        .map(|kv| CString::new(kv.into_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let paths = candidates(&argv[0], std::env::var_os("PATH").as_deref())
        .iter()
        .map(|p| cstr(p))
        .collect::<io::Result<Vec<_>>>()?;
    let sh = c"/bin/sh";
    let nul = || ptr::null::<libc::c_char>();
    let mut plan = Plan {
        argv: args.iter().map(|a| a.as_ptr()).chain([nul()]).collect(),
        sh_argv: [sh.as_ptr(), nul()]
            .into_iter()
            .chain(args[1..].iter().map(|a| a.as_ptr()))
            .chain([nul()])
            .collect(),
        envp: vars.iter().map(|v| v.as_ptr()).chain([nul()]).collect(),
        paths,
        tty: tty.unwrap_or(-1),
        guard: guard.unwrap_or(-1),
        parent: nix::unistd::getpid().as_raw(),
        error: 0,
    };
    // Unmapped once the child no longer runs in dlock's memory.
    let stack = map_stack(STACK)?;
    // SAFETY: the child runs child_main on its own stack and only reads
    // `plan` (and writes `plan.error`, `plan.sh_argv[1]`) while this thread
    // is suspended by CLONE_VFORK.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut plan as *mut Plan).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: no child runs on this stack any more (it has exec'd or exited,
    // as CLONE_VFORK waits for), and nothing else refers to the mapping.
    unsafe { libc::munmap(stack, STACK) };
    if pid == -1 {
        return Err(clone_error);
    }
    if plan.error != 0 {
        // The child has exited without exec'ing; reap it here so the
        // supervisor never mistakes it for the command.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(plan.error));
    }
    Ok(pid)
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's Plan, alive while the parent is suspended;
    // only system calls follow.
    unsafe {
        let plan = &mut *(arg as *mut Plan);
        let errno = || *libc::__errno_location();
        if libc::setpgid(0, 0) != 0 {
            plan.error = errno();
            libc::_exit(127);
        }
        if plan.guard >= 0 {
            let pgid = libc::getpid().to_ne_bytes();
            libc::write(plan.guard, pgid.as_ptr().cast(), pgid.len());
        }
        if plan.tty >= 0 {
            // SIGTTOU is still blocked here, so a background group may take the terminal.
            libc::tcsetpgrp(plan.tty, libc::getpid());
        }
        // If dlock dies, so does the command (the guard then stops the rest of its group).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != plan.parent {
            libc::_exit(129);
        }
        // Rust ignores SIGPIPE; the command expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        // As execvp: the first path that execs wins; EACCES is reported if
        // any candidate had it, else the last error.
        let mut error = libc::ENOENT;
        let mut denied = false;
        for path in &plan.paths {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            match errno() {
                libc::ENOEXEC => {
                    plan.sh_argv[1] = path.as_ptr();
                    libc::execve(plan.sh_argv[0], plan.sh_argv.as_ptr(), plan.envp.as_ptr());
                    error = errno();
                    break;
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                e => {
                    error = e;
                    break;
                }
            }
        }
        plan.error = if denied && error == libc::ENOENT {
            libc::EACCES
        } else {
            error
        };
        libc::_exit(127)
    }
}

/// A fresh anonymous mapping of `len` bytes for a cloned process to run on;
/// the stack grows down from `stack + len`.
pub fn map_stack(len: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: a new private mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(stack)
}

/// dlock's environment with `env` set on top, as `KEY=VALUE` strings.
fn merged_env(env: &[(String, String)]) -> Vec<OsString> {
    let mut out: Vec<OsString> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(n, _)| OsStr::new(n) == k))
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    out.extend(env.iter().map(|(k, v)| OsString::from(format!("{k}={v}"))));
    out
}

/// The files execvp would try for `program`: itself when it has a slash,
/// else `program` in each PATH directory (an empty entry is the current one).
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Vec<OsString> {
    let bytes = program.as_bytes();
    if bytes.contains(&b'/') {
        return vec![program.to_owned()];
    }
    if bytes.is_empty() {
        return Vec::new();
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut p = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            p.push(b'/');
            p.extend_from_slice(bytes);
            OsString::from_vec(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path_like_execvp() {
        let c = |p: &str, path: Option<&str>| {
            candidates(OsStr::new(p), path.map(OsStr::new))
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(c("./x", Some("/bin")), ["./x"]);
        assert_eq!(c("/usr/bin/env", None), ["/usr/bin/env"]);
        assert_eq!(c("ls", Some("/a::/b")), ["/a/ls", "./ls", "/b/ls"]);
        assert_eq!(c("ls", None), ["/bin/ls", "/usr/bin/ls"]);
        assert!(c("", Some("/bin")).is_empty());
    }

    #[test]
    fn environment_overrides_replace_inherited_values() {
        let env = merged_env(&[("PATH".into(), "/nowhere".into())]);
        let hits: Vec<_> = env
            .iter()
            .filter(|kv| kv.as_bytes().starts_with(b"PATH="))
            .collect();
        assert_eq!(hits, [&OsString::from("PATH=/nowhere")]);
    }
}
