//! The Lua scripts that change leases, and the keys they work on.
//!
//! Keys for lock NAME under prefix P (the hash tag keeps them in one cluster
//! slot); `{`, `}` and `%` in P and NAME are written `%7B`, `%7D` and `%25`,
//! so that P holds no brace and NAME no closing brace: the key is
//! `P:{NAME}:…` for exactly one (P, NAME), the hash tag is NAME, and the
//! SCAN pattern `P:{*}:…` matches no other prefix's keys.
//!   P:{NAME}:lease  string "token\nfence\nacquired_us\nhost\npid\nuser\nname\ncommand"
//!                   (the command last: it is the only field that may hold a newline):
//!                   the lone exclusive holder of a 1-slot lock, i.e. a plain mutex
//!   P:{NAME}:state  JSON of `kinds::State` for everything else: shared holders,
//!                   semaphore holders, the queue of tickets; PX covers its last
//!                   lease or ticket. With a lease key beside it, it holds no holders.
//!   P:{NAME}:fence  last fence handed out (outlives the lease, with a day's TTL)
//!   P:{NAME}:wake   sorted set with at most one member, the baton: release adds
//!                   it, a waiter takes it with BZPOPMIN
//!   P:{NAME}:broken "token\nuser@host (pid N)": who broke the lease of that
//!                   token with --force, kept until that lease would have expired
//!                   and a minute more, so that its holder's next renewal can say so.
//!                   The same line, with the token cut to its id, is published
//!                   on the channel of that name for a live `exec` holder.
//!   P:{NAME}:changed a channel only: every script that grants, frees or
//!                   queues publishes an empty message on it for `dlock watch`.
//!
//! Two paths. The fast one is today's mutex: ACQUIRE, RENEW, RELEASE and
//! FORCE each answer in one script while no state key exists, and answer 3
//! ("take the generic path") when one does and they cannot decide alone. The
//! generic one is the engine's loop (`backend::engine`) over the store in
//! `kinds.rs`, for every other kind: READ the keys, plan in Rust with
//! `backend::kinds`, then WRITE, which writes only if lease, state and fence
//! still read as they did (else the engine plans again).
//!
//! Scripts keep their calls few, since each one is a server operation:
//! a busy attempt is GET + PTTL, an acquisition GET + GET + TIME + INCR (+ SET),
//! a release GET + ZADD + PEXPIRE + DEL. Writes that may be refused for lack of
//! memory come before DEL, so that a refused script changes nothing.

use std::borrow::Cow;
use std::sync::LazyLock;

/// Shared by the scripts: does lease value `v` belong to token `t`?
pub(crate) const OWNS: &str = r"
local function owns(v, t) return v and string.sub(v, 1, #t + 1) == t .. '\n' end
";

/// Tells `dlock watch` that lock KEYS[1] (its lease key, `P:{NAME}:lease`)
/// changed: one PUBLISH on `P:{NAME}:changed`, which costs a lookup when
/// nobody listens (in a cluster, every node gets it). Refused (an ACL
/// without channels): watchers poll instead.
pub(crate) const CHANGED: &str = r"
local function changed() redis.pcall('PUBLISH', string.sub(KEYS[1], 1, -6) .. 'changed', '') end
";

/// Fences are the larger of the last one + 1 and the server time in µs: a
/// counter that is gone, or restored from an older copy (a failover to a
/// replica that lagged, a restored dump), can never hand out a fence again,
/// as long as the server's clock has moved on.
///
/// A free lease with a state key (KEYS[3]) beside it goes the generic way
/// (3). A lease held by another token is busy without looking at the state:
/// a lone exclusive holder leaves no room for anyone, which is all the plan
/// would say too (a request that holds a ticket goes the generic way from
/// the start, to refresh it).
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
if redis.call('GET', KEYS[3]) then return {3} end
local t = redis.call('TIME')
local nows = t[1] .. string.format('%06d', tonumber(t[2]))
local fence = redis.call('INCR', KEYS[2])
local fs
if fence < tonumber(nows) then
  fs = nows
  redis.call('SET', KEYS[2], nows, 'PX', 86400000)
else
  fs = string.format('%.0f', fence)
end
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. fs .. '\n' .. nows .. '\n' .. ARGV[3], 'PX', ARGV[2])
changed()
return {1, fs, nows, 0}
";

