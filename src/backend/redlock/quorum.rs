//! The arithmetic of Redlock, apart from any network: majorities, the
//! validity left after reaching one, which other holder to report, and
//! what a round of renewals means.

use std::time::Duration;

/// Nodes that must agree: a strict majority.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The clock drift allowed for: 1% of the lease plus 2 ms, as the
/// distributed-locks page and its implementations do.
pub fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// What is left of `lease` after `elapsed` (and the drift), if anything:
/// the validity that the renewal deadline counts from.
pub fn validity(lease: Duration, elapsed: Duration) -> Option<Duration> {
    lease
        .checked_sub(elapsed)?
        .checked_sub(drift(lease))
        .filter(|v| !v.is_zero())
}

/// How long until fewer than `q` of the nodes in `ttls` (ms) still hold a
/// lease: its q-th longest TTL, or None when fewer than q hold it at all.
pub fn majority_ttl(ttls: &[i64], q: usize) -> Option<i64> {
    let mut t: Vec<i64> = ttls.iter().copied().filter(|t| *t > 0).collect();
    t.sort_unstable_by(|a, b| b.cmp(a));
    t.get(q.checked_sub(1)?).copied()
}

/// The other token seen on most nodes, and the TTLs of its leases there.
pub fn strongest(others: &[(String, i64, String)]) -> Option<(&str, Vec<i64>)> {
    let mut best: Option<(&str, Vec<i64>)> = None;
    for (token, _, _) in others {
        let ttls: Vec<i64> = others
            .iter()
            .filter(|(t, _, _)| t == token)
            .map(|(_, ttl, _)| *ttl)
            .collect();
        if best.as_ref().is_none_or(|(_, b)| ttls.len() > b.len()) {
            best = Some((token, ttls));
        }
    }
    best
}

/// What a round of renewals means for the holder.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A majority extended the lease.
    Held,
    /// Too few answered to tell: try again before the deadline.
    Unsure,
    /// Fewer than a majority extended it and a node said it is not the
    /// token's: the lease expired there, was broken, or the node lost it
    /// (a restart), and another client may already hold a majority.
    Lost,
}

pub fn verdict(extended: usize, failed: usize, refused: usize, n: usize) -> Verdict {
    let q = majority(n);
    if extended >= q {
        Verdict::Held
    } else if refused > 0 || extended + failed < q {
        Verdict::Lost
    } else {
        Verdict::Unsure
    }
}

/// A random pause of 50 to 250 ms before trying again after a split vote,
/// so that contenders stop colliding (the page's "random delay").
pub fn backoff() -> Duration {
    crate::backoff::random_between(Duration::from_millis(50), Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities_and_validity() {
        assert_eq!((majority(3), majority(5), majority(7)), (2, 3, 4));
        let lease = Duration::from_secs(10);
        assert_eq!(drift(lease), Duration::from_millis(102));
        assert_eq!(
            validity(lease, Duration::from_millis(98)),
            Some(Duration::from_millis(9800))
        );
        assert_eq!(validity(lease, Duration::from_millis(9898)), None);
        assert_eq!(validity(lease, Duration::from_secs(11)), None);
    }

    #[test]
    fn the_majority_ttl_is_the_qth_longest() {
        assert_eq!(majority_ttl(&[500, 900, 100, -2, 700], 3), Some(500));
        assert_eq!(majority_ttl(&[500, 900], 3), None);
        assert_eq!(majority_ttl(&[5, 0, -1], 1), Some(5));
    }

    #[test]
    fn the_strongest_other_holder_wins() {
        let o = |t: &str, ttl| (t.to_string(), ttl, String::new());
        let others = [o("a", 5), o("b", 7), o("a", 9)];
        let (t, ttls) = strongest(&others).unwrap();
        assert_eq!((t, ttls), ("a", vec![5, 9]));
        assert!(strongest(&[]).is_none());
    }

    #[test]
    fn renewals_count_only_with_a_majority() {
        assert_eq!(verdict(3, 2, 0, 5), Verdict::Held);
        assert_eq!(verdict(3, 0, 2, 5), Verdict::Held);
        // Two stopped nodes and one that answers late: cannot tell yet.
        assert_eq!(verdict(2, 3, 0, 5), Verdict::Unsure);
        // A node of the majority forgot the lease (go-redsync#186): lost.
        assert_eq!(verdict(2, 2, 1, 5), Verdict::Lost);
        assert_eq!(verdict(1, 1, 0, 5), Verdict::Lost);
    }

    #[test]
    fn backoff_stays_in_range() {
        for _ in 0..50 {
            let b = backoff();
            assert!(b >= Duration::from_millis(50) && b < Duration::from_millis(250));
        }
    }
}
