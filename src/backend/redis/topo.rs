//! Where a request goes beyond one server: the primary that Sentinel names,
//! or the Cluster node that owns a key's slot.
//!
//! Both are small and written here rather than taken from the driver's
//! `sentinel` and `cluster` features: the driver's cluster connection retries
//! a timed-out request on the same connection at once, where the late reply
//! to the first one can be read as the answer to the second, which a lock's
//! compare-and-set cannot afford; and dlock needs only three things of a
//! cluster (route by slot, follow MOVED and ASK, list the primaries).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use redis::{Client, Connection, IntoConnectionInfo, RedisResult, Value};

use crate::backend::Url;
use crate::error::fail;

/// What the URL names.
pub enum Target {
    /// One server.
    Direct(Client),
    /// The primary of a service, as its sentinels name it on each connect.
    Sentinel(Sentinel),
    /// The nodes of a cluster (the URL's hosts are seeds).
    Cluster(Url),
}

/// A server's host and port.
pub type Addr = (String, u16);

pub const SLOTS: u16 = 16384;

/// A client for `url` that skips the CLIENT SETINFO pair the driver would
/// pipeline on every connection (two server operations for no use here).
pub fn client_for(url: &str) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Client::open(info.set_redis_settings(settings))
}

/// A connection with both socket timeouts set.
pub fn open(client: &Client, timeout: Duration) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// The sentinels of one service, and how to reach the primary they name.
pub struct Sentinel {
    pub url: Url,
    pub service: String,
    pub db: i64,
}

impl Sentinel {
    /// The primary's address as the first sentinel that knows the service
    /// names it; else why none did, one clause per sentinel.
    pub fn primary(&self, timeout: Duration) -> Result<Addr, String> {
        let mut why = Vec::new();
        for (host, port) in &self.url.hosts {
            match self.ask(host, *port, timeout) {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => why.push(format!("{host}:{port} knows no service '{}'", self.service)),
                Err(e) => why.push(format!("{host}:{port}: {}", short(&e))),
            }
        }
        Err(why.join("; "))
    }

    fn ask(&self, host: &str, port: u16, timeout: Duration) -> RedisResult<Option<Addr>> {
        // Sentinels have a password of their own, if any.
        let auth = self
            .url
            .param("sentinel_password")
            .map(|p| {
                format!(
                    ":{}@",
                    url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default();
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let client = client_for(&format!("redis://{auth}{host_part}:{port}"))?;
        let mut con = open(&client, timeout)?;
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.service)
            .query(&mut con)?;
        Ok(reply)
    }

    pub fn node_client(&self, addr: &Addr) -> RedisResult<Client> {
        client_for(&self.url.node_url(&addr.0, addr.1, self.db))
    }
}

/// Whether the server behind `con` says it is a primary (ROLE's first field).
pub fn is_primary(con: &mut Connection) -> RedisResult<bool> {
    let role: Value = redis::cmd("ROLE").query(con)?;
    Ok(matches!(role, Value::Array(ref v)
        if matches!(v.first(), Some(Value::BulkString(b)) if b == b"master")))
}

/// One line of a driver error, without the driver's own prefixes.
pub fn short(e: &redis::RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_timeout() {
        "no answer in time".into()
    } else {
        // Cut before any arguments the server echoes.
        super::misplaced::text(e)
    }
}

/// A cluster's slot map and one connection per node in use.
#[derive(Default)]
pub struct Cluster {
    /// (first slot, last slot, primary), sorted.
    slots: Vec<(u16, u16, Addr)>,
    pub nodes: HashMap<Addr, Connection>,
}

impl Cluster {
    pub fn owner(&self, slot: u16) -> Option<&Addr> {
        let i = self.slots.partition_point(|(_, end, _)| *end < slot);
        self.slots
            .get(i)
            .filter(|(start, _, _)| *start <= slot)
            .map(|(_, _, a)| a)
    }

    pub fn has_map(&self) -> bool {
        !self.slots.is_empty()
    }

    pub fn forget_map(&mut self) {
        self.slots.clear();
    }

    /// The primaries that own slots, each once.
    pub fn primaries(&self) -> Vec<Addr> {
        let mut v: Vec<Addr> = self.slots.iter().map(|(_, _, a)| a.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The connection to `addr`, opened with `seeds`' credentials if needed.
    pub fn con(
        &mut self,
        seeds: &Url,
        addr: &Addr,
        timeout: Duration,
    ) -> RedisResult<&mut Connection> {
        if !self.nodes.contains_key(addr) {
            let client = client_for(&seeds.node_url(&addr.0, addr.1, 0))?;
            self.nodes.insert(addr.clone(), open(&client, timeout)?);
        }
        Ok(self.nodes.get_mut(addr).expect("just inserted"))
    }

    /// Reads the slot map from the first node that answers: the nodes in
    /// use, then the seeds.
    pub fn refresh(&mut self, seeds: &Url, timeout: Duration) -> RedisResult<()> {
        let mut tried: Vec<Addr> = self.nodes.keys().cloned().collect();
        tried.extend(seeds.hosts.iter().cloned());
        let mut last = None;
        for addr in tried {
            let slots = self
                .con(seeds, &addr, timeout)
                .and_then(|con| redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(con));
            match slots.map(|v| parse_slots(&v, &addr.0)) {
                Ok(map) if !map.is_empty() => {
                    self.slots = map;
                    return Ok(());
                }
                Ok(_) => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the cluster has no slots assigned",
                    )))
                }
                Err(e) => {
                    self.nodes.remove(&addr);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::Client, "no cluster node given").into()))
    }
}

