//! Where a name's state lives and how it changes: one persistent node per
//! name holding a `kinds::State` as JSON (and who broke which lease), the
//! engine's store (`backend::engine`): read with the leader's clock (the
//! mtime of a write), written with a version check (create when absent).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use zookeeper_client::{Client, CreateMode, Error as ZkError, Stat};

use super::address::{decode, encode};
use super::conn::Conn;
use crate::backend::engine::{self, Snapshot, Write};
use crate::backend::kinds::State;
use crate::error::{fail, INTERNAL};

/// How long (µs) a break record outlives the broken lease, so that the
/// holder's next renewal can say who broke it.
const RECORD_MARGIN_US: i64 = 60_000_000;

/// The node paths under the URL's chroot and the prefix.
pub struct Paths {
    base: String,
}

impl Paths {
    pub fn new(chroot: &str, prefix: &str) -> Paths {
        Paths {
            base: format!("{chroot}/{}", encode(prefix)),
        }
    }

    /// Written to read the leader's clock.
    pub fn clock(&self) -> String {
        format!("{}/clock", self.base)
    }

    pub fn locks(&self) -> String {
        format!("{}/locks", self.base)
    }

    /// Every node of the prefix is under this.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The containers of every name's waiters.
    pub fn queues(&self) -> String {
        format!("{}/queue", self.base)
    }

    /// The node holding `name`'s state.
    pub fn lock(&self, name: &str) -> String {
        format!("{}/locks/{}", self.base, encode(name))
    }

    /// The container of `name`'s waiters' sequential nodes.
    pub fn queue(&self, name: &str) -> String {
        format!("{}/queue/{}", self.base, encode(name))
    }
}

/// Who broke a holder's lease with `release --force` (the record the SQL
/// stores keep too), kept until a while after that lease would have ended.
pub use crate::backend::engine::breaks::Break as BreakRecord;

/// A state node's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub state: State,
    #[serde(rename = "b", default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<BreakRecord>,
}

impl Stored {
    /// Who broke `token`'s lease, if a record says.
    pub fn broken_by(&self, token: &str) -> Option<String> {
        self.breaks
            .iter()
            .find(|b| b.token == token)
            .map(|b| b.by.clone())
    }
}

/// A name's node as one read found it, with the leader's clock.
pub struct Seen {
    /// The leader's clock at the read, µs since the epoch.
    pub now: i64,
    /// The node's version; None when it does not exist yet.
    version: Option<i32>,
    /// The zxid of the node's last change (None: absent), which a waiter
    /// compares with what it finds when it starts watching.
    pub mzxid: Option<i64>,
    pub stored: Stored,
}

pub(super) fn parse(name: &str, data: &[u8]) -> Result<Stored> {
    if data.is_empty() {
        return Ok(Stored::default());
    }
    serde_json::from_slice(data).map_err(|e| {
        fail(
            INTERNAL,
            format!(
                "lock '{name}' has a state node this dlock cannot read ({e}); \
                 was it written by another dlock version?"
            ),
        )
    })
}

/// The leader's clock in µs, from the Stat of a write.
fn clock_of(stat: &Stat) -> i64 {
    stat.mtime.saturating_mul(1000)
}

/// The ZooKeeper store: a session and the paths.
pub struct Store {
    pub conn: Conn,
    pub paths: Paths,
}

impl Store {
    /// Creates the prefix's directories and clock node.
    fn make_dirs(&self, client: &Client) -> Result<()> {
        let dir = self.conn.options(CreateMode::Persistent);
        self.conn.wait(
            "creating dlock's nodes",
            client.mkdir(&self.paths.locks(), &dir),
        )?;
        match self
            .conn
            .wait_raw(client.create(&self.paths.clock(), b"", &dir))
        {
            Ok(Ok(_)) | Ok(Err(ZkError::NodeExists)) => Ok(()),
            Ok(Err(e)) => Err(self.conn.error(&e, "creating the clock node")),
            Err(e) => Err(e),
        }
    }

