//! Who broke which lease, for stores that keep it in the name's own value
//! (the SQL row's `state` column) rather than beside it: a short list of
//! records that ride along with the lock's state and never enter its plans.
//!
//! A record lives only as long as the lease it describes would have: the
//! holder's renewal (before that expiry) and a watcher (which asks only of
//! a lease that vanished before its expiry) are the only ones who ask, so
//! a record never outlives a question about it, and a value whose records
//! all ran out is a value without them.

use serde::{Deserialize, Serialize};

use super::Write;
use crate::backend::kinds::{State, MAX_SLOTS};
use crate::names::token_id;

/// Records kept at most: a bound on the value's size when leases are broken
/// faster than they run out (as many as a semaphore's holders, which a
/// force may break at once).
pub const MAX_BREAKS: usize = MAX_SLOTS as usize;

/// One lease broken with `release --force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    #[serde(rename = "t")]
    pub token: String,
    /// "user@host (pid N)" of the breaker.
    #[serde(rename = "by")]
    pub by: String,
    /// The broken lease's expiry (µs, the store's clock): the record's end.
    #[serde(rename = "u")]
    pub until_us: i64,
}

/// The records a write at `now` of `new` leaves: the live ones of `kept`
/// (but none of a token that holds again: a `--token` reused after its
/// lease was broken), then those of the leases `w` breaks, the newest
/// [`MAX_BREAKS`] at most.
pub fn after_write(kept: &[Break], now: i64, new: &State, w: &Write) -> Vec<Break> {
    let holds = |t: &str| new.holders.iter().any(|h| h.token == t);
    let fresh = w.broken.iter().filter(|(_, until)| *until > now);
    let mut out: Vec<Break> = kept
        .iter()
        .filter(|b| b.until_us > now && !holds(&b.token))
        .filter(|b| w.broken.iter().all(|(t, _)| *t != b.token))
        .cloned()
        .collect();
    out.extend(fresh.map(|(token, until)| Break {
        token: token.clone(),
        by: w.by.to_string(),
        until_us: *until,
    }));
    let over = out.len().saturating_sub(MAX_BREAKS);
    out.drain(..over);
    out
}

/// Who broke `token`'s lease, if a live record says.
pub fn by_token(kept: &[Break], now: i64, token: &str) -> Option<String> {
    live(kept, now)
        .find(|b| b.token == token)
        .map(|b| b.by.clone())
}

/// Who broke the lease whose token id is `id` (a watcher knows no more),
/// if a live record says.
pub fn by_id(kept: &[Break], now: i64, id: &str) -> Option<String> {
    live(kept, now)
        .find(|b| token_id(&b.token) == id)
        .map(|b| b.by.clone())
}

fn live(kept: &[Break], now: i64) -> impl Iterator<Item = &Break> {
    kept.iter().filter(move |b| b.until_us > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kinds::Held;

    fn rec(token: &str, until_us: i64) -> Break {
        Break {
            token: token.into(),
            by: format!("breaker of {token}"),
            until_us,
        }
    }

    fn write<'a>(broken: &'a [(String, i64)]) -> Write<'a> {
        Write {
            wake: true,
            until: None,
            broken,
            by: "me@vm (pid 1)",
        }
    }

    #[test]
    fn a_write_keeps_live_records_and_adds_the_leases_it_breaks() {
        let kept = [rec("old", 500), rec("live", 2_000)];
        let broken = [("new".to_string(), 3_000), ("dead".to_string(), 900)];
        let out = after_write(&kept, 1_000, &State::default(), &write(&broken));
        let tokens: Vec<&str> = out.iter().map(|b| b.token.as_str()).collect();
        assert_eq!(tokens, ["live", "new"], "the expired and the dead go");
        assert_eq!(out[1].by, "me@vm (pid 1)");
        assert_eq!(out[1].until_us, 3_000, "until the lease's own expiry");
        assert!(after_write(&kept, 2_000, &State::default(), &write(&[])).is_empty());
    }

    #[test]
    fn a_token_that_holds_again_or_is_broken_again_has_one_record_at_most() {
        let kept = [rec("t", 5_000), rec("u", 5_000)];
        let mut st = State::default();
        st.holders.push(Held {
            token: "t".into(),
            mode: Default::default(),
            slot: 0,
            fence: 1,
            holder: Default::default(),
            acquired_us: 0,
            expires_us: 9_000,
        });
        let broken = [("u".to_string(), 6_000)];
        let out = after_write(&kept, 1_000, &st, &write(&broken));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].token.as_str(), out[0].until_us), ("u", 6_000));
    }

    #[test]
    fn records_are_bounded_newest_kept() {
        let kept: Vec<Break> = (0..MAX_BREAKS)
            .map(|i| rec(&format!("k{i}"), 9_000))
            .collect();
        let broken = [("newest".to_string(), 9_000)];
        let out = after_write(&kept, 1_000, &State::default(), &write(&broken));
        assert_eq!(out.len(), MAX_BREAKS);
        assert_eq!(out[0].token, "k1");
        assert_eq!(out.last().unwrap().token, "newest");
    }

    #[test]
    fn only_live_records_answer_by_token_or_token_id() {
        let kept = [rec("0123456789abcdef", 2_000)];
        assert_eq!(
            by_token(&kept, 1_000, "0123456789abcdef").as_deref(),
            Some("breaker of 0123456789abcdef")
        );
        assert!(by_id(&kept, 1_000, "01234567").is_some());
        assert!(by_id(&kept, 1_000, "01234568").is_none());
        assert!(by_token(&kept, 2_000, "0123456789abcdef").is_none());
        assert!(by_id(&kept, 2_000, "01234567").is_none());
    }
}
