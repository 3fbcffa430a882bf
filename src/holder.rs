//! Who holds a lock: recorded with every acquisition so that `status` can tell
//! an operator which host, process and command to look at.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub user: String,
    pub command: String,
}

/// Longest command line recorded; status rows stay readable.
const MAX_COMMAND: usize = 200;

impl Holder {
    /// Describes process `pid` running `command` on this host as this user.
    pub fn new(pid: u32, command: String) -> Holder {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        Holder {
            host,
            pid,
            user,
            command: truncate(&command),
        }
    }

    /// The process that ran `dlock acquire`: the lease belongs to that script,
    /// not to the short-lived dlock process.
    pub fn parent_process() -> Holder {
        Holder::process(nix::unistd::getppid().as_raw() as u32)
    }

    /// Process `pid` on this host, with its command line from /proc.
    pub fn process(pid: u32) -> Holder {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Holder::new(pid, cmd)
    }
}

fn truncate(s: &str) -> String {
    // Control characters would break one-line output.
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX_COMMAND {
        clean
    } else {
        let mut t: String = clean.chars().take(MAX_COMMAND - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_one_short_line() {
        let h = Holder::new(1, format!("a\nb {}", "x".repeat(500)));
        assert!(!h.command.contains('\n'));
        assert_eq!(h.command.chars().count(), MAX_COMMAND);
        assert!(!h.host.is_empty() && !h.user.is_empty());
    }
}
