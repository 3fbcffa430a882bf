//! The registry of schemes, URL messages and capability checks.

use super::*;

#[test]
fn the_scheme_list_reads_as_before() {
    assert_eq!(
        scheme_list(" or "),
        "sqlite://, redis://, rediss://, redis+unix://, redis+sentinel://, redis+cluster://, redlock://, mysql://, postgres://, postgresql://, etcd://, etcds:// or zk://"
    );
}

#[test]
fn what_a_backend_cannot_do_is_a_usage_error() {
    let sem = Kind {
        slots: 3,
        ..Kind::MUTEX
    };
    let plain = Use {
        kind: &Kind::MUTEX,
        detached: true,
    };
    check_capable(Capabilities::MUTEX, "x", &plain).unwrap();
    let e = check_capable(
        Capabilities::MUTEX,
        "x",
        &Use {
            kind: &sem,
            detached: false,
        },
    )
    .unwrap_err();
    assert_eq!(crate::error::code_of(&e), USAGE);
    assert!(e
        .to_string()
        .contains("the x backend does not support --shared"));
    check_capable(
        Capabilities::ALL,
        "x",
        &Use {
            kind: &sem,
            detached: true,
        },
    )
    .unwrap();
    let session = Capabilities {
        detached: false,
        ..Capabilities::ALL
    };
    let e = check_capable(session, "zk", &plain).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot keep a lease after dlock exits"),
        "{e}"
    );
}

fn shown(text: &str) -> String {
    parse_url(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .shown()
        .to_string()
}

fn refused(text: &str) -> String {
    let e = parse_url(text).unwrap_err();
    assert_eq!(crate::error::code_of(&e), USAGE, "{text}: {e}");
    e.to_string()
}

#[test]
fn redacts_passwords() {
    assert_eq!(
        shown("redis://user:s3cret@host:6379/2"),
        "redis://user:***@host:6379/2"
    );
    assert_eq!(shown("redis://host:6379"), "redis://host:6379");
    let r = shown("redis+unix:///run/redis.sock?db=1&pass=s3cret");
    assert_eq!(r, "redis+unix:///run/redis.sock?db=1&pass=***");
    let r = shown("mysql://root:p%40ss@db/locks");
    assert_eq!(r, "mysql://root:***@db/locks");
    assert_eq!(
        shown("redis+sentinel://:s3cret@a:1,b:2/svc?sentinel_password=x9y"),
        "redis+sentinel://:***@a:1,b:2/svc?sentinel_password=***"
    );
    let s = parse_url("redlock://u:p%40w@a,b,c").unwrap().secrets();
    assert!(s.contains(&"p@w".to_string()), "{s:?}");
    assert_eq!(shown("zk://u:s3cret@a:1,b:2/ch"), "zk://u:***@a:1,b:2/ch");
    assert_eq!(shown("zookeeper://a:1,b:2/ch"), "zookeeper://a:1,b:2/ch");
    // A list of etcd members keeps its hosts, and a CA path stays readable.
    assert_eq!(
        shown("etcd://root:s%40cret@h1:2379,h2:2379/?cacert=/ca.pem"),
        "etcd://root:***@h1:2379,h2:2379/?cacert=/ca.pem"
    );
    assert_eq!(
        shown("postgres://u:pw-s3cret@/db?host=/run/postgresql&password=other-s3cret"),
        "postgres://u:***@/db?host=/run/postgresql&password=***"
    );
    assert_eq!(shown("sqlite:///var/x.db"), "sqlite:///var/x.db");
}

#[test]
fn lists_secrets_decoded_and_encoded() {
    let s = parse_url("mysql://root:p%40ss@db/locks").unwrap().secrets();
    assert!(
        s.contains(&"p%40ss".into()) && s.contains(&"p@ss".into()),
        "{s:?}"
    );
    let s = parse_url("postgres://u@h/d?password=a%2Bb+c")
        .unwrap()
        .secrets();
    assert!(s.contains(&"a+b c".into()), "{s:?}");
}

#[test]
fn what_is_no_url_says_what_to_write() {
    let e = refused("127.0.0.1:6379");
    assert!(
        e.contains("'127.0.0.1:6379' is not a URL") && e.contains("redis://127.0.0.1:6379"),
        "{e}"
    );
    let e = refused("redis:/host");
    assert!(
        e.contains("write two slashes") && e.contains("redis://host") && !e.contains("unsupported"),
        "{e}"
    );
    let e = refused("mongodb://u:s3cret@y/z");
    assert!(
        e.contains("unsupported URL scheme 'mongodb'")
            && e.contains("zk://")
            && !e.contains("s3cret"),
        "{e}"
    );
    // The input is echoed, cut, and without what may be a password.
    let e = refused(&format!("u:s3cret@{}", "h".repeat(500)));
    assert!(
        e.contains("***@hhh") && !e.contains("s3cret") && e.len() < 400,
        "{e}"
    );
}

#[test]
fn malformed_urls_name_the_mistake() {
    for (text, why) in [
        ("postgres://,/db", "a host is empty"),
        ("postgres://u:p@ss@h/db", "%40"),
        ("postgres://u@h:0/db", "'0' is not a port"),
        ("etcd://bücher.example", "not ASCII"),
        ("redis://host:notaport", "'notaport' is not a port"),
        ("redis://a b", "has a ' '"),
        ("redis://u:p#w@h", "%23"),
        ("zk://[::1", "closing ']'"),
    ] {
        let e = refused(text);
        assert!(
            e.contains("malformed URL") && e.contains(why),
            "{text}: {e}"
        );
        assert!(!e.contains("p@ss@h") && !e.contains("p#w"), "{text}: {e}");
    }
}
