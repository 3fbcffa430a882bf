//! SQL statements on the SQLite connection: the `sql::Exec` the shared SQL
//! engine runs on, and the table made (or brought up to date) on first use.

use super::*;

pub(super) struct Db<'a> {
    pub(super) conn: &'a Connection,
    pub(super) path: &'a Path,
    pub(super) table: &'a str,
    pub(super) timeout: Duration,
}

impl Db<'_> {
    pub(super) fn err(&self, e: rusqlite::Error) -> anyhow::Error {
        db_error(self.path, self.timeout, e)
    }

    /// Prepares `sql`, first creating the table if it is missing (a file set
    /// up by another prefix), or adding the `state` column to a table made
    /// by an older dlock; inside a transaction, the change comes with it.
    pub(super) fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        match self.conn.prepare_cached(sql) {
            Err(e) if is_no_table(&e) => {
                self.conn.execute_batch(&create_table(self.table))?;
                self.conn.prepare_cached(sql)
            }
            Err(e) if is_no_state(&e) => {
                add_state_column(self.conn, self.table)?;
                self.conn.prepare_cached(sql)
            }
            r => r,
        }
    }
}

fn to_value(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Int(i) => Value::Integer(*i),
        Val::Text(s) => Value::Text(s.clone()),
    }
}

impl Exec for Db<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        let run = || -> rusqlite::Result<Vec<Vec<Val>>> {
            let mut st = self.prepare(sql)?;
            let n = st.column_count();
            let mut rows = st.query(rusqlite::params_from_iter(params.iter().map(to_value)))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut vals = Vec::with_capacity(n);
                for i in 0..n {
                    vals.push(match r.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(i) => Val::Int(i),
                        ValueRef::Real(f) => Val::Int(f as i64),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Val::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                out.push(vals);
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e))
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let mut st = self.prepare(sql).map_err(|e| self.err(e))?;
        st.execute(rusqlite::params_from_iter(params.iter().map(to_value)))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn begin(&mut self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl SqliteBackend {
    pub(super) fn db_ref(&self) -> Db<'_> {
        Db {
            conn: &self.conn,
            path: &self.path,
            table: &self.leases.table,
            timeout: self.timeout,
        }
    }
}
