//! Redis backend: one string per lease with a millisecond TTL, changed only
//! by Lua scripts so that every check-and-set is atomic on the server.
//!
//! Keys for lock NAME under prefix P (the hash tag keeps them in one cluster slot):
//!   P:{NAME}:lease  string "token\nfence\nacquired_us\nhost\npid\nuser\nname\ncommand"
//!                   (the command last: it is the only field that may hold a newline)
//!   P:{NAME}:fence  last fence handed out (outlives the lease, with a day's TTL)
//!   P:{NAME}:wake   sorted set with at most one member, the baton: release adds
//!                   it, a waiter takes it with BZPOPMIN
//!
//! Waking one waiter per release, not all: Redis hands a pushed baton to the
//! client that has been blocked longest, and a baton added while nobody waits
//! stays (until the lease time passes) for the next one, so no release is
//! missed between a waiter's attempt and its BZPOPMIN. A waiter that is killed
//! between taking the baton and trying leaves the others asleep until the
//! holder's TTL, when they wake anyway.
//!
//! Scripts keep their calls few, since each one is a server operation:
//! a busy attempt is GET + PTTL, an acquisition GET + TIME + INCR + SET, a
//! release GET + DEL + ZADD + PEXPIRE.

use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use redis::{Client, Connection, IntoConnectionInfo, Script, Value};

use super::{Acquire, Backend, Check, Config, Grant, LockInfo, Request, Waiter};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use crate::holder::Holder;
use crate::names::token_id;

/// Shared by the scripts: does lease value `v` belong to token `t`?
const OWNS: &str = r"
local function owns(v, t) return v and string.sub(v, 1, #t + 1) == t .. '\n' end
";

/// Fences count up from the last one handed out. When that counter is gone
/// (a day unused, or the server lost its data) it restarts at the server time
/// in µs, which is past every earlier fence because the clock has moved on.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  if owns(cur, ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    local t = redis.call('TIME')
    return {1, string.match(cur, '^[^\n]*\n([^\n]*)'), t[1] .. string.format('%06d', tonumber(t[2])), 1}
  end
  return {0, redis.call('PTTL', KEYS[1]), cur}
end
local t = redis.call('TIME')
local nows = t[1] .. string.format('%06d', tonumber(t[2]))
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  fence = nows
  redis.call('SET', KEYS[2], fence, 'PX', 86400000)
end
local fs = fence
if type(fence) == 'number' then fs = string.format('%.0f', fence) end
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. fs .. '\n' .. nows .. '\n' .. ARGV[3], 'PX', ARGV[2])
return {1, fs, nows, 0}
";

/// Extends only a lease the token still holds: an expired lease stays lost.
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if cur then return {2, redis.call('PTTL', KEYS[1]), cur} end
return {0}
";

/// Frees the lease and leaves the baton for the longest-waiting waiter.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[2], 0, 'released')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1}
end
if cur then return {2, redis.call('PTTL', KEYS[1]), cur} end
return {0}
";

const FORCE_RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 0, 'released')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {1, ttl, cur}
";

/// How long a baton left by a release waits for a waiter to take it.
const BATON_TTL_MS: &str = "60000";

pub struct RedisBackend {
    link: Arc<Link>,
    prefix: String,
}

/// The one connection of a process, shared by the backend and its waiter:
/// a waiter blocks in BZPOPMIN only between attempts, never during one.
struct Link {
    client: Client,
    con: Mutex<Option<Connection>>,
    timeout: Mutex<Duration>,
    /// The URL without its password, for messages.
    shown: String,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{OWNS}{body}"))
}

// Hashed (SHA-1) on first use: a process runs two or three of the four.
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ACQUIRE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RENEW));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RELEASE));
static FORCE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FORCE_RELEASE));

/// The key of `what` ("lease", "fence", "wake") for lock `name`: the name is
/// the hash tag, so a lock's keys share a cluster slot.
fn key(prefix: &str, name: &str, what: &str) -> String {
    format!("{prefix}:{{{name}}}:{what}")
}

impl RedisBackend {
    pub fn open(url: &str, cfg: &Config) -> Result<RedisBackend> {
        if url.starts_with("rediss://") {
            // rustls needs a process-wide crypto provider; ring builds with no system libraries.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let shown = super::redact(url);
        let bad_url = |e: redis::RedisError| {
            fail(
                crate::error::USAGE,
                format!("invalid Redis URL '{shown}': {e}; expected redis://[user:pass@]host[:port][/db], rediss://… or redis+unix:///path?db=N"),
            )
        };
        let info = url.into_connection_info().map_err(bad_url)?;
        // Skip the CLIENT SETINFO pair the driver pipelines on every connection:
        // two server operations per dlock process for no use to a lock.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let client = Client::open(info.set_redis_settings(settings)).map_err(bad_url)?;
        let link = Link {
            client,
            con: Mutex::new(None),
            timeout: Mutex::new(cfg.timeout),
            shown,
        };
        link.with_con(|_| Ok(()))?;
        Ok(RedisBackend {
            link: Arc::new(link),
            prefix: cfg.prefix.clone(),
        })
    }

    fn key(&self, name: &str, what: &str) -> String {
        key(&self.prefix, name, what)
    }

    fn run(&self, script: &Script, keys: &[String], args: &[&str]) -> Result<Vec<Value>> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        match self.link.with_con(|con| inv.invoke::<Value>(con))? {
            Value::Array(items) => Ok(items),
            other => Err(fail(
                INTERNAL,
                format!("unexpected reply from {}: {other:?}", self.link.shown),
            )),
        }
    }

