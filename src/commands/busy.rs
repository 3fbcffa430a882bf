//! The message for a lock that stays busy: who holds it, or for a semaphore
//! or shared lock how many do.

use serde_json::json;

use super::describe;
use crate::backend::{self, Backend, LockInfo};
use crate::output::{self, Level};

pub(super) fn report_busy(
    b: &mut dyn Backend,
    name: &str,
    info: &Option<LockInfo>,
    waited: crate::cli::Wait,
) {
    // A semaphore or shared lock has several holders; count them, since one
    // of them alone does not say why the lock is busy.
    let taken = info
        .as_ref()
        .filter(|i| i.slots > 1 || i.mode == backend::Mode::Shared)
        .and_then(|_| b.status(Some(&[name.to_string()])).ok())
        .map(|held| held.iter().filter(|l| l.name == name).count());
    output::event(
        Level::Info,
        "busy",
        Some(name),
        &busy_message(name, info, taken, waited),
        json!({ "holder": info.as_ref().map(|i| &i.holder), "holders": taken }),
    );
}

fn busy_message(
    name: &str,
    info: &Option<LockInfo>,
    taken: Option<usize>,
    waited: crate::cli::Wait,
) -> String {
    let (why, hint) = match (info, taken) {
        (Some(i), Some(n)) if i.slots > 1 => {
            let queued = match i.queued {
                0 => String::new(),
                q => format!(", {q} queued"),
            };
            let why = format!("{n} of {} slots taken{queued}", i.slots);
            (why, "use --wait to wait for a slot")
        }
        (Some(i), Some(n)) if n > 1 => (
            format!("held by {n} shared holders, one of them {}", describe(i)),
            "use --wait to wait for it",
        ),
        (Some(i), _) => (
            format!("held by {}", describe(i)),
            "use --wait to wait for it",
        ),
        (None, _) => ("held by another holder".into(), "use --wait to wait for it"),
    };
    match waited {
        crate::cli::Wait::For(d) if !d.is_zero() => format!(
            "lock '{name}' is still busy after waiting {}: {why}",
            crate::duration::format(d)
        ),
        _ => format!("lock '{name}' is busy: {why} ({hint})"),
    }
}
