//! The one-script fast paths of a plain mutex (the scripts are in
//! `scripts.rs`): a lone exclusive holder in the lease string is taken,
//! renewed, released or broken in one round trip. Each answers None when a
//! state key beside the lease leaves the decision to the engine's loop over
//! the store in `kinds.rs`.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::Value;

use super::scripts::{ACQUIRE_LUA, FORCE_LUA, RELEASE_LUA, RENEW_LUA};
use super::{broken_by, int, lock_info, By, RedisBackend, BATON_TTL_MS};
use crate::backend::{Acquire, Broken, Check, Grant, LockInfo, Request};
use crate::error::{fail, INTERNAL};

impl RedisBackend {
    pub(super) fn acquire_mutex(&self, req: &Request, ask: bool) -> Result<Option<Acquire>> {
        let keys = [
            self.key(req.name, "lease"),
            self.key(req.name, "fence"),
            self.key(req.name, "state"),
        ];
        let ms = req.lease.as_millis().max(1).to_string();
        let h = req.holder;
        // The lease value after token, fence and time: see scripts.rs.
        let about = format!(
            "{}\n{}\n{}\n{}\n{}",
            h.host, h.pid, h.user, req.name, h.command
        );
        let args = [req.token, &ms, &about];
        let (items, asked) = self.run_with_info(&ACQUIRE_LUA, By::Hash, &keys, &args, ask)?;
        if let Err(e) = self.heed(&asked) {
            // Taken on a node that owns the name's slot: not kept.
            if int(items.first()) == Some(1) && int(items.get(3)) != Some(1) {
                let _ = self.release_mutex(req.name, req.token);
            }
            return Err(e);
        }
        match int(items.first()) {
            Some(1) => Ok(Some(Acquire::Acquired(Grant {
                fence: int(items.get(1)).context("fence missing from reply")? as u64,
                server_now_us: int(items.get(2)).unwrap_or(0),
                extended: int(items.get(3)) == Some(1),
                lease: req.lease,
                slot: None,
            }))),
            Some(0) => Ok(Some(Acquire::Busy(Some(lock_info(
                req.name,
                items.get(1),
                items.get(2),
            ))))),
            Some(3) => Ok(None),
            _ => Err(fail(
                INTERNAL,
                format!("unexpected acquire reply from {}", self.link.shown),
            )),
        }
    }

    pub(super) fn renew_mutex(
        &self,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Option<Check>> {
        let ms = lease.as_millis().max(1).to_string();
        let keys = [
            self.key(name, "lease"),
            self.key(name, "broken"),
            self.key(name, "state"),
        ];
        let items = self.run(&RENEW_LUA, By::Body, &keys, &[token, &ms])?;
        self.check_reply(name, &items)
    }

    pub(super) fn release_mutex(&self, name: &str, token: &str) -> Result<Option<Check>> {
        let keys = [
            self.key(name, "lease"),
            self.key(name, "wake"),
            self.key(name, "broken"),
            self.key(name, "state"),
        ];
        let items = self.run(&RELEASE_LUA, By::Hash, &keys, &[token, BATON_TTL_MS])?;
        self.check_reply(name, &items)
    }

    pub(super) fn force_mutex(
        &self,
        name: &str,
        only: Option<&str>,
        by: &str,
    ) -> Result<Option<Vec<LockInfo>>> {
        // A token id is at most 8 characters: a longer or empty one names nobody.
        let id = only.unwrap_or_default();
        let chars = id.chars().count();
        if only.is_some() && (chars == 0 || chars > 8) {
            return Ok(Some(Vec::new()));
        }
        let keys = [
            self.key(name, "lease"),
            self.key(name, "wake"),
            self.key(name, "broken"),
            self.key(name, "state"),
        ];
        // A full id matches as a prefix of the token; a shorter one, only a token that short.
        let full = if chars == 8 { "1" } else { "0" };
        let args = [BATON_TTL_MS, by, &keys[2], id, full];
        let items = self.run(&FORCE_LUA, By::Hash, &keys, &args)?;
        Ok(match int(items.first()) {
            Some(1) => Some(vec![lock_info(name, items.get(1), items.get(2))]),
            Some(3) => None,
            _ => Some(Vec::new()),
        })
    }

    /// A fast script's answer; None (3) leaves it to the engine.
    fn check_reply(&self, name: &str, items: &[Value]) -> Result<Option<Check>> {
        match int(items.first()) {
            Some(1) => Ok(Some(Check::Done)),
            Some(0) => Ok(Some(match broken_by(items.get(1)) {
                Some(by) => Check::Broken(Broken { by, now: None }),
                None => Check::NotHeld,
            })),
            Some(2) => {
                let other = lock_info(name, items.get(1), items.get(2));
                Ok(Some(match broken_by(items.get(3)) {
                    Some(by) => Check::Broken(Broken {
                        by,
                        now: Some(other),
                    }),
                    None => Check::HeldByOther(other),
                }))
            }
            Some(3) => Ok(None),
            _ => Err(fail(
                INTERNAL,
                format!("unexpected script reply from {}", self.link.shown),
            )),
        }
    }
}