/// Who broke the lease of token ARGV[1] (KEYS[2] is the tombstone), if anyone.
pub(crate) const BROKEN_BY: &str = r"
local function broken_by(k, t)
  local b = redis.call('GET', k)
  if owns(b, t) then return string.sub(b, #t + 2) end
  return false
end
";

/// Extends only a lease the token still holds: an expired lease stays lost.
/// A token that holds no lease may hold a place in the state (KEYS[3]): 3
/// sends it the generic way, with who broke its lease, if anyone.
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
local by = broken_by(KEYS[2], ARGV[1])
if not cur and redis.call('GET', KEYS[3]) then return {3, by} end
if cur then return {2, redis.call('PTTL', KEYS[1]), cur, by} end
return {0, by}
";

/// Frees the lease and leaves the baton for the longest-waiting waiter.
/// Another token's release goes the generic way (3) while a state (KEYS[4])
/// exists: it may hold a place there, or a ticket to give back.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  redis.call('ZADD', KEYS[2], 0, 'released')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  changed()
  return {1}
end
local by = broken_by(KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) then return {3, by} end
if cur then return {2, redis.call('PTTL', KEYS[1]), cur, by} end
return {0, by}
";

/// Frees the lease whoever holds it, records who broke it (KEYS[3], ARGV[2])
/// and tells a listening holder on channel ARGV[3]. PUBLISH may be refused
/// (an ACL without channels): then the holder learns it at its next renewal.
/// With a token id (ARGV[4]) it breaks only that holder: a prefix of the
/// token when ARGV[5] is 1 (a full 8-character id), else the whole token.
/// With a state (KEYS[4]) it leaves everything to the generic way (3).
const FORCE_RELEASE: &str = r"
if redis.call('GET', KEYS[4]) then return {3} end
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
local tok = string.match(cur, '^[^\n]*')
local id = ARGV[4]
if id ~= '' and tok ~= id and (ARGV[5] ~= '1' or string.sub(tok, 1, #id) ~= id) then return {0} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[3], tok .. '\n' .. ARGV[2], 'PX', math.max(ttl, 0) + 60000)
redis.call('ZADD', KEYS[2], 0, 'released')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.pcall('PUBLISH', ARGV[3], string.sub(tok, 1, 8) .. '\n' .. ARGV[2])
return {1, ttl, cur}
";

/// The generic path's read: server time (µs), lease, its PTTL, state,
/// fence counter and break record (KEYS[4]), as one snapshot. Absent keys
/// read as ''.
const READ: &str = r"
local t = redis.call('TIME')
local function get(k) return redis.call('GET', k) or '' end
return {t[1] .. string.format('%06d', tonumber(t[2])), get(KEYS[1]), redis.call('PTTL', KEYS[1]), get(KEYS[2]), get(KEYS[3]), get(KEYS[4])}
";

/// The generic path's compare-and-set. KEYS: lease, state, fence, wake,
/// broken. ARGV: 1-3 lease, state and fence as read ('' = absent); 4 the new
/// lease ('' = keep, '-' = delete) and 5 its PX; 6 and 7 the same for the
/// state; 8 the new fence ('' = keep); 9 '1' to leave the baton, 10 its PX;
/// 11 a break record ('' = none) and 12 its PX; 13… notices to publish on
/// the broken channel. Answers {0} without writing if anything changed.
const WRITE: &str = r"
local function get(k) return redis.call('GET', k) or '' end
if get(KEYS[1]) ~= ARGV[1] or get(KEYS[2]) ~= ARGV[2] or get(KEYS[3]) ~= ARGV[3] then
  return {0}
end
if ARGV[8] ~= '' then redis.call('SET', KEYS[3], ARGV[8], 'PX', 86400000) end
if ARGV[4] ~= '' and ARGV[4] ~= '-' then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5]) end
if ARGV[6] ~= '' and ARGV[6] ~= '-' then redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7]) end
if ARGV[11] ~= '' then redis.call('SET', KEYS[5], ARGV[11], 'PX', ARGV[12]) end
if ARGV[9] == '1' then
  redis.call('ZADD', KEYS[4], 0, 'released')
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
end
if ARGV[4] == '-' then redis.call('DEL', KEYS[1]) end
if ARGV[6] == '-' then redis.call('DEL', KEYS[2]) end
for i = 13, #ARGV do redis.pcall('PUBLISH', KEYS[5], ARGV[i]) end
changed()
return {1}
";

