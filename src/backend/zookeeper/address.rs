//! `zk://[user:pass@]host1[:port],host2[:port]…[/chroot]` (also
//! `zookeeper://`) as the client connects, and names as node names.

use anyhow::Result;

use crate::backend::url::bracketed;
use crate::backend::Url;
use crate::error::{fail, USAGE};

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

pub use crate::backend::forms::ZOOKEEPER as FORM;

fn bad(url: &Url, why: &str) -> anyhow::Error {
    fail(
        USAGE,
        format!(
            "invalid ZooKeeper URL '{}': {why}; expected {FORM}",
            url.shown()
        ),
    )
}

/// What a zk:// or zookeeper:// URL names.
pub fn address(url: &Url) -> Result<Address> {
    if !url.query.is_empty() || url.as_str().contains('?') {
        return Err(bad(url, "it takes no query"));
    }
    if url.hosts.is_empty() {
        return Err(bad(url, "no server named"));
    }
    let digest = match (url.userinfo(), url.user(), url.password()) {
        (None, _, _) => None,
        (Some(_), Some(user), Some(pass)) if !user.contains(':') => Some(format!("{user}:{pass}")),
        _ => return Err(bad(url, "digest credentials are user:password")),
    };
    let hosts: Vec<String> = url
        .hosts
        .iter()
        .map(|(h, p)| format!("{}:{p}", bracketed(h)))
        .collect();
    Ok(Address {
        hosts: hosts.join(","),
        chroot: chroot(url)?,
        digest,
    })
}

fn chroot(url: &Url) -> Result<String> {
    let path = url.path.trim_end_matches('/');
    if path.is_empty() {
        return Ok(String::new());
    }
    if path
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad(url, &format!("'{path}' is not a node path")));
    }
    // The server keeps its quotas and configuration there.
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err(bad(
            url,
            &format!("'{path}' is ZooKeeper's own tree: choose another chroot"),
        ));
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

    fn parse(url: &str) -> Result<Address> {
        address(&crate::backend::parse_url(url)?)
    }

    #[test]
    fn parses_hosts_chroot_and_credentials() {
        let a = parse("zk://u:p%40ss@a:2182,b,[::1]:3/x/y/").unwrap();
        assert_eq!(a.hosts, "a:2182,b:2181,[::1]:3");
        assert_eq!(a.chroot, "/x/y");
        assert_eq!(a.digest.as_deref(), Some("u:p@ss"));
        let b = parse("zookeeper://h").unwrap();
        assert_eq!(
            (b.hosts.as_str(), b.chroot.as_str(), b.digest),
            ("h:2181", "", None)
        );
        assert_eq!(parse("zk://h/zookeeperx").unwrap().chroot, "/zookeeperx");
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
            "zk://u:secret@a?x",
            "zk://user@a",
            "zk://a/zookeeper",
            "zk://a/zookeeper/quota",
        ] {
            let e = parse(url).unwrap_err();
            assert_eq!(crate::error::code_of(&e), USAGE, "{url}: {e}");
            assert!(!e.to_string().contains("secret"), "{url}: {e}");
        }
        let e = parse("zk://a/zookeeper").unwrap_err().to_string();
        assert!(e.contains("ZooKeeper's own tree"), "{e}");
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
