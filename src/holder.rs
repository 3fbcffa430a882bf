//! Who holds a lock: recorded with every acquisition so that `status` can tell
//! an operator which host, process and command to look at.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
            command: truncate(&scrub_command(&command)),
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

/// Ends a URL authority or a query value inside a shell command line.
fn ends_value(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'\'' | b'"' | b'`' | b'&' | b'#' | b';' | b')')
}

/// Removes passwords from a command line before it is stored, since every
/// host's `status` shows it: the secrets of the URL in use, the password of
/// any `scheme://user:pass@` authority, and `pass=`/`password=` values.
fn scrub_command(cmd: &str) -> String {
    let cmd = crate::output::scrub(cmd);
    let b = cmd.as_bytes();
    // Byte ranges to replace with ***; every delimiter is ASCII, so each
    // range starts and ends on a character boundary.
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while let Some(p) = cmd[i..].find("://").map(|p| p + i) {
        let start = p + 3;
        let end = (start..b.len())
            .find(|&j| ends_value(b[j]) || matches!(b[j], b'/' | b'?'))
            .unwrap_or(b.len());
        let authority = &cmd[start..end];
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                cut.push((start + colon + 1, start + at));
            }
        }
        i = start;
    }
    let lower = cmd.to_ascii_lowercase();
    for key in ["pass=", "password="] {
        for (p, _) in lower.match_indices(key) {
            if p > 0 && (b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_') {
                continue;
            }
            let start = p + key.len();
            let end = (start..b.len())
                .find(|&j| ends_value(b[j]))
                .unwrap_or(b.len());
            cut.push((start, end));
        }
    }
    cut.retain(|(s, e)| e > s);
    cut.sort_unstable();
    let mut out = String::with_capacity(cmd.len());
    let mut at = 0;
    for (s, e) in cut {
        if s >= at {
            out.push_str(&cmd[at..s]);
            out.push_str("***");
            at = e;
        } else if e > at {
            at = e;
        }
    }
    out.push_str(&cmd[at..]);
    out
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

    #[test]
    fn command_lines_lose_their_passwords() {
        for (cmd, want) in [
            (
                "sh -c DLOCK_URL=redis://u:s3cret@db:6379/0 dlock acquire x",
                "sh -c DLOCK_URL=redis://u:***@db:6379/0 dlock acquire x",
            ),
            (
                "x mysql://root:p@ss@db/locks",
                "x mysql://root:***@db/locks",
            ),
            ("x 'https://:tok@h'", "x 'https://:***@h'"),
            (
                "x redis+unix:///s.sock?db=1&pass=s3cret&y=2",
                "x redis+unix:///s.sock?db=1&pass=***&y=2",
            ),
            ("mysql --password=s3cret -e q", "mysql --password=*** -e q"),
            ("x ?PASSWORD=s3cret", "x ?PASSWORD=***"),
            (
                "x http://host:8080/a@b compass=north",
                "x http://host:8080/a@b compass=north",
            ),
            ("é redis://ü:ß@h", "é redis://ü:***@h"),
        ] {
            assert_eq!(scrub_command(cmd), want);
        }
    }
}
