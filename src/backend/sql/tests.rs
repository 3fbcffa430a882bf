use std::time::Duration;

use super::*;
use crate::backend::engine::Write;
use crate::backend::kinds::{self, Kind, Mode, MAX_COMMAND, MAX_HOST};
use crate::backend::Grant;
use crate::holder::Holder;

fn holder(host: &str) -> Holder {
    Holder {
        host: host.into(),
        pid: 7,
        user: "u".into(),
        command: "c".into(),
    }
}

fn req<'a>(token: &'a str, kind: Kind, h: &'a Holder) -> Request<'a> {
    Request {
        name: "n",
        token,
        lease: Duration::from_millis(1000),
        holder: h,
        kind,
    }
}

fn shared() -> Kind {
    Kind {
        mode: Mode::Shared,
        ..Kind::MUTEX
    }
}

fn fair() -> Kind {
    Kind {
        fair: true,
        ..Kind::MUTEX
    }
}

/// Plans `req` on what `row` stores at `now` and returns the row that would be written.
fn after(now: i64, row: Option<&Row>, req: &Request) -> (Row, Acquire) {
    let mut st = state_of(row).unwrap();
    let (out, fx) = kinds::plan_acquire(now, &mut st, req).unwrap();
    assert!(fx.write, "{out:?}");
    (Row::storing("n", st, row.map_or(0, |r| r.version)), out)
}

/// What a dlock from before the lock kinds decides from the columns alone.
fn older_sees_held(r: &Row, now: i64) -> bool {
    r.token.is_some() && r.expires_us > now
}

#[test]
fn a_lone_exclusive_holder_stays_in_the_columns_with_no_state() {
    let h = holder("a");
    let (row, out) = after(5_000, None, &req("tok", Kind::MUTEX, &h));
    assert!(matches!(out, Acquire::Acquired(Grant { fence: 5_000, .. })));
    assert_eq!(row.token.as_deref(), Some("tok"));
    assert_eq!((row.fence, row.acquired_us), (5_000, 5_000));
    assert_eq!(row.expires_us, 5_000 + 1_000_000);
    assert_eq!(row.holder, h);
    assert_eq!(row.state, None, "a plain mutex writes no JSON");
    // The columns read back as that one holder.
    let st = row.state().unwrap();
    assert_eq!(st.holders.len(), 1);
    assert_eq!((st.holders[0].token.as_str(), st.slots), ("tok", 1));
}

#[test]
fn a_row_of_an_older_dlock_reads_as_its_one_holder() {
    // As an older version writes it (and a table without the column reads it): no state.
    let old = Row {
        name: "n".into(),
        token: Some("old-token".into()),
        fence: 41,
        holder: holder("old"),
        acquired_us: 10,
        expires_us: 9_000,
        version: 3,
        state: None,
    };
    let st = old.state().unwrap();
    assert_eq!(st.fence, 41);
    let infos = st.infos("n", 5_000);
    assert_eq!(infos.len(), 1);
    assert_eq!(
        (infos[0].token_id.as_str(), infos[0].fence),
        ("old-toke", 41)
    );
    assert_eq!(infos[0].mode, Mode::Exclusive);
    // Requests of other kinds see it as the exclusive lock it is.
    let h = holder("new");
    let mut st = old.state().unwrap();
    let (out, _) = kinds::plan_acquire(5_000, &mut st, &req("r", shared(), &h)).unwrap();
    assert!(matches!(out, Acquire::Busy(Some(i)) if i.fence == 41));
    // Once it expired, the next grant's fence still rises past it.
    let (row, _) = after(9_000, Some(&old), &req("new", Kind::MUTEX, &h));
    assert_eq!((row.token.as_deref(), row.fence), (Some("new"), 9_000));
    let (row, _) = after(20, Some(&old), &req("old-token", Kind::MUTEX, &h));
    assert_eq!(row.fence, 41, "an extension keeps its fence");
}

#[test]
fn other_holders_put_a_marker_in_the_columns_that_older_versions_see_as_held() {
    let (a, b) = (holder("a"), holder("b"));
    let (row, _) = after(1_000, None, &req("r1", shared(), &a));
    let r2 = Request {
        lease: Duration::from_millis(3000),
        ..req("r2", shared(), &b)
    };
    let (row, _) = after(2_000, Some(&row), &r2);
    assert_eq!(row.token.as_deref(), Some(MARKER));
    assert!(
        crate::names::check_token(MARKER).is_err(),
        "no token equals it"
    );
    assert_eq!(row.fence, 2_000, "the counter stays in its column");
    assert_eq!(row.expires_us, 2_000 + 3_000_000, "the last expiry");
    assert_eq!((row.holder.host.as_str(), row.acquired_us), ("a", 1_000));
    let st = row.state().unwrap();
    let tokens: Vec<&str> = st.holders.iter().map(|h| h.token.as_str()).collect();
    assert_eq!(
        tokens,
        ["r1", "r2"],
        "both in the JSON, none taken for the marker"
    );
    assert!(older_sees_held(&row, 1_500_000) && older_sees_held(&row, 3_000_000));
    assert!(!older_sees_held(&row, 2_000 + 3_000_000));

    // The last of them gone, the columns read as free and the fence stays.
    let mut st = row.state().unwrap();
    for t in ["r1", "r2"] {
        kinds::plan_release(3_000, &mut st, "n", t);
    }
    let free = Row::storing("n", st, row.version);
    assert_eq!((free.token, free.fence, free.state), (None, 2_000, None));
}

