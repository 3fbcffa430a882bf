//! What the harnesses of servers with a data directory share (MariaDB,
//! PostgreSQL): starting one on a free port, a data directory made once per
//! server version and copied for each server, the end of its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Starts the server `command(port)` runs, on `port` or a free one, and
/// waits until `ready(port)`. A free port may be taken before the server
/// binds it, so a server that exits or is not ready within 60 s is killed
/// and tried again after `settle` (5 tries); then a panic shows the end of
/// its `log`.
pub fn launch(
    what: &str,
    port: Option<u16>,
    log: &Path,
    command: impl Fn(u16) -> Command,
    ready: impl Fn(u16) -> bool,
    settle: Duration,
) -> (Child, u16) {
    for _ in 0..5 {
        let port = port.unwrap_or_else(super::free_port);
        let mut child =
            super::spawn_tied(command(port)).unwrap_or_else(|e| panic!("start {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if ready(port) {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(settle);
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!(
        "{what} did not start; its log ends with:\n{}",
        tail(&log, 20)
    );
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `base/NAME-STAMP`, a directory that `make(work)` fills once per version
/// of `binary` (its size and time tell versions apart) and that every later
/// server (and test process) copies its data from: installing a data
/// directory for each server was slow.
pub fn template(base: &Path, name: &str, binary: &Path, make: impl FnOnce(&Path)) -> PathBuf {
    let meta = std::fs::metadata(binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let stamp = format!(
        "{}-{}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    );
    let done = base.join(format!("{name}-{stamp}"));
    if done.join("ready").exists() {
        return done;
    }
    let work = base.join(format!("{name}-{stamp}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    make(&work);
    std::fs::write(work.join("ready"), "").unwrap();
    // Another test process may have won the race: then use its copy.
    if std::fs::rename(&work, &done).is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    done
}

/// Copies the template's `data` directory to `data`, keeping owners and modes.
pub fn copy_data(template: &Path, data: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(template.join("data"))
        .arg(data)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "copy the data directory of {}: {}",
        template.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
