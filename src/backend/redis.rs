//! Redis backend: one hash per lease with a millisecond TTL, changed only by
//! Lua scripts so that every check-and-set is atomic on the server.
//!
//! Keys for lock NAME under prefix P (the hash tag keeps them in one cluster slot):
//!   P:{NAME}:lease     hash: token, fence, acquired_us, host, pid, user, command, name
//!   P:{NAME}:fence     last fence handed out (outlives the lease, with a long TTL)
//!   P:{NAME}:released  pub/sub channel that release publishes to

use std::time::Duration;

use anyhow::{Context, Result};
use redis::{Client, Connection, IntoConnectionInfo, Script, Value};

use super::{Acquire, Backend, Check, Config, Grant, LockInfo, Request, Waiter};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use crate::holder::Holder;
use crate::names::token_id;

/// Fences are max(last + 1, server time in µs): strictly increasing per name,
/// and still increasing after the server restarts with its data lost, because
/// the clock has moved on while the counter was gone.
const ACQUIRE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'token')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nows = string.format('%.0f', now)
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('HGET', KEYS[1], 'fence'), nows, 1}
end
if cur then
  return {0, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local fence = now
if last >= fence then fence = last + 1 end
local fs = string.format('%.0f', fence)
redis.call('SET', KEYS[2], fs, 'PX', tonumber(ARGV[2]) + 86400000)
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'fence', fs, 'acquired_us', nows,
  'host', ARGV[3], 'pid', ARGV[4], 'user', ARGV[5], 'command', ARGV[6], 'name', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, fs, nows, 0}
";

/// Extends only a lease the token still holds: an expired lease stays lost.
const RENEW: &str = r"
local cur = redis.call('HGET', KEYS[1], 'token')
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if cur then return {2, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])} end
return {0}
";

const RELEASE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'token')
if cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return {1}
end
if cur then return {2, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])} end
return {0}
";

const FORCE_RELEASE: &str = r"
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {0} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], 'released')
return {1, ttl, h}
";

pub struct RedisBackend {
    client: Client,
    con: Option<Connection>,
    prefix: String,
    timeout: Duration,
    /// The URL without its password, for messages.
    shown: String,
    acquire: Script,
    renew: Script,
    release: Script,
    force: Script,
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
        let mut b = RedisBackend {
            client,
            con: None,
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            shown,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            force: Script::new(FORCE_RELEASE),
        };
        b.connect()?;
        Ok(b)
    }

    fn connect(&mut self) -> Result<&mut Connection> {
        if self.con.is_none() {
            let con = self.new_connection()?;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("just connected"))
    }

    fn new_connection(&self) -> Result<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.connect_error(&e))?;
        con.set_read_timeout(Some(self.timeout))
            .and_then(|_| con.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.connect_error(&e))?;
        Ok(con)
    }

    fn connect_error(&self, e: &redis::RedisError) -> anyhow::Error {
        let at = &self.shown;
        let msg = if is_auth_error(e) {
            format!("authentication to {at} failed: check the user and password in the URL")
        } else if e.is_connection_refusal() {
            format!("cannot connect to {at}: connection refused; is redis-server running and listening there?")
        } else if e.is_timeout() {
            format!(
                "cannot connect to {at}: no answer within {}; check host, port and firewall, or raise --connect-timeout",
                humantime::format_duration(self.timeout)
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
                    humantime::format_duration(self.timeout)
                ),
            )
        } else if e.is_io_error() || e.is_connection_dropped() {
            fail(UNAVAILABLE, format!("lost connection to {at}: {e}"))
        } else {
            fail(INTERNAL, format!("unexpected reply from {at}: {e}"))
        }
    }

    fn key(&self, name: &str, what: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, name, what)
    }

    /// Runs one script; any error drops the connection, because a late reply
    /// to a timed-out request would otherwise be read as the next one's answer.
    fn run(&mut self, script: &Script, keys: &[String], args: &[&str]) -> Result<Vec<Value>> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let con = self.connect()?;
        match inv.invoke::<Value>(con) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(other) => Err(fail(
                INTERNAL,
                format!("unexpected reply from {}: {other:?}", self.shown),
            )),
            Err(e) => {
                self.con = None;
                Err(self.request_error(&e))
            }
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
                format!("unexpected script reply from {}", self.shown),
            )),
        }
    }
}