    fn check_reply(&self, name: &str, items: &[Value]) -> Result<Check> {
        match int(items.first()) {
            Some(1) => Ok(Check::Done),
            Some(0) => Ok(Check::NotHeld),
            Some(2) => Ok(Check::HeldByOther(lock_info(
                name,
                items.get(1),
                items.get(2),
            ))),
            _ => Err(fail(
                INTERNAL,
                format!("unexpected script reply from {}", self.link.shown),
            )),
        }
    }
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.con.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection, opening it first if needed. Any error drops
    /// the connection, because a late reply to a timed-out request would
    /// otherwise be read as the next one's answer.
    fn with_con<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.new_connection()?);
        }
        let con = guard.as_mut().expect("just connected");
        match f(con) {
            Ok(v) => Ok(v),
            Err(e) => {
                *guard = None;
                Err(self.request_error(&e))
            }
        }
    }

    fn new_connection(&self) -> Result<Connection> {
        let timeout = self.timeout();
        let con = self
            .client
            .get_connection_with_timeout(timeout)
            .map_err(|e| self.connect_error(&e, timeout))?;
        con.set_read_timeout(Some(timeout))
            .and_then(|_| con.set_write_timeout(Some(timeout)))
            .map_err(|e| self.connect_error(&e, timeout))?;
        Ok(con)
    }

    fn connect_error(&self, e: &redis::RedisError, timeout: Duration) -> anyhow::Error {
        let at = &self.shown;
        let msg = if is_auth_error(e) {
            format!("authentication to {at} failed: check the user and password in the URL")
        } else if e.is_connection_refusal() {
            format!("cannot connect to {at}: connection refused; is redis-server running and listening there?")
        } else if e.is_timeout() {
            format!(
                "cannot connect to {at}: no answer within {}; check host, port and firewall, or raise --connect-timeout",
                crate::output::format_duration(timeout)
            )
        } else {
            format!("cannot connect to {at}: {e}")
        };
        fail(UNAVAILABLE, msg)
    }

    fn request_error(&self, e: &redis::RedisError) -> anyhow::Error {
        let at = &self.shown;
        if is_auth_error(e) {
            fail(
                UNAVAILABLE,
                format!("authentication to {at} failed: check the user and password in the URL"),
            )
        } else if e.is_timeout() {
            fail(
                UNAVAILABLE,
                format!(
                    "{at} did not answer within {}",
                    crate::output::format_duration(self.timeout())
                ),
            )
        } else if e.is_io_error() || e.is_connection_dropped() {
            fail(UNAVAILABLE, format!("lost connection to {at}: {e}"))
        } else {
            fail(INTERNAL, format!("unexpected reply from {at}: {e}"))
        }
    }
}

