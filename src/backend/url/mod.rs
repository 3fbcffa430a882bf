//! Backend URLs, parsed once into a [`Url`]: scheme, credentials, one or
//! more hosts, a path and a query, written
//! `SCHEME://[user[:password]@]host[:port][,host[:port]…][/path][?key=value&…]`
//! for every scheme with hosts (the `url` crate's parser takes one host only,
//! and none for a socket), or `SCHEME://path` for a file. What messages show
//! of a URL (its redacted form) and the secrets that output scrubs come from
//! the same parse.

#[cfg(test)]
mod tests;

/// How a scheme's URLs go on after `SCHEME://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Credentials, hosts (each on `default_port` unless it names one; none
    /// for a unix socket), a path and a query.
    Hosts { default_port: u16 },
    /// A file's path, as written.
    Path,
}

/// A parsed backend URL. Its `Debug` shows the redacted form only.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    raw: String,
    pub scheme: String,
    /// "user" or "user:password", as written (percent-encoded).
    userinfo: Option<String>,
    /// Each host and its port, in the order written; an IPv6 address without
    /// its brackets.
    pub hosts: Vec<(String, u16)>,
    /// From the '/' after the hosts up to the query, as written; for
    /// [`Parts::Path`], everything after `SCHEME://`.
    pub path: String,
    /// The query's pairs, decoded as the drivers decode them.
    pub query: Vec<(String, String)>,
    shown: String,
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Url").field(&self.shown).finish()
    }
}

/// Query parameters that hold a password.
fn is_secret(key: &str) -> bool {
    key == "pass" || key.ends_with("password")
}

