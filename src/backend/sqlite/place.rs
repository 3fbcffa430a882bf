//! Which file a `sqlite://` URL (or no URL) names, and how to tell later
//! whether that path still names the same file.

use std::fs::DirBuilder;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::{fail, UNAVAILABLE, USAGE};

/// The database file that what follows `sqlite://` names (or no URL),
/// made absolute.
pub fn resolve(rest: Option<&str>) -> Result<PathBuf> {
    let rest = rest.unwrap_or("");
    if rest.contains('?') || rest.contains('#') {
        return Err(fail(
            USAGE,
            "sqlite URLs take no parameters: use sqlite:///path/to/locks.db (write '?' as %3F)",
        ));
    }
    if rest.is_empty() {
        return default_path();
    }
    let p = PathBuf::from(std::ffi::OsString::from_vec(percent_decode(rest)));
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| {
        fail(
            USAGE,
            format!("cannot resolve the relative path in the sqlite URL: {e}"),
        )
    })?;
    Ok(cwd.join(p))
}

/// Refuses a file whose directory does not exist: dlock makes only the
/// default file's directory, so that a mistyped path is not created.
pub fn check_dir(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.is_dir() => Err(fail(
            UNAVAILABLE,
            format!(
                "cannot use SQLite file {}: directory {} does not exist (dlock creates \
                 only the default file's directory; create it, or fix the path)",
                path.display(),
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if let (b'%', Some(Some(hi)), Some(Some(lo))) = (
            b[i],
            b.get(i + 1).map(|&c| hex(c)),
            b.get(i + 2).map(|&c| hex(c)),
        ) {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The default file, the same for every process of the effective user
/// whatever its environment (cron, systemd, `env -i`, a login shell): under
/// the home directory that the password database gives, if that exists,
/// else in a private directory in /tmp. `HOME` and `XDG_STATE_HOME` are
/// ignored on purpose, and a missing home directory is never created.
fn default_path() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    let mut tried = Vec::new();
    let home = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|h| h.is_absolute() && h.is_dir());
    if let Some(home) = home {
        let dir = home.join(".local/state/dlock");
        // One stat in the usual case instead of mkdir, EEXIST and a stat.
        if dir.is_dir() {
            return Ok(dir.join("locks.db"));
        }
        match DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir.join("locks.db")),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    let dir = PathBuf::from(format!("/tmp/dlock-{uid}"));
    let _ = DirBuilder::new().mode(0o700).create(&dir);
    // /tmp is shared: use the directory only if it is really ours and private.
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == uid.as_raw() && m.mode() & 0o022 == 0 => {
            Ok(dir.join("locks.db"))
        }
        Ok(_) => Err(fail(
            UNAVAILABLE,
            format!(
                "{} is not a private directory of this user; remove it or give a --url",
                dir.display()
            ),
        )),
        Err(e) => {
            tried.push(format!("{}: {e}", dir.display()));
            Err(fail(
                UNAVAILABLE,
                format!(
                    "no place for the default lock file ({}); give a --url",
                    tried.join("; ")
                ),
            ))
        }
    }
}

/// Device and inode: which file a path named.
pub type FileId = (u64, u64);

/// Which file `path` names right now, if any.
pub fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_files() {
        assert_eq!(
            resolve(Some("/var/lib/dlock/locks.db")).unwrap(),
            PathBuf::from("/var/lib/dlock/locks.db")
        );
        assert_eq!(
            resolve(Some("/a%20b/x%3Fy.db")).unwrap(),
            PathBuf::from("/a b/x?y.db")
        );
        let rel = resolve(Some("locks/here.db")).unwrap();
        assert!(
            rel.is_absolute() && rel.ends_with("locks/here.db"),
            "{rel:?}"
        );
        assert!(resolve(Some("/x.db?mode=ro")).is_err());
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }
}
