//! `zk://[user:pass@]host1[:port],host2[:port]…[/chroot]` (also
//! `zookeeper://`): the url crate cannot parse a list of hosts, so this
//! does, and it also turns names into node names.

use anyhow::Result;

use crate::error::{fail, USAGE};

/// ZooKeeper's client port when the URL gives none.
const DEFAULT_PORT: u16 = 2181;

/// What a zk:// URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// "host:port,host:port", as the client connects.
    pub hosts: String,
    /// "" or "/a/b": where dlock's nodes live (created when missing).
    pub chroot: String,
    /// Digest credentials "user:password", decoded.
    pub digest: Option<String>,
}

fn bad(shown: &str, why: &str) -> anyhow::Error {
    fail(
        USAGE,
        format!(
            "invalid ZooKeeper URL '{shown}': {why}; expected zk://[user:pass@]host1[:port],host2[:port]…[/chroot]"
        ),
    )
}

/// Parses a zk:// or zookeeper:// URL; `shown` is its redacted form, for errors.
pub fn parse(url: &str, shown: &str) -> Result<Address> {
    let rest = ["zk://", "zookeeper://"]
        .iter()
        .find_map(|s| url.strip_prefix(s))
        .ok_or_else(|| bad(shown, "the scheme must be zk:// or zookeeper://"))?;
    if rest.contains(['?', '#']) {
        return Err(bad(shown, "it takes no query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (digest, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(credentials(userinfo, shown)?), hosts),
        None => (None, authority),
    };
    let hosts = hosts
        .split(',')
        .map(|h| host(h, shown))
        .collect::<Result<Vec<_>>>()?
        .join(",");
    Ok(Address {
        hosts,
        chroot: chroot(path, shown)?,
        digest,
    })
}

fn credentials(userinfo: &str, shown: &str) -> Result<String> {
    let (user, pass) = userinfo
        .split_once(':')
        .ok_or_else(|| bad(shown, "digest credentials are user:password"))?;
    let decode = |s: &str| {
        ::url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (user, pass) = (decode(user), decode(pass));
    if user.is_empty() || user.contains(':') {
        return Err(bad(shown, "the user name is empty or contains ':'"));
    }
    Ok(format!("{user}:{pass}"))
}

/// "host", "host:port" or "[v6]:port", with the default port added.
fn host(h: &str, shown: &str) -> Result<String> {
    let (name, port) = match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => (&h[..i], Some(&h[i + 1..])),
        _ => (h, None),
    };
    if name.is_empty() || name.contains(['/', ' ', '@']) {
        return Err(bad(shown, &format!("'{h}' is not a host")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(shown, &format!("'{p}' is not a port")))?,
    };
    Ok(format!("{name}:{port}"))
}

fn chroot(path: &str, shown: &str) -> Result<String> {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Ok(String::new());
    }
    if path
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad(shown, &format!("'{path}' is not a node path")));
    }
    Ok(path.to_string())
}

/// A name or prefix as one node name: letters, digits, '-' and '_' as they
/// are, every other byte as %XX, so that any name (with '/', '.', or
/// characters ZooKeeper refuses) is one node and reads back the same.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode`]; None for a node dlock did not name.
pub fn decode(node: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(node.len());
    let mut it = node.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_chroot_and_credentials() {
        let a = parse("zk://u:p%40ss@a:2182,b,[::1]:3/x/y/", "shown").unwrap();
        assert_eq!(a.hosts, "a:2182,b:2181,[::1]:3");
        assert_eq!(a.chroot, "/x/y");
        assert_eq!(a.digest.as_deref(), Some("u:p@ss"));
        let b = parse("zookeeper://h", "s").unwrap();
        assert_eq!(
            (b.hosts.as_str(), b.chroot.as_str(), b.digest),
            ("h:2181", "", None)
        );
    }

    #[test]
    fn refuses_what_it_cannot_use_naming_only_the_redacted_url() {
        for url in [
            "zk://",
            "zk://a:0",
            "zk://a:x",
            "zk://a,,b",
            "zk://a/b//c",
            "zk://a?x=1",
            "zk://secret@a",
        ] {
            let e = parse(url, "zk://shown").unwrap_err().to_string();
            assert!(
                e.contains("zk://shown") && !e.contains("secret"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn names_round_trip_through_node_names() {
        for n in [
            "plain-name_1",
            "a/b",
            ".",
            "..",
            "🔒 x",
            "100%",
            "it's \"q\"",
        ] {
            let e = encode(n);
            assert!(e
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)));
            assert_eq!(decode(&e).as_deref(), Some(n));
        }
        assert_eq!(decode("%G1"), None);
    }
}
