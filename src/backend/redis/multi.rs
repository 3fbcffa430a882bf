//! URLs that name several Redis servers, which the `url` crate cannot parse
//! (its authority holds one host): `redis+sentinel://`, `redis+cluster://`
//! and `redlock://`, all of the form
//! `SCHEME://[user:pass@]host[:port],host[:port],…[/segment…][?key=value&…]`.

use anyhow::Result;

use crate::error::{fail, USAGE};

/// A multi-host URL, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multi {
    pub scheme: String,
    /// "user:pass" (or "user", or ":pass") as written, percent-encoded.
    pub userinfo: Option<String>,
    pub hosts: Vec<(String, u16)>,
    /// The path's segments after the hosts, empty ones dropped.
    pub path: Vec<String>,
    /// The query's pairs, decoded.
    pub query: Vec<(String, String)>,
}

impl Multi {
    /// Splits `url`; a host without a port gets `default_port`.
    pub fn parse(url: &str, default_port: u16) -> std::result::Result<Multi, String> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(authority[..i].to_string()), &authority[i + 1..]),
            None => (None, authority),
        };
        let hosts = hosts
            .split(',')
            .map(|h| host_port(h, default_port))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let path = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect();
        let query = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Multi {
            scheme: scheme.to_string(),
            userinfo: userinfo.filter(|u| !u.is_empty()),
            hosts,
            path,
            query,
        })
    }

    /// The password as written (percent-encoded), if any.
    pub fn password(&self) -> Option<&str> {
        let (_, p) = self.userinfo.as_deref()?.split_once(':')?;
        Some(p).filter(|p| !p.is_empty())
    }

    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A refused query parameter: every one must be known, so a typo is not ignored.
    pub fn check_params(&self, known: &[&str], shown: &str) -> Result<()> {
        match self
            .query
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(fail(
                USAGE,
                format!(
                    "invalid URL '{shown}': unknown parameter '{k}'; known here: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )),
        }
    }

    /// A `redis://` URL of one of the servers, with this URL's credentials and `db`.
    pub fn node_url(&self, host: &str, port: u16, db: i64) -> String {
        let auth = self
            .userinfo
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!("redis://{auth}{host}:{port}/{db}")
    }

    /// The URL as written, with its password and every secret parameter
    /// replaced by `***`.
    pub fn redacted(&self) -> String {
        let auth = match self.userinfo.as_deref() {
            None => String::new(),
            Some(u) => match u.split_once(':') {
                Some((user, p)) if !p.is_empty() => format!("{user}:***@"),
                _ => format!("{u}@"),
            },
        };
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        let mut out = format!("{}://{auth}{}", self.scheme, hosts.join(","));
        for seg in &self.path {
            out.push('/');
            out.push_str(seg);
        }
        if !self.query.is_empty() {
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret(k) { "***" } else { v.as_str() };
                    format!("{k}={v}")
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    }

    /// The URL's secrets, as written and decoded.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.password() {
            out.push(p.to_string());
            out.push(decode(p));
        }
        for (k, v) in &self.query {
            if is_secret(k) {
                out.push(v.clone());
            }
        }
        out
    }
}

/// Query parameters that hold a password.
fn is_secret(key: &str) -> bool {
    key == "pass" || key.ends_with("password")
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn host_port(h: &str, default_port: u16) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in a host")?;
        (host, after.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err("a host is missing".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{p}' is not a port"))?,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_path_and_query() {
        let m = Multi::parse(
            "redis+sentinel://u:p%40ss@s1:26379,s2,[::1]:26381/mymaster/2?wait_replicas=1",
            26379,
        )
        .unwrap();
        assert_eq!(m.userinfo.as_deref(), Some("u:p%40ss"));
        assert_eq!(
            m.hosts,
            [
                ("s1".to_string(), 26379),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!(m.path, ["mymaster", "2"]);
        assert_eq!(m.param("wait_replicas"), Some("1"));
        assert_eq!(m.node_url("::1", 7000, 2), "redis://u:p%40ss@[::1]:7000/2");
        assert_eq!(
            m.redacted(),
            "redis+sentinel://u:***@s1:26379,s2:26379,[::1]:26381/mymaster/2?wait_replicas=1"
        );
        assert!(m.secrets().contains(&"p@ss".to_string()));
    }

    #[test]
    fn refuses_what_is_not_a_host_list() {
        assert!(Multi::parse("redlock://a:1,,b:2", 6379).is_err());
        assert!(Multi::parse("redlock://a:x", 6379).is_err());
        assert!(Multi::parse("redlock://a:0", 6379).is_err());
        assert!(Multi::parse("nothing", 6379).is_err());
        let m = Multi::parse("redlock://a?sentinel_password=s3", 6379).unwrap();
        assert_eq!(m.redacted(), "redlock://a:6379?sentinel_password=***");
        assert!(m.check_params(&[], "x").is_err());
    }
}
