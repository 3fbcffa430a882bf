//! The lease table: one schema for every SQL database, with the few words in
//! which their dialects differ.

use crate::backend::kinds::{MAX_COMMAND, MAX_HOST, MAX_USER};

/// What differs between databases: the clock, an idempotent insert, quoting
/// and column types. A new SQL backend is one of these plus its `Exec`.
pub struct Dialect {
    /// An expression for the database's clock in µs since the epoch.
    pub now_us: &'static str,
    /// An INSERT that does nothing when the key exists: these words, then
    /// `INTO … VALUES (…)`, then `insert_tail`.
    pub insert_ignore: &'static str,
    pub insert_tail: &'static str,
    /// Quotes an identifier (the table name).
    pub quote: char,
    /// The type of lock names, compared byte for byte.
    pub name_type: &'static str,
    /// The type of the token column.
    pub token_type: &'static str,
    /// The type of a holder field of at most so many bytes.
    pub text_type: fn(usize) -> String,
    /// A 64-bit integer.
    pub int_type: &'static str,
    /// The type of the `state` column: JSON of any length.
    pub state_type: &'static str,
    /// Written after the column list of CREATE TABLE.
    pub table_options: &'static str,
}

impl Dialect {
    pub fn ident(&self, name: &str) -> String {
        let q = self.quote;
        format!("{q}{}{q}", name.replace(q, &format!("{q}{q}")))
    }

    /// The table's name, in `schema` when one is given.
    pub fn qualified(&self, schema: Option<&str>, table: &str) -> String {
        match schema {
            Some(s) => format!("{}.{}", self.ident(s), self.ident(table)),
            None => self.ident(table),
        }
    }
}

/// What a read finds when the lease table (or its schema) does not exist:
/// nothing was ever locked there. Only reads that may not create it
/// (`status`) see it; the backend answers "no locks" for it.
#[derive(Debug)]
pub struct NoTable;

impl std::fmt::Display for NoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the lease table does not exist")
    }
}

impl std::error::Error for NoTable {}

/// The answer of a read-only listing: no table means no locks.
pub fn none_without_table<T: Default>(r: anyhow::Result<T>) -> anyhow::Result<T> {
    match r {
        Err(e) if e.is::<NoTable>() => Ok(T::default()),
        r => r,
    }
}

/// The columns every statement reads and writes, in this order.
pub const COLUMNS: &str = "name, token, fence, holder_host, holder_pid, holder_user, \
                           holder_command, acquired_us, expires_us, version, state";

pub fn create_table(d: &Dialect, table: &str) -> String {
    create_table_in(d, None, table)
}

/// CREATE TABLE IF NOT EXISTS, in `schema` when one is given.
pub fn create_table_in(d: &Dialect, schema: Option<&str>, table: &str) -> String {
    let int = d.int_type;
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            name {name} NOT NULL PRIMARY KEY,
            token {token} NULL,
            fence {int} NOT NULL DEFAULT 0,
            holder_host {host} NOT NULL DEFAULT '',
            holder_pid {int} NOT NULL DEFAULT 0,
            holder_user {user} NOT NULL DEFAULT '',
            holder_command {command} NOT NULL DEFAULT '',
            acquired_us {int} NOT NULL DEFAULT 0,
            expires_us {int} NOT NULL DEFAULT 0,
            version {int} NOT NULL DEFAULT 0,
            state {state} NULL
        ){options}",
        t = d.qualified(schema, table),
        name = d.name_type,
        token = d.token_type,
        host = (d.text_type)(MAX_HOST),
        user = (d.text_type)(MAX_USER),
        command = (d.text_type)(MAX_COMMAND),
        state = d.state_type,
        options = d.table_options,
    )
}

/// Tables made by dlock versions before the lock kinds lack `state`. Run
/// when a statement finds it missing; two processes may race to run it, and
/// the loser's "duplicate column" error means the same as success.
pub fn add_state_column(d: &Dialect, table: &str) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN state {} NULL",
        d.ident(table),
        d.state_type
    )
}
