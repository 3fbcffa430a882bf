use super::*;

const HOSTS: Parts = Parts::Hosts { default_port: 7 };

fn ok(text: &str) -> Url {
    Url::parse(text, HOSTS).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn splits_credentials_hosts_path_and_query() {
    let u = ok("s://u%3Ax:p%40ss+w:rd@h1:26379,h2,[::1]:26381/svc/2?wait_replicas=1&x=a+b");
    assert_eq!(u.scheme, "s");
    assert_eq!(u.user().as_deref(), Some("u:x"));
    assert_eq!(u.password().as_deref(), Some("p@ss+w:rd"));
    assert_eq!(
        u.hosts,
        [
            ("h1".into(), 26379),
            ("h2".into(), 7),
            ("::1".into(), 26381)
        ]
    );
    assert_eq!(u.path, "/svc/2");
    assert_eq!(u.segments(), ["svc", "2"]);
    assert_eq!(u.param("wait_replicas"), Some("1"));
    assert_eq!(u.param("x"), Some("a b"));
    assert_eq!(u.unknown_param(&["wait_replicas"]), Some("x"));
    assert_eq!(
        u.node_url("::1", 7000, 2),
        "redis://u%3Ax:p%40ss+w:rd@[::1]:7000/2"
    );
    assert_eq!(
        u.shown(),
        "s://u%3Ax:***@h1:26379,h2,[::1]:26381/svc/2?wait_replicas=1&x=a+b"
    );
    assert!(u.secrets().contains(&"p@ss+w:rd".to_string()));
    assert!(!format!("{u:?}").contains("p%40ss"), "{u:?}");
}

#[test]
fn sockets_have_no_hosts_and_files_only_a_path() {
    let u = ok("redis+unix:///run/r.sock?db=1&pass=s3cret");
    assert!(u.hosts.is_empty());
    assert_eq!(u.path, "/run/r.sock");
    assert_eq!(u.secrets(), ["s3cret"]);
    assert_eq!(u.shown(), "redis+unix:///run/r.sock?db=1&pass=***");
    let f = Url::parse("sqlite://rel/a,b:c@d.db", Parts::Path).unwrap();
    assert_eq!((f.path.as_str(), f.hosts.len()), ("rel/a,b:c@d.db", 0));
    let u = ok("postgres://me@/db?host=/run/postgresql");
    assert_eq!((u.user().as_deref(), u.hosts.len()), (Some("me"), 0));
}

#[test]
fn refuses_what_is_not_a_host_list() {
    for (text, why) in [
        ("s://a:1,,b:2", "empty"),
        ("s://,/db", "empty"),
        ("s://a:x", "'x' is not a port"),
        ("s://a:0", "'0' is not a port"),
        ("s://a:65536", "not a port"),
        ("s://:5", "no host"),
        ("s://[::1", "closing"),
        ("s://[::1]x", "after ']'"),
        ("s://[zz]", "not an IPv6"),
        ("s://::1", "two ':'"),
        ("s://h\u{e9}", "not ASCII"),
        ("s://a b", "' '"),
        ("s://u:p@w@h", "%40"),
        ("s://u:p#w@h", "%23"),
        ("s://u:pa/ss@h", "%2F"),
        ("s://u:pa?ss@h", "%3F"),
        ("s://u:%ff@h", "UTF-8"),
        ("nothing", "'://'"),
    ] {
        let e = Url::parse(text, HOSTS).unwrap_err();
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn text_that_is_no_url_is_shown_without_what_may_be_secret() {
    assert_eq!(shown_loosely("127.0.0.1:6379"), "127.0.0.1:6379");
    assert_eq!(shown_loosely("x://u:pw@h:1/d?pass=y"), "x://***@h:1/d?…");
    assert_eq!(shown_loosely("u:pw@h"), "***@h");
    let long = shown_loosely(&"a".repeat(1000));
    assert_eq!(long.chars().count(), 80);
    assert_eq!(loose_secrets("x://u:p@ss@h"), ["p@ss", "p@ss"]);
    assert!(loose_secrets("x://h").is_empty());
}