    /// The leader's clock now (µs): the mtime of a write to the clock node.
    pub fn now(&self, client: &Client) -> Result<i64> {
        let clock = self.paths.clock();
        match self.conn.wait_raw(client.set_data(&clock, b"", None))? {
            Ok(stat) => Ok(clock_of(&stat)),
            Err(ZkError::NoNode) => {
                self.make_dirs(client)?;
                let stat = self
                    .conn
                    .wait("reading the clock", client.set_data(&clock, b"", None))?;
                Ok(clock_of(&stat))
            }
            Err(e) => Err(self.conn.error(&e, "reading the clock")),
        }
    }

    /// Reads `name`'s node and the leader's clock in one round trip (the
    /// session sends both before awaiting either, and the server answers
    /// them in order).
    pub fn read(&self, name: &str) -> Result<Seen> {
        let client = self.conn.client()?;
        let clock = client.set_data(&self.paths.clock(), b"", None);
        let data = client.get_data(&self.paths.lock(name));
        let (clock, data) = self.conn.wait_raw(async { (clock.await, data.await) })?;
        let now = match clock {
            Ok(stat) => clock_of(&stat),
            Err(ZkError::NoNode) => self.now(&client)?,
            Err(e) => return Err(self.conn.error(&e, "reading the clock")),
        };
        match data {
            Ok((bytes, stat)) => Ok(Seen {
                now,
                version: Some(stat.version),
                mzxid: Some(stat.mzxid),
                stored: parse(name, &bytes)?,
            }),
            Err(ZkError::NoNode) => Ok(Seen {
                now,
                version: None,
                mzxid: None,
                stored: Stored::default(),
            }),
            Err(e) => Err(self.conn.error(&e, &format!("reading lock '{name}'"))),
        }
    }

    /// Writes `stored` if the node is still as `seen` found it, returning
    /// the node's new mzxid; None if another client changed it first.
    pub fn write(&self, name: &str, seen: &Seen, stored: &Stored) -> Result<Option<i64>> {
        let client = self.conn.client()?;
        let path = self.paths.lock(name);
        let json = serde_json::to_vec(stored)?;
        let what = format!("writing lock '{name}'");
        let Some(version) = seen.version else {
            let opts = self.conn.options(CreateMode::Persistent);
            return match self.conn.wait_raw(client.create(&path, &json, &opts))? {
                Ok((stat, _)) => Ok(Some(stat.mzxid)),
                Err(ZkError::NodeExists) => Ok(None),
                Err(ZkError::NoNode) => {
                    self.make_dirs(&client)?;
                    Ok(None)
                }
                Err(e) => Err(self.conn.error(&e, &what)),
            };
        };
        match self
            .conn
            .wait_raw(client.set_data(&path, &json, Some(version)))?
        {
            Ok(stat) => Ok(Some(stat.mzxid)),
            Err(ZkError::BadVersion | ZkError::NoNode) => Ok(None),
            Err(e) => Err(self.conn.error(&e, &what)),
        }
    }

