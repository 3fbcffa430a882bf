use std::time::Duration;

use anyhow::Result;

use super::conn::Target;
use super::link::numbered;
use super::wake::key_of;
use crate::error::{code_of, USAGE};

fn options(url: &str, _: &str, t: Duration) -> Result<Target> {
    super::conn::options(&crate::backend::parse_url(url)?, t)
}

#[test]
fn urls_become_driver_settings() {
    let t = Duration::from_secs(5);
    let o = options("postgres://u:p%40ss@db.example:5433/locks", "x", t).unwrap();
    assert_eq!(
        (o.database.as_str(), o.schema.as_str()),
        ("locks", "public")
    );
    assert_eq!(o.config.get_password(), Some(&b"p@ss"[..]));
    assert_eq!(o.config.get_ports(), [5433]);
    assert_eq!(o.config.get_application_name(), Some("dlock"));
    assert!(
        o.tls.is_some(),
        "prefer, as libpq: TLS when the server offers it"
    );
    let o = options("postgresql://u@h/d?sslmode=disable&schema=Locks", "x", t).unwrap();
    assert!(o.tls.is_none());
    assert_eq!(o.schema, "Locks");
    // A unix socket: no TLS whatever sslmode says; the database defaults to the user.
    let o = options(
        "postgres://u@/?host=/run/postgresql&sslmode=require",
        "x",
        t,
    )
    .unwrap();
    assert!(o.tls.is_none());
    assert_eq!(o.database, "u");
    for bad in [
        "postgres://u@h/d?sslmode=maybe",
        "postgres://u@h/d?nope=1",
        "postgres://u@h/d?sslcert=/c.pem",
        "postgres://u@h/d?schema=",
        "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent.pem",
    ] {
        let e = options(bad, "x", t).unwrap_err();
        assert_eq!(code_of(&e), USAGE, "{bad}: {e}");
    }
}

#[test]
fn parameters_are_numbered_outside_quotes() {
    assert_eq!(
        numbered("SELECT '?', \"a?\", ? FROM t WHERE a = ? AND b = ?"),
        "SELECT '?', \"a?\", $1 FROM t WHERE a = $2 AND b = $3"
    );
}

#[test]
fn advisory_keys_are_stable() {
    // Documented in wake.rs: other tools may compute them the same way.
    assert_eq!(key_of(""), 0x6c62272e07bb0142_u64 as i64);
    assert_ne!(
        key_of("public.dlock_leases\0a"),
        key_of("public.dlock_leases\0b")
    );
}

#[test]
fn socket_urls_are_redacted_too() {
    let url = "postgres://u:pw-s3cret@/db?host=/run/postgresql&password=other-s3cret";
    let u = crate::backend::parse_url(url).unwrap();
    assert_eq!(
        u.shown(),
        "postgres://u:***@/db?host=/run/postgresql&password=***"
    );
    let u = crate::backend::parse_url("postgres://u:pw-s3cret@h1:5432,h2/db").unwrap();
    assert_eq!(u.shown(), "postgres://u:***@h1:5432,h2/db");
    let s = crate::backend::parse_url(url).unwrap().secrets();
    assert!(s.contains(&"pw-s3cret".to_string()), "{s:?}");
    assert!(s.contains(&"other-s3cret".to_string()), "{s:?}");
}