impl Url {
    /// Parses `raw`, whose scheme's URLs have `parts`; the error says what is
    /// wrong with it, in a clause.
    pub fn parse(raw: &str, parts: Parts) -> Result<Url, String> {
        let (scheme, rest) = raw.split_once("://").ok_or("no '://' after the scheme")?;
        let Parts::Hosts { default_port } = parts else {
            return Ok(Url {
                raw: raw.into(),
                scheme: scheme.into(),
                userinfo: None,
                hosts: Vec::new(),
                path: rest.into(),
                query: Vec::new(),
                shown: raw.into(),
            });
        };
        if rest.contains('#') {
            return Err("it has a '#' (in a password, write it as %23)".into());
        }
        let whole = rest;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hosts_part) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(u) = userinfo {
            if u.contains('@') {
                return Err(
                    "the user or password holds an '@': write it as %40 (percent-encode \
                     '@', ':', '/', '?' and '#' in a password)"
                        .into(),
                );
            }
            decode_utf8(u).ok_or("the user or password is not valid percent-encoded UTF-8")?;
        }
        let hosts = if hosts_part.is_empty() {
            Vec::new()
        } else {
            hosts_part
                .split(',')
                .map(|h| host_port(h, default_port))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|why| match whole[authority.len()..].contains('@') {
                    // `u:pa/ss@host`: the authority ended inside the password.
                    true => "a '/' or '?' in the user or password must be written %2F or %3F"
                        .to_string(),
                    false => why,
                })?
        };
        let query: Vec<(String, String)> = ::url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut url = Url {
            raw: raw.into(),
            scheme: scheme.into(),
            userinfo: userinfo.filter(|u| !u.is_empty()).map(String::from),
            hosts,
            path: path.into(),
            query,
            shown: String::new(),
        };
        url.shown = url.redacted(hosts_part, raw.split_once('?').map(|(_, q)| q));
        Ok(url)
    }

    /// The URL as given, for a driver that reads URLs itself or a child
    /// process; never for a message.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The URL for messages: its password and secret parameters as `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The user name, decoded.
    pub fn user(&self) -> Option<String> {
        let u = self.userinfo.as_deref()?;
        let user = u.split_once(':').map_or(u, |(user, _)| user);
        Some(decode(user)).filter(|u| !u.is_empty())
    }

    /// The password, decoded.
    pub fn password(&self) -> Option<String> {
        self.raw_password().map(decode)
    }

    /// "user:password" as written (percent-encoded), to build another URL with.
    pub fn userinfo(&self) -> Option<&str> {
        self.userinfo.as_deref()
    }

    fn raw_password(&self) -> Option<&str> {
        let (_, p) = self.userinfo.as_deref()?.split_once(':')?;
        Some(p).filter(|p| !p.is_empty())
    }

    /// The path's segments, decoded, empty ones dropped.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect()
    }

    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter not in `known`: every one must be known,
    /// so that a typo is not ignored.
    pub fn unknown_param(&self, known: &[&str]) -> Option<&str> {
        self.query
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k))
    }

    /// A `redis://` URL of one server, with this URL's credentials and `db`.
    pub fn node_url(&self, host: &str, port: u16, db: i64) -> String {
        let auth = self
            .userinfo
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!("redis://{auth}{}:{port}/{db}", bracketed(host))
    }

    /// The password and every secret parameter, as written and decoded, for
    /// output to scrub even where a driver echoes one back.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.raw_password() {
            out.push(p.to_string());
            out.push(decode(p));
        }
        let raw_query = self.raw.split_once('?').map_or("", |(_, q)| q);
        for pair in raw_query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if is_secret(&decode(k)) {
                out.push(v.to_string());
                out.push(decode_form(v));
            }
        }
        // A secret of one or two characters would blank out every message.
        out.retain(|s| s.len() >= 3);
        out.sort();
        out.dedup();
        out
    }

    fn redacted(&self, hosts: &str, query: Option<&str>) -> String {
        let auth = match self.userinfo.as_deref() {
            None => String::new(),
            Some(u) => match u.split_once(':') {
                Some((user, p)) if !p.is_empty() => format!("{user}:***@"),
                _ => format!("{u}@"),
            },
        };
        let mut out = format!("{}://{auth}{hosts}{}", self.scheme, self.path);
        if let Some(q) = query {
            let pairs: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret(&decode(k)) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a port must be 1 to 65535.
fn host_port(h: &str, default_port: u16) -> Result<(String, u16), String> {
    if h.is_empty() {
        return Err("a host is empty (two commas, or a comma at an end?)".into());
    }
    let (host, port) =
        if let Some(v6) = h.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{h}' has no closing ']'"))?;
            if addr.is_empty()
                || !addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || ":.%".contains(c))
            {
                return Err(format!("'[{addr}]' is not an IPv6 address"));
            }
            match after {
                "" => (addr, None),
                _ => (
                    addr,
                    Some(after.strip_prefix(':').ok_or_else(|| {
                        format!("'{h}' has something other than ':PORT' after ']'")
                    })?),
                ),
            }
        } else {
            match h.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (h, None),
            }
        };
    if host.is_empty() {
        return Err(format!("'{h}' has no host before its port"));
    }
    if !host.is_ascii() {
        return Err(format!(
            "host '{host}' is not ASCII: write an international name in its xn-- (punycode) form"
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~%!$&'()*+;=:".contains(*c)))
    {
        return Err(format!("host '{host}' has a '{c}', which no host name has"));
    }
    if host.contains(':') && !h.starts_with('[') {
        return Err(format!(
            "'{h}' has two ':' (write an IPv6 address in [brackets])"
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{p}' is not a port (1 to 65535)"))?,
    };
    Ok((host.to_string(), port))
}

/// A host as it goes before `:port` in a URL.
pub fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Percent-decoding, with '+' kept (it is a space only in a query).
pub fn decode(s: &str) -> String {
    decode_form(&s.replace('+', "%2B"))
}

/// Like [`decode`], None unless the bytes are UTF-8.
pub fn decode_utf8(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                bytes.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Form decoding ('+' is a space), as a query value.
fn decode_form(s: &str) -> String {
    ::url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What a message may show of a text that is not a URL dlock can parse:
/// nothing before an '@' (a password may be there), nothing after a '?',
/// and at most 80 characters.
pub fn shown_loosely(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let mut out = match text[start..].rfind('@') {
        Some(at) => format!("{}***@{}", &text[..start], &text[start + at + 1..]),
        None => text.to_string(),
    };
    if let Some(q) = out.find('?') {
        out.truncate(q);
        out.push_str("?…");
    }
    if out.chars().count() > 80 {
        out = out.chars().take(79).collect::<String>() + "…";
    }
    out
}

/// The secrets of a text that is not a URL dlock can parse: whatever
/// follows a ':' before its last '@'.
pub fn loose_secrets(text: &str) -> Vec<String> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let userinfo = text[start..].rsplit_once('@').map(|(u, _)| u);
    match userinfo.and_then(|u| u.split_once(':')) {
        Some((_, p)) if p.len() >= 3 => vec![p.to_string(), decode(p)],
        _ => Vec::new(),
    }
}
