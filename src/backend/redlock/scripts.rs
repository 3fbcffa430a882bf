//! The per-node scripts of Redlock that the single-server ones do not cover.
//! Keys and lease values are the Redis backend's (`redis/scripts.rs`), so
//! each node holds what a lone Redis would: the acquisition, release and
//! force scripts are those of the Redis backend, run on every node.

use std::sync::LazyLock;

use crate::backend::redis::scripts::{Lua, BROKEN_BY, OWNS};

/// Extends the token's lease and returns the lease value (so that a node
/// that lost the key can be given it back); else who holds it, or who broke
/// it. KEYS: lease, broken. ARGV: token, ms.
const EXTEND: &str = r"
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur}
end
local by = broken_by(KEYS[2], ARGV[1])
if cur then return {2, redis.call('PTTL', KEYS[1]), cur, by} end
return {0, by}
";

/// The fence write-back of an acquisition: the counter becomes at least
/// the fence the majority agreed on, and the token's lease value carries
/// it. KEYS: lease, fence. ARGV: token, fence.
const WRITE_BACK: &str = r"
local f = ARGV[2]
local c = redis.call('GET', KEYS[2])
if not c or tonumber(c) < tonumber(f) then
  redis.call('SET', KEYS[2], f, 'PX', 86400000)
end
local cur = redis.call('GET', KEYS[1])
if owns(cur, ARGV[1]) then
  local rest = string.sub(cur, #ARGV[1] + 2)
  local nl = string.find(rest, '\n', 1, true) or (#rest + 1)
  redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. f .. string.sub(rest, nl), 'KEEPTTL')
  return 1
end
return 0
";

/// Gives a node that lost the key (a restart without it) the lease value
/// back, while the token holds a majority elsewhere, and its fence counter
/// with it. KEYS: lease, fence. ARGV: value, ms, fence.
const HEAL: &str = r"
local c = redis.call('GET', KEYS[2])
if not c or tonumber(c) < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', 86400000)
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// Undoes a failed attempt where it took the node: no baton, since nothing
/// was held. KEYS: lease. ARGV: token.
const UNDO: &str = r"
if owns(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

pub static EXTEND_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[OWNS, BROKEN_BY, EXTEND], true));
pub static WRITE_BACK_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[OWNS, WRITE_BACK], true));
pub static HEAL_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[HEAL], true));
pub static UNDO_LUA: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[OWNS, UNDO], false));