/// A script with its SHA-1, hashed on first use: a process runs a few of them.
pub struct Lua {
    pub body: String,
    pub sha: String,
    /// Whether a first reply field of 1 means a lease was written (which
    /// `wait_replicas` then waits to see replicated).
    pub writes: bool,
}

impl Lua {
    pub(crate) fn new(parts: &[&str], writes: bool) -> Lua {
        let body: String = parts.concat();
        let sha = redis::Script::new(&body).get_hash().to_string();
        Lua { body, sha, writes }
    }
}

pub static ACQUIRE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[OWNS, CHANGED, ACQUIRE], true));
pub static RENEW_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[OWNS, BROKEN_BY, RENEW], true));
pub static RELEASE_LUA: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(&[OWNS, CHANGED, BROKEN_BY, RELEASE], false));
pub static FORCE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[FORCE_RELEASE], false));
pub static READ_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[READ], false));
pub static WRITE_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[CHANGED, WRITE], true));

/// `{`, `}` and `%` escaped, so that a prefix or name cannot end or open a hash tag.
fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['{', '}', '%']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The key (or channel) `what` ("lease", "state", "fence", "wake", "broken") of lock
/// `name` under `prefix`: the escaped name is the hash tag.
pub fn key(prefix: &str, name: &str, what: &str) -> String {
    format!("{}:{{{}}}:{what}", escape(prefix), escape(name))
}

/// SCAN's MATCH pattern for the keys of held names under `prefix`: their
/// lease and state keys, and no other of the five.
pub fn held_pattern(prefix: &str) -> String {
    format!("{}:{{*}}:[ls][et]a[st]e", glob_escape(&escape(prefix)))
}

/// The lock name of a lease or state key under `prefix` (the inverse of [`key`]).
pub fn name_of(prefix: &str, key: &str) -> Option<String> {
    let rest = key
        .strip_prefix(escape(prefix).as_ref())?
        .strip_prefix(":{")?;
    let name = rest
        .strip_suffix("}:lease")
        .or_else(|| rest.strip_suffix("}:state"))?;
    Some(
        name.replace("%7B", "{")
            .replace("%7D", "}")
            .replace("%25", "%"),
    )
}

/// PSUBSCRIBE's pattern for channel `what` ("changed", "broken") of every
/// lock under `prefix`.
pub fn channel_pattern(prefix: &str, what: &str) -> String {
    format!("{}:{{*}}:{what}", glob_escape(&escape(prefix)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(key("dlock", "job", "lease"), "dlock:{job}:lease");
        assert_eq!(key("dlock", "job", "wake"), "dlock:{job}:wake");
        assert_eq!(key("dlock", "a:b", "lease"), "dlock:{a:b}:lease");
        assert_ne!(
            key("dlock", "a}:fence", "lease"),
            key("dlock", "a", "fence")
        );
    }

    #[test]
    fn prefixes_and_names_never_share_a_key() {
        assert_ne!(
            key("team", "b}:x:{c", "lease"),
            key("team:{b}:x", "c", "lease")
        );
        assert_ne!(key("a%7B", "x", "lease"), key("a{", "x", "lease"));
        assert_eq!(key("p{", "n}", "lease"), "p%7B:{n%7D}:lease");
        assert_eq!(held_pattern("ops*"), "ops\\*:{*}:[ls][et]a[st]e");
    }

    #[test]
    fn names_come_back_from_their_keys() {
        for name in ["job", "a:b", "n}", "{x}", "50%7B", "%"] {
            for what in ["lease", "state"] {
                let k = key("p{", name, what);
                assert_eq!(name_of("p{", &k).as_deref(), Some(name), "{k}");
            }
            assert_eq!(name_of("p{", &key("p{", name, "fence")), None);
            assert_eq!(name_of("q", &key("p{", name, "lease")), None);
        }
    }
}
