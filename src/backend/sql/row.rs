//! One lock's row, and how a name's state (`kinds::State`) is stored in it.
//!
//! The lone exclusive holder of a 1-slot lock (every plain mutex) lives in
//! the row's own columns, as before the lock kinds: the one-statement renew
//! and release keep working for it, and older dlock versions see it. All
//! else (other holders, the queue, a fence counter ahead of the holder's) is
//! JSON of the rest of the state in the `state` column, NULL when there is
//! nothing. While holders other than that one exist, the token column holds
//! [`MARKER`] and `expires_us` the last expiry among them, so that an older
//! dlock sees the lock held (by the first of them) for as long as any is.
//!
//! Beside the state, the JSON keeps who broke which lease lately
//! (`engine::breaks`) under a key of its own, which older versions skip
//! (serde ignores fields a struct does not name) and drop when they write.
//! Those records never reach the plans: a row whose only JSON is records
//! that ran out reads, and is planned, as a free lock, and the next write
//! leaves them out.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Val;
use crate::backend::engine::breaks::Break;
use crate::backend::kinds::{self, Held, Mode, State};
use crate::error::{fail, INTERNAL};
use crate::holder::Holder;

/// The token column while the holders are in `state`: no token equals it,
/// since tokens have no spaces. Older versions show its first 8 characters.
pub const MARKER: &str = "(held as a kind: see the state column)";

/// What the `state` column holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    state: State,
    #[serde(rename = "b", default, skip_serializing_if = "Vec::is_empty")]
    breaks: Vec<Break>,
}

/// One lock's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub token: Option<String>,
    pub fence: i64,
    pub holder: Holder,
    pub acquired_us: i64,
    pub expires_us: i64,
    pub version: i64,
    /// JSON of the state beside the holder in the columns.
    pub state: Option<String>,
}

impl Row {
    /// The state this row stores.
    pub fn state(&self) -> Result<State> {
        self.stored().map(|(st, _)| st)
    }

    /// The state this row stores, and its records of breaks (live or not).
    pub fn stored(&self) -> Result<(State, Vec<Break>)> {
        let Stored {
            state: mut rest,
            breaks,
        } = match self.state.as_deref() {
            None => Stored::default(),
            Some(json) => serde_json::from_str::<Stored>(json).map_err(|e| {
                fail(
                    INTERNAL,
                    format!(
                        "lock '{}' has a state column dlock cannot read ({e}); \
                         if a newer dlock wrote it, use that one",
                        self.name
                    ),
                )
            })?,
        };
        rest.fence = rest.fence.max(self.fence);
        let legacy = self
            .token
            .clone()
            .filter(|t| t != MARKER)
            .map(|token| Held {
                token,
                mode: Mode::Exclusive,
                slot: 0,
                fence: self.fence,
                holder: self.holder.clone(),
                acquired_us: self.acquired_us,
                expires_us: self.expires_us,
            });
        Ok((kinds::join(legacy, rest), breaks))
    }

    /// The row that stores `st`, at `version` (the write bumps it).
    #[cfg(test)]
    pub fn storing(name: &str, st: State, version: i64) -> Row {
        Row::storing_with(name, st, &[], version)
    }

    /// The row that stores `st` and the records `breaks`, at `version`.
    pub fn storing_with(name: &str, st: State, breaks: &[Break], version: i64) -> Row {
        let (legacy, rest) = kinds::split(st);
        let free = |fence, state| Row {
            name: name.to_string(),
            token: None,
            fence,
            holder: Holder::default(),
            acquired_us: 0,
            expires_us: 0,
            version,
            state,
        };
        match legacy {
            Some(h) => Row {
                token: Some(h.token),
                holder: h.holder,
                acquired_us: h.acquired_us,
                expires_us: h.expires_us,
                ..free(h.fence, beside(&rest, breaks, h.fence))
            },
            None => match rest.holders.iter().min_by_key(|h| h.fence) {
                None => free(rest.fence, beside(&rest, breaks, rest.fence)),
                Some(first) => Row {
                    token: Some(MARKER.to_string()),
                    holder: first.holder.clone(),
                    acquired_us: first.acquired_us,
                    expires_us: rest.last_expiry(),
                    ..free(rest.fence, Some(json(&rest, breaks)))
                },
            },
        }
    }
}

/// The JSON for `rest` and `breaks` beside columns that keep `fence`; none
/// when it adds nothing.
fn beside(rest: &State, breaks: &[Break], fence: i64) -> Option<String> {
    (!rest.is_idle() || rest.fence > fence || !breaks.is_empty()).then(|| json(rest, breaks))
}

fn json(st: &State, breaks: &[Break]) -> String {
    let stored = Stored {
        state: st.clone(),
        breaks: breaks.to_vec(),
    };
    serde_json::to_string(&stored).expect("the state is plain data")
}

/// The state of a row that may not exist yet.
pub fn state_of(row: Option<&Row>) -> Result<State> {
    row.map_or_else(|| Ok(State::default()), Row::state)
}

pub fn bad_reply(what: &str) -> anyhow::Error {
    fail(
        INTERNAL,
        format!("unexpected reply from the database: {what}"),
    )
}

pub fn int(v: Option<&Val>) -> Result<i64> {
    match v {
        Some(Val::Int(i)) => Ok(*i),
        Some(Val::Text(s)) => s.trim().parse().map_err(|_| bad_reply("a number expected")),
        _ => Err(bad_reply("a number expected")),
    }
}

fn text(v: Option<&Val>) -> String {
    match v {
        Some(Val::Text(s)) => s.clone(),
        Some(Val::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

/// A row in `schema::COLUMNS` order; all NULL (the join found nothing) is no row.
pub fn parse_row(v: &[Val]) -> Result<Option<Row>> {
    if v.len() < 11 {
        return Err(bad_reply("too few columns"));
    }
    if v[0] == Val::Null {
        return Ok(None);
    }
    let some_text = |v: &Val| match v {
        Val::Null => None,
        t => Some(text(Some(t))).filter(|t| !t.is_empty()),
    };
    Ok(Some(Row {
        name: text(v.first()),
        token: some_text(&v[1]),
        fence: int(v.get(2))?,
        holder: Holder {
            host: text(v.get(3)),
            pid: u32::try_from(int(v.get(4))?).unwrap_or(0),
            user: text(v.get(5)),
            command: text(v.get(6)),
        },
        acquired_us: int(v.get(7))?,
        expires_us: int(v.get(8))?,
        version: int(v.get(9))?,
        state: some_text(&v[10]),
    }))
}
