//! A `redis://` URL that names a Redis server of the wrong kind (a Cluster
//! node or a Sentinel), told from the first refusal it answers with, so
//! that a plain server costs nothing extra; and server error text cut
//! before the arguments it echoes (a token among them).

use redis::{Connection, RedisError, Value};

use crate::error::{fail_setting, UNAVAILABLE};

/// The line for a Cluster node or Sentinel behind a single-server URL, if
/// `e` (the first refusal of a request on `con`) shows it is one. A refused
/// request changed nothing: the error says so.
pub fn kind_error(
    con: &mut Connection,
    e: &RedisError,
    shown: &str,
    at: Option<&(String, u16)>,
) -> Option<anyhow::Error> {
    let at = at.map_or_else(|| "HOST:PORT".to_string(), |(h, p)| host_port(h, *p));
    if matches!(
        e.code(),
        Some("MOVED" | "ASK" | "CROSSSLOT" | "CLUSTERDOWN")
    ) {
        return Some(fail_setting(UNAVAILABLE, cluster_node(shown, &at)));
    }
    let unknown =
        e.code() == Some("ERR") && e.detail().is_some_and(|d| d.starts_with("unknown command"));
    if !unknown {
        return None;
    }
    // A Sentinel knows none of the data commands; its ROLE says what it is
    // and which services it watches.
    let role: Value = redis::cmd("ROLE").query(con).ok()?;
    let Value::Array(fields) = role else {
        return None;
    };
    if !matches!(fields.first(), Some(Value::BulkString(b)) if b == b"sentinel") {
        return None;
    }
    let services: Vec<String> = match fields.get(1) {
        Some(Value::Array(names)) => names.iter().map(super::text).collect(),
        _ => Vec::new(),
    };
    Some(fail_setting(UNAVAILABLE, sentinel(shown, &at, &services)))
}

/// A Cluster node behind a single-server URL.
pub fn cluster_node(shown: &str, at: &str) -> String {
    format!(
        "{shown} is a Redis Cluster node, which holds only some of the keys; \
         use redis+cluster://{at} (more nodes may follow, comma-separated)"
    )
}

fn sentinel(shown: &str, at: &str, services: &[String]) -> String {
    let service = match services {
        [one] => one.clone(),
        _ => "SERVICE".to_string(),
    };
    let watched = match services {
        [] | [_] => String::new(),
        many => format!(" (it watches {})", many.join(", ")),
    };
    format!(
        "{shown} is a Redis Sentinel, not a Redis server; use \
         redis+sentinel://{at}/{service}{watched}"
    )
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What kind of reply `v` is, for an error line: never its contents, which
/// may hold a token.
pub(crate) fn shape(v: Option<&Value>) -> &'static str {
    match v {
        None => "no reply",
        Some(Value::Nil) => "nil",
        Some(Value::Int(_)) => "an integer",
        Some(Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. }) => {
            "a string"
        }
        Some(Value::Okay) => "OK",
        Some(_) => "another kind of value",
    }
}

/// Whether `INFO cluster` says the server runs in cluster mode.
pub fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|l| l.trim_end() == "cluster_enabled:1")
}

/// A driver error as text, cut before the arguments a server echoes
/// ("unknown command 'EVALSHA', with args beginning with: …"): they may
/// hold a request's token.
pub fn text(e: &RedisError) -> String {
    let s = e.to_string();
    match s.find(", with args beginning with") {
        Some(i) => s[..i].to_string(),
        None => match s.find("with args beginning with") {
            Some(i) => s[..i].trim_end().to_string(),
            None => s,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_arguments_are_cut() {
        let detail = "unknown command 'EVALSHA', with args beginning with: 'sha' '3' \
                      'dlock:{y}:lease' '0123456789abcdef'";
        let e = redis::make_extension_error("ERR".into(), Some(detail.into()));
        let t = text(&e);
        assert!(t.contains("unknown command 'EVALSHA'"), "{t}");
        assert!(!t.contains("0123") && !t.contains("args"), "{t}");
    }

    #[test]
    fn the_sentinel_line_names_its_service() {
        let one = sentinel("redis://h:26379", "h:26379", &["mymaster".into()]);
        assert!(one.ends_with("redis+sentinel://h:26379/mymaster"), "{one}");
        let two = sentinel("u", "h:1", &["a".into(), "b".into()]);
        assert!(two.contains("/SERVICE (it watches a, b)"), "{two}");
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
    }
}