/// CLUSTER SLOTS: [[start, end, [host, port, …], replica…], …]; an empty
/// host means the node that answered.
fn parse_slots(v: &Value, asked: &str) -> Vec<(u16, u16, Addr)> {
    let Value::Array(ranges) = v else {
        return Vec::new();
    };
    let mut out: Vec<(u16, u16, Addr)> = ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let num = |v: Option<&Value>| match v {
                Some(Value::Int(i)) => u16::try_from(*i).ok(),
                _ => None,
            };
            let Some(Value::Array(node)) = r.get(2) else {
                return None;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) if !b.is_empty() => String::from_utf8_lossy(b).into(),
                _ => asked.to_string(),
            };
            Some((num(r.first())?, num(r.get(1))?, (host, num(node.get(1))?)))
        })
        .collect();
    out.sort();
    out
}

/// The slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key
/// when it has no non-empty `{…}`.
pub fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|&c| c == b'{').and_then(|open| {
        let len = b[open + 1..].iter().position(|&c| c == b'}')?;
        (len > 0).then(|| &b[open + 1..open + 1 + len])
    });
    crc16(tagged.unwrap_or(b)) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Where a MOVED or ASK error sends the request, and whether it is an ASK.
pub fn redirection(e: &redis::RedisError) -> Option<(Addr, bool)> {
    let ask = match e.code()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let (node, _) = e.redirect_node()?;
    let (host, port) = node.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
        ask,
    ))
    .map(|(h, p, a)| ((h, p), a))
}

/// One server, as the driver reads its URL.
pub fn direct_target(url: &Url) -> Result<Target> {
    // Without the redis-tls feature, the registry refuses rediss:// first.
    #[cfg(feature = "redis-tls")]
    if url.scheme == "rediss" {
        // rustls needs a process-wide crypto provider; ring builds with no system libraries.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let bad_url = |e: redis::RedisError| {
        fail(
            crate::error::USAGE,
            format!("invalid Redis URL '{}': {e}; expected redis://[user:pass@]host[:port][/db], rediss://… or redis+unix:///path?db=N", url.shown()),
        )
    };
    let (hosts, socket) = (url.hosts.len(), url.scheme.ends_with("unix"));
    if socket != (hosts == 0) || hosts > 1 {
        let why = match socket {
            true => "a socket URL names a path, no host",
            false => "it names no host, or more than one (for several: redis+sentinel://, redis+cluster:// or redlock://)",
        };
        return Err(fail(
            crate::error::USAGE,
            format!("invalid Redis URL '{}': {why}", url.shown()),
        ));
    }
    let info = url.as_str().into_connection_info().map_err(bad_url)?;
    // Skip the CLIENT SETINFO pair the driver pipelines on every connection:
    // two server operations per dlock process for no use to a lock.
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let client = Client::open(info.set_redis_settings(settings)).map_err(bad_url)?;
    Ok(Target::Direct(client))
}