impl Backend for RedisBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let keys = [self.key(req.name, "lease"), self.key(req.name, "fence")];
        let ms = req.lease.as_millis().max(1).to_string();
        let h = req.holder;
        // The lease value after token, fence and time: see the module comment.
        let about = format!(
            "{}\n{}\n{}\n{}\n{}",
            h.host, h.pid, h.user, req.name, h.command
        );
        let items = self.run(&ACQUIRE_SCRIPT, &keys, &[req.token, &ms, &about])?;
        match int(items.first()) {
            Some(1) => Ok(Acquire::Acquired(Grant {
                fence: int(items.get(1)).context("fence missing from reply")? as u64,
                server_now_us: int(items.get(2)).unwrap_or(0),
                extended: int(items.get(3)) == Some(1),
            })),
            Some(0) => Ok(Acquire::Busy(Some(lock_info(
                req.name,
                items.get(1),
                items.get(2),
            )))),
            _ => Err(fail(
                INTERNAL,
                format!("unexpected acquire reply from {}", self.link.shown),
            )),
        }
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let ms = lease.as_millis().max(1).to_string();
        let items = self.run(&RENEW_SCRIPT, &[self.key(name, "lease")], &[token, &ms])?;
        self.check_reply(name, &items)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let keys = [self.key(name, "lease"), self.key(name, "wake")];
        let items = self.run(&RELEASE_SCRIPT, &keys, &[token, BATON_TTL_MS])?;
        self.check_reply(name, &items)
    }

    fn force_release(&mut self, name: &str) -> Result<Option<LockInfo>> {
        let keys = [self.key(name, "lease"), self.key(name, "wake")];
        let items = self.run(&FORCE_SCRIPT, &keys, &[BATON_TTL_MS])?;
        Ok(match int(items.first()) {
            Some(1) => Some(lock_info(name, items.get(1), items.get(2))),
            _ => None,
        })
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        let keys: Vec<String> = match names {
            Some(names) => names.iter().map(|n| self.key(n, "lease")).collect(),
            None => self.scan_lease_keys()?,
        };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("PTTL").arg(k).cmd("GET").arg(k);
        }
        let replies: Vec<Value> = self.link.with_con(|con| pipe.query(con))?;
        let mut out = Vec::new();
        for (i, pair) in replies.chunks(2).enumerate() {
            let ttl = int(pair.first()).unwrap_or(-2);
            if ttl < 0 && ttl != -1 {
                continue; // expired or gone between SCAN and now
            }
            let fallback = match names {
                Some(n) => n[i].clone(),
                None => String::new(),
            };
            let info = lock_info(&fallback, pair.first(), pair.get(1));
            if !info.token_id.is_empty() {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        Ok(Box::new(RedisWaiter {
            link: Arc::clone(&self.link),
            baton: self.key(name, "wake"),
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        *self.link.lock() = None;
        self.link.with_con(|_| Ok(()))
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let t = timeout.max(Duration::from_millis(1));
        *self.link.timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        let mut con = self.link.lock();
        if let Some(c) = con.as_ref() {
            if c.set_read_timeout(Some(t))
                .and_then(|_| c.set_write_timeout(Some(t)))
                .is_err()
            {
                *con = None;
            }
        }
        Ok(())
    }
}

impl RedisBackend {
    fn scan_lease_keys(&mut self) -> Result<Vec<String>> {
        let pattern = format!("{}:{{*}}:lease", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self.link.with_con(|con| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)
            })?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// Waits for the baton: the persistent wake-up means a waiter needs no
/// subscription before its last attempt.
struct RedisWaiter {
    link: Arc<Link>,
    baton: String,
}

impl Waiter for RedisWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        // BZPOPMIN takes seconds with decimals; 0 would mean forever.
        let secs = timeout.as_secs_f64().max(0.001);
        let slack = self.link.timeout();
        let r = self.link.with_con(|con| {
            con.set_read_timeout(Some(timeout + slack))?;
            let r = redis::cmd("BZPOPMIN")
                .arg(&self.baton)
                .arg(format!("{secs:.3}"))
                .query::<Value>(con);
            con.set_read_timeout(Some(slack))?;
            r
        });
        r.map(|_| ())
            .map_err(|e| fail(UNAVAILABLE, format!("{e:#} while waiting")))
    }

    fn keeps_wakeups(&self) -> bool {
        true
    }
}

fn is_auth_error(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || e.to_string().contains("WRONGPASS")
        || e.to_string().contains("NOAUTH")
}

/// SCAN's MATCH is a glob: escape the prefix so that it is taken literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Builds a LockInfo from a PTTL reply and a lease value (see the module comment).
fn lock_info(name: &str, ttl: Option<&Value>, lease: Option<&Value>) -> LockInfo {
    let value = lease.map(text).unwrap_or_default();
    let mut f = value.splitn(8, '\n');
    let mut next = || f.next().unwrap_or_default().to_string();
    let (token, fence, acquired, host, pid, user, stored_name, command) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    LockInfo {
        name: if stored_name.is_empty() {
            name.to_string()
        } else {
            stored_name
        },
        holder: Holder {
            host,
            pid: pid.parse().unwrap_or(0),
            user,
            command,
        },
        token_id: token_id(&token),
        fence: fence.parse().unwrap_or(0),
        acquired_at_us: acquired.parse().unwrap_or(0),
        ttl: Duration::from_millis(int(ttl).unwrap_or(0).max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn lease_values_keep_newlines_in_the_command() {
        let v = Value::BulkString(
            b"0123abcd\n42\n1700000000000001\nvm\n7\nroot\njob\nsh -c 'a\nb'".to_vec(),
        );
        let i = lock_info("fallback", Some(&Value::Int(1500)), Some(&v));
        assert_eq!(i.name, "job");
        assert_eq!(i.fence, 42);
        assert_eq!(i.acquired_at_us, 1_700_000_000_000_001);
        assert_eq!((i.holder.host.as_str(), i.holder.pid), ("vm", 7));
        assert_eq!(i.holder.command, "sh -c 'a\nb'");
        assert_eq!(i.ttl, Duration::from_millis(1500));
        assert_eq!(lock_info("x", None, None).name, "x");
    }

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(key("dlock", "job", "lease"), "dlock:{job}:lease");
        assert_eq!(key("dlock", "job", "wake"), "dlock:{job}:wake");
        assert_ne!(
            key("dlock", "a}:fence", "lease"),
            key("dlock", "a", "fence")
        );
    }
}
