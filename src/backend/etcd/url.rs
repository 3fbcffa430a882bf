//! `etcd://[user[:password]@]host[:port][,host[:port]…][/][?options]` and
//! `etcds://…` (TLS): the cluster's client URLs, one list for failover.

use std::path::PathBuf;

use anyhow::Result;

use crate::error::{fail, USAGE};

/// etcd's registered client port.
pub const DEFAULT_PORT: u16 = 2379;

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

pub fn parse(url: &str, shown: &str) -> Result<Target> {
    let bad = |why: String| {
        fail(
            USAGE,
            format!("invalid etcd URL '{shown}': {why}; {EXPECTED}"),
        )
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("no scheme".into()))?;
    let tls = match scheme {
        "etcd" => false,
        "etcds" => true,
        other => return Err(bad(format!("unknown scheme '{other}'"))),
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err(bad("a path is not used (etcd has no databases)".into()));
    }
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((info, hosts)) => (Some(userinfo(info).map_err(bad)?), hosts),
        None => (None, authority),
    };
    let members = hosts
        .split(',')
        .map(|h| member(h).map_err(&bad))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Target {
        members,
        tls: tls.then(Tls::default),
        user,
    };
    options(&mut out, query).map_err(bad)?;
    Ok(out)
}

/// `user:password`, percent-decoded.
fn userinfo(info: &str) -> std::result::Result<(String, String), String> {
    let (user, pass) = info.split_once(':').unwrap_or((info, ""));
    let dec = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| "the user or password is not valid percent-encoded UTF-8".to_string())
    };
    let user = dec(user)?;
    if user.is_empty() {
        return Err("a password needs a user name".into());
    }
    Ok((user, dec(pass)?))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, as `host:port`.
fn member(h: &str) -> std::result::Result<String, String> {
    if h.is_empty() {
        return Err("an empty host in the member list".into());
    }
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("'{h}' has no closing ']'"))?;
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (h.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{p}' is not a port"))?,
        None => DEFAULT_PORT,
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("'{h}' has no host"));
    }
    Ok(format!("{host}:{port}"))
}

fn options(t: &mut Target, query: Option<&str>) -> std::result::Result<(), String> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    let (mut cert, mut key) = (None, None);
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("option {k} is not valid UTF-8"))?;
        if v.is_empty() {
            return Err(format!("option '{k}' needs a value"));
        }
        let Some(tls) = t.tls.as_mut() else {
            return Err(format!("option '{k}' is for TLS: use etcds://"));
        };
        match k {
            "cacert" => tls.ca = Some(PathBuf::from(v)),
            "cert" => cert = Some(PathBuf::from(v)),
            "key" => key = Some(PathBuf::from(v)),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    match (cert, key, t.tls.as_mut()) {
        (Some(c), Some(k), Some(tls)) => tls.identity = Some((c, k)),
        (None, None, _) => {}
        _ => return Err("a client certificate needs both cert= and key=".into()),
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes: Vec<u8> =
        ::url::form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Target {
        parse(url, "shown").unwrap_or_else(|e| panic!("{url}: {e:#}"))
    }

    fn err(url: &str) -> String {
        let e = parse(url, "etcd://shown").unwrap_err();
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
        assert!(err("etcd://").contains("empty host"), "{}", err("etcd://"));
        assert!(err("etcd://a,,b").contains("empty host"));
        assert!(err("etcd://a:99999").contains("not a port"));
        assert!(err("etcd://a/db").contains("path"));
        assert!(err("etcd://a?cacert=/x").contains("use etcds://"));
        assert!(err("etcds://a?cacert").contains("needs a value"));
        assert!(err("etcds://a?timeout=1").contains("unknown option 'timeout'"));
        assert!(err("etcds://a?cert=/c").contains("both cert= and key="));
        assert!(err("etcd://:pw@a").contains("needs a user"));
        assert!(err("etcd://[::1").contains("closing"));
        let e = err("etcd://u:secret@a/x");
        assert!(e.contains("etcd://shown") && !e.contains("secret"), "{e}");
    }
}