fn usage(url: &Url, why: &str, form: &str) -> anyhow::Error {
    fail(
        crate::error::USAGE,
        format!("invalid URL '{}': {why}; expected {form}", url.shown()),
    )
}

/// Refuses a query parameter not in `known`, so that a typo is not ignored.
fn check_params(url: &Url, known: &[&str], form: &str) -> Result<()> {
    match url.unknown_param(known) {
        None => Ok(()),
        Some(k) => Err(usage(url, &format!("unknown parameter '{k}'"), form)),
    }
}

/// `wait_replicas=N`: a positive count.
fn wait_param(url: &Url, form: &str) -> Result<Option<u32>> {
    url.param("wait_replicas")
        .map(|v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    usage(
                        url,
                        &format!("wait_replicas '{v}' is not a count from 1 to 100"),
                        form,
                    )
                })
        })
        .transpose()
}

pub use crate::backend::forms::SENTINEL as SENTINEL_FORM;

/// `redis+sentinel://[user:pass@]s1:26379,…/SERVICE[/db]`.
pub fn sentinel_target(url: &Url) -> Result<(Target, Option<u32>)> {
    let form = SENTINEL_FORM;
    check_params(url, &["wait_replicas", "sentinel_password"], form)?;
    if url.hosts.is_empty() {
        return Err(usage(url, "no sentinel named", form));
    }
    let (service, db) = match url.segments().as_slice() {
        [s] => (s.clone(), 0),
        [s, db] => {
            let db = db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| usage(url, &format!("'{db}' is not a database number"), form))?;
            (s.clone(), db)
        }
        _ => return Err(usage(url, "the service name is missing", form)),
    };
    let wait = wait_param(url, form)?;
    let s = Sentinel {
        url: url.clone(),
        service,
        db,
    };
    Ok((Target::Sentinel(s), wait))
}

pub use crate::backend::forms::CLUSTER as CLUSTER_FORM;

/// `redis+cluster://[user:pass@]h1:7000,h2:7001,…`: the hosts are seeds.
pub fn cluster_target(url: &Url) -> Result<(Target, Option<u32>)> {
    check_params(url, &["wait_replicas"], CLUSTER_FORM)?;
    if url.hosts.is_empty() {
        return Err(usage(url, "no node named", CLUSTER_FORM));
    }
    if !url.segments().is_empty() {
        return Err(usage(url, "a cluster has no databases but 0", CLUSTER_FORM));
    }
    let wait = wait_param(url, CLUSTER_FORM)?;
    Ok((Target::Cluster(url.clone()), wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Values from the Redis cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot("dlock:{job}:lease"), slot("job"));
    }

    #[test]
    fn the_slot_map_finds_owners() {
        let a = |p| ("h".to_string(), p);
        let c = Cluster {
            slots: vec![(0, 5460, a(1)), (5461, 10922, a(2)), (10923, 16383, a(3))],
            nodes: HashMap::new(),
        };
        assert_eq!(c.owner(0), Some(&a(1)));
        assert_eq!(c.owner(5461), Some(&a(2)));
        assert_eq!(c.owner(16383), Some(&a(3)));
        assert_eq!(c.primaries().len(), 3);
        let gap = Cluster {
            slots: vec![(10, 20, a(1))],
            nodes: HashMap::new(),
        };
        assert_eq!(gap.owner(5), None);
        assert_eq!(gap.owner(21), None);
    }
}