#[test]
fn a_semaphore_holder_is_never_a_legacy_one() {
    let h = holder("a");
    let sem = Kind {
        slots: 3,
        ..Kind::MUTEX
    };
    let (row, out) = after(1_000, None, &req("s0", sem, &h));
    assert!(matches!(
        out,
        Acquire::Acquired(Grant { slot: Some(0), .. })
    ));
    assert_eq!(row.token.as_deref(), Some(MARKER));
    let st = row.state().unwrap();
    assert_eq!((st.slots, st.holders.len()), (3, 1));
    // A plain request is a mismatch, not "free": the marker hides nothing.
    let mut st = row.state().unwrap();
    assert!(kinds::plan_acquire(2_000, &mut st, &req("x", Kind::MUTEX, &h)).is_err());
}

#[test]
fn a_queue_beside_a_legacy_holder_goes_in_the_state_only() {
    let h = holder("a");
    let (row, _) = after(1_000, None, &req("w", Kind::MUTEX, &h));
    let (row, out) = after(2_000, Some(&row), &req("f", fair(), &h));
    assert!(matches!(out, Acquire::Queued(_)));
    assert_eq!(
        row.token.as_deref(),
        Some("w"),
        "the holder keeps its columns"
    );
    let json = row.state.clone().expect("the ticket is stored");
    assert!(
        !json.contains("\"w\""),
        "the holder is not repeated: {json}"
    );
    let st = row.state().unwrap();
    assert_eq!((st.holders.len(), st.queue.len()), (1, 1));
    // The one-statement release clears the columns only: the ticket stays.
    let released = Row {
        token: None,
        holder: Holder::default(),
        acquired_us: 0,
        expires_us: 0,
        ..row
    };
    let st = released.state().unwrap();
    assert!(st.holders.is_empty() && st.queue[0].token == "f");
    assert_eq!(st.fence, 1_000);
}

#[test]
fn a_fence_counter_ahead_of_the_holder_is_kept() {
    let h = holder("a");
    let mut st = State {
        fence: 900,
        ..State::default()
    };
    kinds::plan_acquire(10, &mut st, &req("t", Kind::MUTEX, &h)).unwrap();
    st.fence = 950; // as if a grant was lost meanwhile
    let row = Row::storing("n", st, 0);
    assert_eq!(row.fence, 901);
    assert!(row.state.is_some());
    assert_eq!(row.state().unwrap().fence, 950);
}

#[test]
fn an_older_dlock_taking_an_expired_marker_row_is_read_as_the_holder() {
    let h = holder("a");
    let (row, _) = after(1_000, None, &req("r1", shared(), &h));
    // An older dlock saw it expired and wrote only the columns it knows.
    let taken = Row {
        token: Some("old".into()),
        fence: row.fence + 1,
        expires_us: 5_000_000,
        ..row
    };
    let mut st = taken.state().unwrap();
    st.prune(2_000_000);
    assert_eq!(st.holders.len(), 1);
    assert_eq!((st.holders[0].token.as_str(), st.fence), ("old", 1_001));
}

#[test]
fn an_unreadable_state_is_an_error_naming_the_lock() {
    let row = Row {
        name: "n".into(),
        token: None,
        fence: 1,
        holder: Holder::default(),
        acquired_us: 0,
        expires_us: 0,
        version: 1,
        state: Some("{not json".into()),
    };
    let e = row.state().unwrap_err();
    assert!(e.to_string().contains("lock 'n'"), "{e}");
}

#[test]
fn rows_parse_from_values_and_a_missing_row_is_none() {
    let mut v = vec![Val::Null; 11];
    assert_eq!(parse_row(&v).unwrap(), None);
    v = vec![
        Val::Text("n".into()),
        Val::Text("t".into()),
        Val::Int(3),
        Val::Text("h".into()),
        Val::Int(7),
        Val::Text("u".into()),
        Val::Text("c".into()),
        Val::Text("1".into()),
        Val::Int(2),
        Val::Int(4),
        Val::Null,
    ];
    let r = parse_row(&v).unwrap().unwrap();
    assert_eq!(
        (r.token.as_deref(), r.acquired_us, r.state),
        (Some("t"), 1, None)
    );
    assert!(parse_row(&v[..10]).is_err());
}

#[test]
fn holder_fields_fit_their_columns() {
    let h = Holder {
        host: "h".repeat(300),
        pid: 1,
        user: "u".into(),
        command: "é".repeat(600),
    };
    let (row, _) = after(1, None, &req("t", Kind::MUTEX, &h));
    assert_eq!(row.holder.host.len(), MAX_HOST);
    assert!(row.holder.command.len() <= MAX_COMMAND);
    assert!(row.holder.command.chars().all(|c| c == 'é'));
}

