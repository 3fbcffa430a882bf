//! A release of an `exec`'s lock by its own command, on purpose
//! (`dlock release NAME --token "$DLOCK_TOKEN"`). The nested dlock tells the
//! exec before it releases, with one datagram to a socket whose abstract
//! name the exec puts in the command's environment; so when a renewal (or a
//! break notice) then finds the lease gone, the exec knows why and lets the
//! command run on instead of stopping it for a lost lease.
//!
//! The datagram carries the full token, which only the exec and its command
//! know: a socket's name is visible to every local user (/proc/net/unix),
//! the token is not. Sending never blocks: a notice that cannot be sent
//! leaves the old behaviour (the exec treats the lease as lost).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::output::{self, Level};

/// The environment variable that names the exec's socket.
pub const ENV: &str = "DLOCK_EXEC_SOCKET";

/// The exec's side: the socket, and whether its command released the lock.
pub struct OwnRelease {
    sock: Option<(UnixDatagram, String)>,
    token: String,
    seen: AtomicBool,
    told: AtomicBool,
}

impl OwnRelease {
    /// Binds a socket with a random abstract name; without one (no such
    /// socket on this system), a command's release is a lost lease as before.
    pub fn open(token: &str) -> OwnRelease {
        let name = format!("dlock-exec-{}", crate::names::new_token());
        let sock = SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixDatagram::bind_addr(&a))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok()
            .map(|s| (s, name));
        OwnRelease {
            sock,
            token: token.to_string(),
            seen: AtomicBool::new(false),
            told: AtomicBool::new(false),
        }
    }

    /// The variable to put in the command's environment.
    pub fn env(&self) -> Option<(String, String)> {
        self.sock
            .as_ref()
            .map(|(_, name)| (ENV.to_string(), name.clone()))
    }

    /// Whether the command has said it releases the lock (once true, always).
    pub fn seen(&self) -> bool {
        if self.seen.load(Ordering::SeqCst) {
            return true;
        }
        let Some((sock, _)) = &self.sock else {
            return false;
        };
        let mut buf = [0u8; 64];
        // Bounded: a flood from another process cannot keep this loop busy.
        for _ in 0..64 {
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == *self.token.as_bytes() => {
                    self.seen.store(true, Ordering::SeqCst);
                    return true;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        false
    }

    /// Says once that the command released the lock itself.
    pub fn tell(&self, name: &str) {
        if !self.told.swap(true, Ordering::SeqCst) {
            output::event(
                Level::Info,
                "released",
                Some(name),
                &format!("the command released '{name}' itself; it runs on without the lock"),
                json!({ "by_command": true }),
            );
        }
    }
}

/// True when an enclosing `dlock exec` holds `name` (one of its names, with
/// --also) and set DLOCK_TOKEN for it.
pub fn inside_exec_of(name: &str) -> bool {
    let var = |k: &str| std::env::var_os(k);
    var("DLOCK_HELD").is_some_and(|v| v == "1")
        && (var("DLOCK_NAME").is_some_and(|n| n == name)
            || var("DLOCK_NAMES")
                .is_some_and(|all| all.to_string_lossy().lines().any(|n| n == name)))
}

/// The nested dlock's side: before releasing `name` with `token`, tells the
/// enclosing exec if that is its lock and token. Best effort, never blocks.
pub fn announce(name: &str, token: &str) {
    let var = |k: &str| std::env::var(k).ok();
    if !inside_exec_of(name) || var("DLOCK_TOKEN").as_deref() != Some(token) {
        return;
    }
    let Some(sock_name) = var(ENV) else {
        return;
    };
    let sent = SocketAddr::from_abstract_name(sock_name.as_bytes()).and_then(|addr| {
        let s = UnixDatagram::unbound()?;
        s.set_nonblocking(true)?;
        s.send_to_addr(token.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        output::verbose(&format!(
            "could not tell the enclosing exec of '{name}' that its command releases the lock: {e}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_full_token_counts() {
        let own = OwnRelease::open("0123456789abcdef0123456789abcdef");
        let (_, name) = own.env().expect("a socket");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = UnixDatagram::unbound().unwrap();
        assert!(!own.seen(), "nothing sent yet");
        s.send_to_addr(b"0123456789abcdef", &addr).unwrap();
        s.send_to_addr(b"wrong", &addr).unwrap();
        assert!(!own.seen(), "a token id or a wrong token is not the token");
        s.send_to_addr(b"0123456789abcdef0123456789abcdef", &addr)
            .unwrap();
        assert!(own.seen());
        assert!(own.seen(), "it stays seen");
    }
}
