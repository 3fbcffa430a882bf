//! What a Redis holder learns besides its own replies: a break of its lease
//! announced on pub/sub, and whether the server may evict lease keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::link::{Link, Route};
use crate::names::token_id;

use crate::backend::notice;
use crate::output::{self, Level};

/// Listens on `channel` on a connection and thread of its own, and calls
/// `on_break` once when a notice names `token`'s id. Started beside the
/// command, it subscribes only once the command has run a moment
/// (`notice::LAZY`: a short job costs no second connection); once
/// subscribed (also again after a lost connection), it reads the tombstone
/// key, whose name is the channel's, so that a break before the
/// subscription was in place is told at once too (the tombstone names one
/// breaker per lock: when a force breaks several holders of a shared lock
/// or semaphore at once, the others' renewals find them gone). Every broken
/// holder, of any kind, gets a notice.
pub fn listen(
    link: Arc<Link>,
    timeout: Duration,
    channel: String,
    token: String,
    name: String,
    on_break: Box<dyn FnOnce(String) + Send>,
) {
    let heard = move || match wait_for_break(&link, timeout, &channel, &token, &name) {
        Ok(by) => Ok(Some(notice::broken(&name, &by))),
        // Not allowed to subscribe (an ACL without channels): renewals still tell.
        Err(e) if e.code().is_some() => Ok(None),
        Err(e) => Err(e.into()),
    };
    notice::listen_lazily(heard, on_break);
}

/// Subscribes and blocks until a notice for `token`; returns who broke it.
/// Behind Sentinel, each new subscription goes to the primary named then.
fn wait_for_break(
    link: &Link,
    timeout: Duration,
    channel: &str,
    token: &str,
    name: &str,
) -> redis::RedisResult<String> {
    let mut con = link.subscriber()?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    let mut ps = con.as_pubsub();
    ps.subscribe(channel)?;
    crate::backend::notice::listening(name);
    // A break before the subscription published to nobody; its tombstone
    // tells. Unreadable: the next renewal tells instead.
    if let Some(by) = broken_by(link, channel, token) {
        return Ok(by);
    }
    let token_id = token_id(token);
    // Notices come when they come; a dead connection ends in an error.
    ps.set_read_timeout(None)?;
    loop {
        let msg = ps.get_message()?;
        let payload: String = msg.get_payload()?;
        if let Some((id, by)) = payload.split_once('\n') {
            if id == token_id {
                return Ok(by.to_string());
            }
        }
    }
}

/// Who broke `token`'s lease, as the tombstone `key` says, if it does.
fn broken_by(link: &Link, key: &str, token: &str) -> Option<String> {
    let line: Option<String> = link
        .with_con(Route::Key(key), |c| redis::cmd("GET").arg(key).query(c))
        .ok()?;
    let by = line?.strip_prefix(token)?.strip_prefix('\n')?.to_string();
    Some(by)
}

/// Warns once per process when the server's `INFO memory` reply says it may
/// evict keys: an evicted lease lets a second holder in while the first runs.
pub fn warn_if_evicting(info: &Value, shown: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let text = match info {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => return, // refused (INFO not allowed) or absent: nothing to say
    };
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(str::trim)
    };
    let policy = field("maxmemory_policy").unwrap_or("noeviction");
    let limited = field("maxmemory").is_some_and(|m| m != "0");
    if policy == "noeviction" || !limited || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    output::event(
        Level::Error,
        "eviction_risk",
        None,
        &format!("warning: {shown} has maxmemory-policy {policy}: under memory pressure it may evict a lease and let a second holder in; set maxmemory-policy noeviction"),
        serde_json::json!({ "maxmemory_policy": policy }),
    );
}