#[test]
fn table_names_are_safe_and_distinct() {
    assert_eq!(table_name("dlock"), "dlock_leases");
    let a = table_name("My-Prefix");
    let b = table_name("my-prefix");
    assert_ne!(a, b);
    for t in [
        &a,
        &b,
        &table_name(&"x".repeat(200)),
        &table_name("`; drop"),
    ] {
        assert!(t.len() <= 64, "{t}");
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{t}"
        );
    }
}

#[test]
fn hashes_are_stable() {
    assert_eq!(hash_hex(b""), "6c62272e07bb014262b821756295c58d");
    assert_ne!(wake_key("a", "b"), wake_key("b", "a"));
    assert_eq!(wake_key("p", "n").len(), 32);
}

fn rec(token: &str, until_us: i64) -> Break {
    Break {
        token: token.into(),
        by: "me@vm (pid 1)".into(),
        until_us,
    }
}

fn no_break() -> Write<'static> {
    Write {
        wake: false,
        until: None,
        broken: &[],
        by: "",
    }
}

#[test]
fn breaks_ride_beside_the_state_and_never_reach_the_plans() {
    let h = holder("a");
    let (row, _) = after(1_000, None, &req("tok", Kind::MUTEX, &h));
    let st = row.state().unwrap();
    let row = Row::storing_with("n", st.clone(), &[rec("gone", 9_000)], row.version);
    assert_eq!(
        row.token.as_deref(),
        Some("tok"),
        "the holder keeps its columns"
    );
    let json = row.state.clone().expect("the record is stored");
    assert!(json.contains("\"b\":[") && json.contains("gone"), "{json}");
    let (back, kept) = row.stored().unwrap();
    assert_eq!(back, st, "the plans see the state alone");
    assert_eq!(kept, [rec("gone", 9_000)]);
    // An older dlock reads its own fields of the JSON (serde skips one
    // it does not know) and sees the same lock.
    let older: State = serde_json::from_str(&json).unwrap();
    assert_eq!(kinds::join(back.holders.first().cloned(), older), st);
    // Beside other holders (the marker in the columns) too.
    let (shared_row, _) = after(1_000, None, &req("r", shared(), &h));
    let with = Row::storing_with("n", shared_row.state().unwrap(), &kept, 1);
    assert_eq!(with.token.as_deref(), Some(MARKER));
    assert_eq!(with.stored().unwrap(), (shared_row.state().unwrap(), kept));
}

#[test]
fn json_without_breaks_reads_and_is_written_as_before() {
    // As a dlock from before the records writes a queue beside a free lock.
    let old = r#"{"f":5,"n":1,"h":[],"q":[{"t":"w","m":"exclusive","q":1,"e":9000}],"s":1}"#;
    let row = Row {
        name: "n".into(),
        token: None,
        fence: 5,
        holder: Holder::default(),
        acquired_us: 0,
        expires_us: 0,
        version: 2,
        state: Some(old.into()),
    };
    let (st, kept) = row.stored().unwrap();
    assert!(kept.is_empty());
    assert_eq!(st, serde_json::from_str::<State>(old).unwrap());
    assert_eq!(
        Row::storing("n", st, 2).state.as_deref(),
        Some(old),
        "no new field"
    );
}

#[test]
fn a_row_whose_only_json_is_records_that_ran_out_is_a_free_lock() {
    let free = Row {
        name: "n".into(),
        token: None,
        fence: 7,
        holder: Holder::default(),
        acquired_us: 0,
        expires_us: 0,
        version: 4,
        state: None,
    };
    let idle = free.state().unwrap();
    let with = Row::storing_with("n", idle.clone(), &[rec("t", 2_000)], 4);
    assert_eq!((&with.token, with.fence, with.expires_us), (&None, 7, 0));
    assert!(with.state.is_some());
    let now = 3_000;
    assert_eq!(with.state().unwrap(), idle);
    assert!(with.state().unwrap().infos("n", now).is_empty());
    assert_eq!(breaks::by_token(&with.stored().unwrap().1, now, "t"), None);
    let h = holder("a");
    for r in [
        req("x", Kind::MUTEX, &h),
        req("s", shared(), &h),
        req("f", fair(), &h),
    ] {
        let (a, b) = (after(now, Some(&with), &r), after(now, Some(&free), &r));
        assert_eq!(format!("{:?}", a.1), format!("{:?}", b.1));
        assert_eq!(a.0.state().unwrap(), b.0.state().unwrap());
        assert_eq!((&a.0.token, a.0.fence), (&b.0.token, b.0.fence));
    }
    // The next write leaves the records out: the row is a free lock's again.
    let kept = breaks::after_write(&with.stored().unwrap().1, now, &idle, &no_break());
    assert!(kept.is_empty());
    assert_eq!(Row::storing_with("n", idle, &kept, 4), free);
}
