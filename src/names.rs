//! Validation of lock names and tokens, shared by every backend so that a name
//! valid on one backend is valid on all of them.

use crate::error::{fail, USAGE};

/// Longest lock name in bytes; the SQL backends store names in a column of this size.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest user-supplied token.
pub const MAX_TOKEN_LEN: usize = 128;

/// Accepts any UTF-8 name without control characters, so names never break a
/// one-line status row or a log line.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    check_label(
        name,
        "lock name",
        MAX_NAME_BYTES,
        "give a name such as 'nightly-backup'",
    )
}

/// Longest prefix in bytes, as for names.
pub const MAX_PREFIX_BYTES: usize = MAX_NAME_BYTES;

/// Prefixes follow the rules of names, so that they never break a status
/// header or a log line; backends encode them as their keys and tables need.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    check_label(
        prefix,
        "--prefix",
        MAX_PREFIX_BYTES,
        "give a namespace such as 'dlock' (the default)",
    )
}

/// The rule names and prefixes share: not empty, at most `max` bytes, no
/// control characters; `what` names the value in the one-line error.
fn check_label(value: &str, what: &str, max: usize, example: &str) -> anyhow::Result<()> {
    if value.is_empty() {
        return Err(fail(USAGE, format!("{what} is empty: {example}")));
    }
    if value.len() > max {
        return Err(fail(
            USAGE,
            format!(
                "{what} is {} bytes long; the limit is {max} bytes",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(fail(
            USAGE,
            format!(
                "{what} {:?} contains the control character U+{:04X}; use printable characters",
                value, c as u32
            ),
        ));
    }
    Ok(())
}

/// Tokens travel through shell variables and environment, so keep them to
/// printable ASCII without spaces.
pub fn check_token(token: &str) -> anyhow::Result<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(fail(
            USAGE,
            format!("token must be 1 to {MAX_TOKEN_LEN} characters long"),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            USAGE,
            "token must be printable ASCII without spaces (the output of `dlock acquire`)",
        ));
    }
    Ok(())
}

/// The names of one request (`NAME` and each `--also`), checked, in the
/// order given; a name given twice is refused, as it could not be held twice.
pub fn check_names(first: &str, also: &[String]) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::with_capacity(1 + also.len());
    for n in std::iter::once(first).chain(also.iter().map(String::as_str)) {
        check_name(n)?;
        if all.iter().any(|a: &String| a == n) {
            return Err(fail(
                USAGE,
                format!("lock name '{n}' is given twice; name each lock once"),
            ));
        }
        all.push(n.to_string());
    }
    Ok(all)
}

/// Several names as one message shows them: "a, b".
pub fn label(names: &[String]) -> String {
    names.join(", ")
}

/// A fresh 128-bit random token, as 32 lowercase hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The part of a token that status shows: enough to tell holders apart,
/// too little to release the lock with.
pub fn token_id(token: &str) -> String {
    token.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_names_keep_their_order_and_each_is_given_once() {
        let also = vec!["a".to_string(), "b c".to_string()];
        assert_eq!(check_names("z", &also).unwrap(), ["z", "a", "b c"]);
        let twice = check_names("a", &["b".into(), "a".into()]).unwrap_err();
        assert!(
            format!("{twice:#}").contains("'a' is given twice"),
            "{twice:#}"
        );
        assert!(check_names("a", &["bad\nname".into()]).is_err());
        assert_eq!(label(&also), "a, b c");
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "nightly backup",
            "it's \"quoted\"",
            "*?[glob]",
            "🔒 lock",
            "a}b{c",
        ] {
            check_name(ok).unwrap();
        }
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name("tab\there").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
        check_name(&"x".repeat(255)).unwrap();
    }

    #[test]
    fn prefixes() {
        for ok in ["dlock", "team:{b}:x", "My Prefix", "a%b"] {
            check_prefix(ok).unwrap();
        }
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a\nb").is_err());
        assert!(check_prefix(&"p".repeat(256)).is_err());
    }

    #[test]
    fn tokens() {
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token());
        check_token(&t).unwrap();
        assert!(check_token("").is_err());
        assert!(check_token("has space").is_err());
        assert!(check_token(&"a".repeat(129)).is_err());
        assert_eq!(token_id(&t).len(), 8);
    }
}
