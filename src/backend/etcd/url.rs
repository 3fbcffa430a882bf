//! `etcd://[user[:password]@]host[:port][,host[:port]…][/][?options]` and
//! `etcds://…` (TLS): the cluster's client URLs, one list for failover.

use std::path::PathBuf;

use anyhow::Result;

use crate::backend::url::bracketed;
use crate::backend::Url;
use crate::error::{fail, USAGE};

/// What an etcd URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` of each member, in the order given (the first is tried first).
    pub members: Vec<String>,
    pub tls: Option<Tls>,
    /// User and password for etcd's own authentication.
    pub user: Option<(String, String)>,
}

/// TLS settings from `etcds://` options, named as etcdctl names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// `cacert=`: trust this CA instead of the system's store.
    pub ca: Option<PathBuf>,
    /// `cert=` and `key=`: a client certificate (etcd's `--client-cert-auth`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

const EXPECTED: &str = "expected etcd://[user:pass@]host[:port][,host[:port]…] \
     or etcds://…?cacert=/path/ca.pem[&cert=…&key=…]";

/// The TLS options, as etcdctl names them.
const OPTIONS: &[&str] = &["cacert", "cert", "key"];

/// What an `etcd://` or `etcds://` URL asks for.
pub fn target(url: &Url) -> Result<Target> {
    let bad = |why: String| {
        fail(
            USAGE,
            format!("invalid etcd URL '{}': {why}; {EXPECTED}", url.shown()),
        )
    };
    if url.hosts.is_empty() {
        return Err(bad("no member named".into()));
    }
    if !url.path.trim_start_matches('/').is_empty() {
        return Err(bad("a path is not used (etcd has no databases)".into()));
    }
    let user = match (url.user(), url.password()) {
        (Some(u), p) => Some((u, p.unwrap_or_default())),
        (None, Some(_)) => return Err(bad("a password needs a user name".into())),
        (None, None) => None,
    };
    let members = url
        .hosts
        .iter()
        .map(|(h, p)| format!("{}:{p}", bracketed(h)))
        .collect();
    let mut out = Target {
        members,
        tls: (url.scheme == "etcds").then(Tls::default),
        user,
    };
    options(&mut out, url).map_err(bad)?;
    Ok(out)
}

fn options(t: &mut Target, url: &Url) -> std::result::Result<(), String> {
    if let Some(k) = url.unknown_param(OPTIONS) {
        return Err(format!(
            "unknown option '{k}' (etcds:// takes {})",
            OPTIONS.join(", ")
        ));
    }
    let (mut cert, mut key) = (None, None);
    for (k, v) in &url.query {
        if v.is_empty() {
            return Err(format!("option '{k}' needs a value"));
        }
        let Some(tls) = t.tls.as_mut() else {
            return Err(format!("option '{k}' is for TLS: use etcds://"));
        };
        match k.as_str() {
            "cacert" => tls.ca = Some(PathBuf::from(v)),
            "cert" => cert = Some(PathBuf::from(v)),
            _ => key = Some(PathBuf::from(v)),
        }
    }
    match (cert, key, t.tls.as_mut()) {
        (Some(c), Some(k), Some(tls)) => tls.identity = Some((c, k)),
        (None, None, _) => {}
        _ => return Err("a client certificate needs both cert= and key=".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target> {
        target(&crate::backend::parse_url(url)?)
    }

    fn ok(url: &str) -> Target {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e:#}"))
    }

    fn err(url: &str) -> String {
        let e = parse(url).unwrap_err();
        assert_eq!(crate::error::code_of(&e), USAGE);
        e.to_string()
    }

    #[test]
    fn members_in_order_with_default_ports() {
        let t = ok("etcd://h1:2379,h2,[::1]:4001,[fe80::1]/");
        assert_eq!(
            t.members,
            ["h1:2379", "h2:2379", "[::1]:4001", "[fe80::1]:2379"]
        );
        assert_eq!((t.tls, t.user), (None, None));
        assert_eq!(ok("etcd://127.0.0.1:23790").members, ["127.0.0.1:23790"]);
    }

    #[test]
    fn credentials_are_decoded() {
        let t = ok("etcd://root:p%40ss+w:rd@a:1,b:2");
        assert_eq!(t.user, Some(("root".into(), "p@ss+w:rd".into())));
        assert_eq!(t.members, ["a:1", "b:2"]);
        assert_eq!(ok("etcd://me@a").user, Some(("me".into(), String::new())));
    }

    #[test]
    fn tls_options_as_etcdctl_names_them() {
        let t = ok("etcds://a,b?cacert=/etc/ca.pem&cert=/c.pem&key=/k%20x.pem");
        let tls = t.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k x.pem")))
        );
        assert_eq!(ok("etcds://a").tls, Some(Tls::default()));
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_what() {
        assert!(err("etcd://").contains("no member"), "{}", err("etcd://"));
        assert!(err("etcd://a,,b").contains("empty"));
        assert!(err("etcd://h\u{e9}te").contains("not ASCII"));
        let e = err("etcd://a?bogus=1");
        assert!(
            e.contains("unknown option 'bogus'") && !e.contains("for TLS"),
            "{e}"
        );
        assert!(err("etcd://a:99999").contains("not a port"));
        assert!(err("etcd://a/db").contains("path"));
        assert!(err("etcd://a?cacert=/x").contains("use etcds://"));
        assert!(err("etcds://a?cacert").contains("needs a value"));
        assert!(err("etcds://a?timeout=1").contains("unknown option 'timeout'"));
        assert!(err("etcds://a?cert=/c").contains("both cert= and key="));
        assert!(err("etcd://:pw@a").contains("needs a user"));
        assert!(err("etcd://[::1").contains("closing"));
        let e = err("etcd://u:secret@a/x");
        assert!(
            e.contains("etcd://u:***@a/x") && !e.contains("secret"),
            "{e}"
        );
    }
}