impl Backend for RedisBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let keys = [self.key(req.name, "lease"), self.key(req.name, "fence")];
        let ms = req.lease.as_millis().max(1).to_string();
        let pid = req.holder.pid.to_string();
        let args = [
            req.token,
            &ms,
            &req.holder.host,
            &pid,
            &req.holder.user,
            &req.holder.command,
            req.name,
        ];
        let items = self.run(&self.acquire.clone(), &keys, &args)?;
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
                format!("unexpected acquire reply from {}", self.shown),
            )),
        }
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let ms = lease.as_millis().max(1).to_string();
        let items = self.run(
            &self.renew.clone(),
            &[self.key(name, "lease")],
            &[token, &ms],
        )?;
        self.check_reply(name, &items)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let chan = self.key(name, "released");
        let items = self.run(
            &self.release.clone(),
            &[self.key(name, "lease")],
            &[token, &chan],
        )?;
        self.check_reply(name, &items)
    }

    fn force_release(&mut self, name: &str) -> Result<Option<LockInfo>> {
        let chan = self.key(name, "released");
        let items = self.run(&self.force.clone(), &[self.key(name, "lease")], &[&chan])?;
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
            pipe.cmd("PTTL").arg(k).cmd("HGETALL").arg(k);
        }
        let con = self.connect()?;
        let replies: Vec<Value> = match pipe.query(con) {
            Ok(v) => v,
            Err(e) => {
                self.con = None;
                return Err(self.request_error(&e));
            }
        };
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
        let mut con = self.new_connection()?;
        let chan = self.key(name, "released");
        let sub = redis::cmd("SUBSCRIBE").arg(&chan).get_packed_command();
        con.send_packed_command(&sub)
            .and_then(|_| con.recv_response())
            .map_err(|e| self.request_error(&e))?;
        Ok(Box::new(RedisWaiter {
            con,
            shown: self.shown.clone(),
        }))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.con = None;
        self.connect().map(|_| ())
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let t = timeout.max(Duration::from_millis(1));
        self.timeout = t;
        if let Some(con) = &self.con {
            if con
                .set_read_timeout(Some(t))
                .and_then(|_| con.set_write_timeout(Some(t)))
                .is_err()
            {
                self.con = None;
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
            let con = self.connect()?;
            let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(con);
            let (next, batch) = match r {
                Ok(v) => v,
                Err(e) => {
                    self.con = None;
                    return Err(self.request_error(&e));
                }
            };
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

struct RedisWaiter {
    con: Connection,
    shown: String,
}

impl Waiter for RedisWaiter {
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let t = timeout.max(Duration::from_millis(1));
        self.con.set_read_timeout(Some(t)).ok();
        match self.con.recv_response() {
            Ok(_) => Ok(()),
            Err(e) if e.is_timeout() => Ok(()),
            Err(e) => Err(fail(
                UNAVAILABLE,
                format!("lost connection to {} while waiting: {e}", self.shown),
            )),
        }
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

/// Builds a LockInfo from a PTTL reply and an HGETALL reply (flat or map).
fn lock_info(name: &str, ttl: Option<&Value>, hash: Option<&Value>) -> LockInfo {
    let mut fields: Vec<(String, String)> = Vec::new();
    match hash {
        Some(Value::Array(items)) => {
            for kv in items.chunks(2) {
                if let [k, v] = kv {
                    fields.push((text(k), text(v)));
                }
            }
        }
        Some(Value::Map(items)) => {
            for (k, v) in items {
                fields.push((text(k), text(v)));
            }
        }
        _ => {}
    }
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let stored_name = get("name");
    LockInfo {
        name: if stored_name.is_empty() {
            name.to_string()
        } else {
            stored_name
        },
        holder: Holder {
            host: get("host"),
            pid: get("pid").parse().unwrap_or(0),
            user: get("user"),
            command: get("command"),
        },
        token_id: token_id(&get("token")),
        fence: get("fence").parse().unwrap_or(0),
        acquired_at_us: get("acquired_us").parse().unwrap_or(0),
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
    fn keys_share_a_hash_tag() {
        let b = |n: &str, w: &str| format!("{}:{{{}}}:{}", "dlock", n, w);
        assert_eq!(b("job", "lease"), "dlock:{job}:lease");
        assert_ne!(b("a}:fence", "lease"), b("a", "fence"));
    }
}