    /// Every name that has a state node under the prefix, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let client = self.conn.client()?;
        let mut names: Vec<String> = match self
            .conn
            .wait_raw(client.list_children(&self.paths.locks()))?
        {
            Ok(nodes) => nodes.iter().filter_map(|n| decode(n)).collect(),
            Err(ZkError::NoNode) => Vec::new(),
            Err(e) => return Err(self.conn.error(&e, "listing the locks")),
        };
        names.sort();
        Ok(names)
    }

    /// The leader's clock and the states of `names`, in one round trip.
    pub fn read_all(&self, names: &[String]) -> Result<(i64, Vec<Stored>)> {
        let client = self.conn.client()?;
        let clock = client.set_data(&self.paths.clock(), b"", None);
        let reads: Vec<_> = names
            .iter()
            .map(|n| client.get_data(&self.paths.lock(n)))
            .collect();
        let (clock, replies) = self.conn.wait_raw(async {
            let clock = clock.await;
            let mut replies = Vec::with_capacity(reads.len());
            for r in reads {
                replies.push(r.await);
            }
            (clock, replies)
        })?;
        let now = match clock {
            Ok(stat) => clock_of(&stat),
            Err(ZkError::NoNode) => self.now(&client)?,
            Err(e) => return Err(self.conn.error(&e, "reading the clock")),
        };
        let mut out = Vec::with_capacity(names.len());
        for (n, r) in names.iter().zip(replies) {
            out.push(match r {
                Ok((bytes, _)) => parse(n, &bytes)?,
                Err(ZkError::NoNode) => Stored::default(),
                Err(e) => return Err(self.conn.error(&e, &format!("reading lock '{n}'"))),
            });
        }
        Ok((now, out))
    }

    /// Records who broke the leases of `tokens` (each until its lease's end
    /// plus a margin), replacing older records of the same tokens.
    pub fn record_breaks(stored: &mut Stored, broken: &[(String, i64)], by: &str) {
        for (token, expires_us) in broken {
            stored.breaks.retain(|b| &b.token != token);
            stored.breaks.push(BreakRecord {
                token: token.clone(),
                by: by.to_string(),
                until_us: expires_us.saturating_add(RECORD_MARGIN_US),
            });
        }
    }
}

/// One name's node as the engine's store. Waking needs no write of its
/// own: the first waiter watches this node, so any write wakes it, and the
/// waiter behind a waiter that took the lock wakes when that one leaves
/// the queue.
pub struct Node<'a> {
    pub store: &'a Store,
    /// The node's mzxid as the last read or write left it.
    pub mzxid: Option<i64>,
}

impl engine::Store for Node<'_> {
    type Version = Seen;
    const RECORDS_BREAKS: bool = true;

    fn read(&mut self, name: &str) -> Result<Snapshot<Seen>> {
        let seen = self.store.read(name)?;
        self.mzxid = seen.mzxid;
        Ok(Snapshot {
            now: seen.now,
            state: seen.stored.state.clone(),
            version: seen,
        })
    }

    fn write(&mut self, name: &str, seen: &Snapshot<Seen>, new: &State, w: &Write) -> Result<bool> {
        let mut stored = Stored {
            state: new.clone(),
            breaks: seen.version.stored.breaks.clone(),
        };
        // Records end a while after their lease would have; a grant clears
        // its token's (a `--token` reused after its lease was broken).
        let holds = |t: &str| new.holders.iter().any(|h| h.token == t);
        stored
            .breaks
            .retain(|b| b.until_us > seen.now && !holds(&b.token));
        Store::record_breaks(&mut stored, w.broken, w.by);
        let written = self.store.write(name, &seen.version, &stored)?;
        if written.is_some() {
            self.mzxid = written;
        }
        Ok(written.is_some())
    }

    fn broken_by(&self, seen: &Snapshot<Seen>, token: &str) -> Option<String> {
        let live = seen.version.stored.breaks.iter();
        live.filter(|b| b.until_us > seen.now)
            .find(|b| b.token == token)
            .map(|b| b.by.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_state_keeps_the_kinds_fields_beside_break_records() {
        let mut s = Stored::default();
        s.state.fence = 42;
        Store::record_breaks(&mut s, &[("tok".into(), 5)], "me@vm (pid 1)");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"f\":42") && json.contains("\"b\":["),
            "{json}"
        );
        let back: Stored = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.broken_by("tok").as_deref(), Some("me@vm (pid 1)"));
        assert!(parse("x", b"{oops").is_err());
        assert_eq!(parse("x", b"").unwrap(), Stored::default());
    }

    #[test]
    fn paths_encode_the_prefix_and_the_name() {
        let p = Paths::new("/ch", "my/prefix");
        assert_eq!(p.lock("a b"), "/ch/my%2Fprefix/locks/a%20b");
        assert_eq!(p.queue("x"), "/ch/my%2Fprefix/queue/x");
        assert_eq!(Paths::new("", "dlock").clock(), "/dlock/clock");
    }
}
