//! PostgreSQL backend: `postgres://user:pass@host[:port]/database` (or
//! `postgresql://`), as libpq users write it.
//!
//! Leases live in one table per prefix (`<prefix>_leases`, created on first
//! use) in the schema named by the URL's `schema` parameter (`public` by
//! default, so that every user of a database shares the same locks); the
//! lease logic is in `sql/`. Expiry is measured by the server's
//! `clock_timestamp()`, the wall clock when each statement reads it (never
//! `now()`, the start of the transaction), and each step is autocommit
//! statements guarded by a compare-and-set, so no row lock outlives a
//! statement. Rows stay after release, so fences never restart.
//!
//! URL parameters: `sslmode` (disable, prefer (the default), require,
//! verify-ca, verify-full) and `sslrootcert` (a PEM file, or `system`) as
//! libpq reads them; `host=/run/postgresql` (a unix socket directory) and
//! the other libpq parameters the driver knows (`application_name`,
//! `options`, `connect_timeout`, `target_session_attrs`, …) pass through.
//!
//! Statements are sent with typed parameters and no prepared statement of
//! their own (one round trip each; a process lives for one acquisition),
//! which also works through poolers in transaction mode.
//!
//! Waking waiters: live holders keep advisory wake locks on which waiters
//! block inside the server, and releases NOTIFY; see `wake.rs`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use tokio::runtime::Runtime;
use tokio_postgres_rustls::MakeRustlsConnect;

mod breaks;
mod changes;
mod conn;
mod link;
#[cfg(test)]
mod tests;
mod wake;
use conn::{breaks_connection, describe, is_full, options, silent};
use link::{Failed, Link};

use super::sql::{self, Dialect, Exec, Leases, Val};
use super::{
    Acquire, Backend, Capabilities, Check, Config, Location, LockInfo, Request, Url, Waiter,
};
use crate::error::{fail, INTERNAL, UNAVAILABLE};
use wake::{PgWaiter, Wakes};

/// Names compare byte for byte (the "C" collation) whatever the database's
/// default; holder fields and the state are TEXT of any length.
const DIALECT: Dialect = Dialect {
    now_us: "(extract(epoch from clock_timestamp()) * 1000000)::int8",
    insert_ignore: "INSERT",
    insert_tail: " ON CONFLICT DO NOTHING",
    quote: '"',
    name_type: "TEXT COLLATE \"C\"",
    token_type: "TEXT",
    text_type: |_| "TEXT".to_string(),
    int_type: "BIGINT",
    state_type: "TEXT",
    table_options: "",
};

pub struct PgBackend {
    /// Shared with the waiter, which blocks on the same connection.
    db: Arc<Mutex<Db>>,
    leases: Leases,
    /// For the break listener's connection of its own.
    url: Url,
    cfg: Config,
    /// Who broke which token id, as a watcher's break notices said.
    breaks: changes::Breaks,
}

struct Db {
    rt: Runtime,
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    link: Option<Link>,
    /// The URL without its password, for messages.
    shown: String,
    database: String,
    schema: String,
    table: String,
    timeout: Duration,
    /// The wake locks held, and what to block on.
    wakes: Wakes,
    /// Whether a statement may create the schema and lease table: not
    /// while `status` reads.
    read_only: bool,
}

pub use crate::backend::forms::POSTGRES as FORM;

/// Opens `postgres://` or `postgresql://`.
pub fn open(url: &Url, cfg: &Config) -> Result<(Box<dyn Backend>, Location)> {
    let b = PgBackend::open(url, cfg)?;
    Ok((Box::new(b), url.location("postgres")))
}

impl PgBackend {
    fn open(url: &Url, cfg: &Config) -> Result<PgBackend> {
        let shown = url.shown().to_string();
        let timeout = cfg.timeout.max(Duration::from_millis(1));
        let target = options(url, timeout)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| fail(INTERNAL, format!("cannot start the PostgreSQL client: {e}")))?;
        let table = sql::table_name(&cfg.prefix);
        let mut db = Db {
            rt,
            config: target.config,
            tls: target.tls.map(MakeRustlsConnect::new),
            link: None,
            shown,
            database: target.database,
            schema: target.schema.clone(),
            table: table.clone(),
            timeout,
            wakes: Wakes::default(),
            read_only: false,
        };
        match db.connect() {
            Ok(l) => db.link = Some(l),
            // Full for now (max_connections): the first request connects
            // again, and fails then if it must; a waiter retries it with
            // back-off until --wait runs out.
            Err(Failed::Pg(e)) if is_full(&e) => {}
            Err(e) => return Err(db.explain(e)),
        }
        let scope = db.scope();
        Ok(PgBackend {
            db: Arc::new(Mutex::new(db)),
            leases: Leases::in_schema(&DIALECT, Some(&target.schema), &table)
                .notifying("SELECT pg_notify(?, ?)", &scope)
                .announcing(&sql::changes_channel(&scope)),
            url: url.clone(),
            cfg: cfg.clone(),
            breaks: Default::default(),
        })
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.db)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(l) = self.link.take() {
            l.close(&self.rt, self.timeout.min(link::QUIET));
        }
    }
}

/// A panic elsewhere cannot leave `Db` half-changed in a way that matters:
/// at worst a wake lock is thought held, which only affects latency.
fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    fn explain(&self, e: Failed) -> anyhow::Error {
        match e {
            Failed::Pg(e) => describe(&e, &self.shown, &self.database, self.timeout),
            Failed::TimedOut => silent(&self.shown, self.timeout),
            Failed::Elsewhere(e) => e,
        }
    }

    /// Opens a connection; a port that answers in another protocol is named.
    fn connect(&self) -> link::Answer<Link> {
        let look = |e: Option<&tokio_postgres::Error>, within| {
            conn::elsewhere(&self.config, &self.shown, e, within)
        };
        Link::connect(
            &self.rt,
            &self.config,
            self.tls.as_ref(),
            self.timeout,
            &look,
        )
    }

    /// Connects unless connected.
    fn link(&mut self) -> Result<()> {
        if self.link.as_ref().is_some_and(Link::is_closed) {
            self.drop_connection();
        }
        if self.link.is_none() {
            let l = self
                .connect()
                // A failure sent no request, so it changed nothing.
                .map_err(|e| crate::error::mark_unsent(self.explain(e)))?;
            self.link = Some(l);
        }
        Ok(())
    }

    fn connected(&self) -> &Link {
        self.link.as_ref().expect("connected first")
    }

    fn drop_connection(&mut self) {
        self.link = None;
        self.wakes.connection_closed();
    }

    /// A failed request: the connection goes when it can no longer be
    /// trusted (a late reply to a timed-out request would be read as the
    /// next one's answer).
    fn fail(&mut self, e: Failed) -> anyhow::Error {
        let broken = match &e {
            Failed::Pg(e) => breaks_connection(e),
            Failed::TimedOut | Failed::Elsewhere(_) => true,
        };
        let err = self.explain(e);
        if broken {
            self.drop_connection();
        }
        err
    }

    /// Runs `f` on the connection, creating the schema and table on first use.
    fn run<T>(
        &mut self,
        mut f: impl FnMut(&Link, &Runtime, Duration) -> link::Answer<T>,
    ) -> Result<T> {
        let mut created = false;
        loop {
            let t = self.timeout;
            self.link()?;
            let r = f(self.connected(), &self.rt, t);
            match r {
                Ok(v) => return Ok(v),
                Err(Failed::Pg(e)) if self.read_only && missing(&e) => {
                    return Err(anyhow::Error::new(sql::NoTable));
                }
                Err(Failed::Pg(e)) if !created && missing(&e) => {
                    created = true;
                    // The statement found no table, so it changed nothing.
                    self.create_table().map_err(crate::error::mark_unsent)?;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// CREATE SCHEMA and TABLE IF NOT EXISTS. Two processes may race to
    /// create them; the loser's "already exists" means the same as success.
    fn create_table(&mut self) -> Result<()> {
        let schema = DIALECT.ident(&self.schema);
        let ddl = [
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            sql::create_table_in(&DIALECT, Some(&self.schema), &self.table),
        ];
        for (i, q) in ddl.iter().enumerate() {
            let t = self.timeout;
            self.link()?;
            match self.connected().simple(&self.rt, t, q) {
                Ok(_) => {}
                Err(Failed::Pg(e)) if raced(&e) => {}
                // No right to create the schema, which may well exist.
                Err(Failed::Pg(e)) if i == 0 && denied(&e) => {}
                Err(Failed::Pg(e)) if denied(&e) => {
                    return Err(fail(
                        UNAVAILABLE,
                        format!(
                            "the user in {} may not create table {}.{} in database '{}': \
                             grant it CREATE on schema {schema}, create the table once as a user \
                             who may (see the README), or pick a schema with ?schema=",
                            self.shown,
                            schema,
                            DIALECT.ident(&self.table),
                            self.database
                        ),
                    ))
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    /// A wake-up statement (literal values only): its rows' first columns,
    /// or the server's error code; any other failure drops the connection.
    fn simple(&mut self, q: &str, wait: Option<Duration>) -> Result<Vec<String>, Option<String>> {
        let limit = self.timeout + wait.unwrap_or_default();
        self.link().map_err(|_| None)?;
        match self.connected().simple(&self.rt, limit, q) {
            Ok(rows) => Ok(rows),
            Err(Failed::Pg(e)) if !breaks_connection(&e) => {
                Err(e.code().map(|c| c.code().to_string()))
            }
            Err(_) => {
                self.drop_connection();
                Err(None)
            }
        }
    }

    /// Waits up to `limit` for a notification on this connection.
    fn notified(&mut self, limit: Duration) -> bool {
        match self.link.as_mut() {
            Some(l) => l.notified(&self.rt, limit),
            None => {
                std::thread::sleep(limit);
                false
            }
        }
    }

    fn drop_notes(&mut self) {
        if let Some(l) = self.link.as_mut() {
            l.take_notes();
        }
    }
}

/// The table (or its schema) does not exist yet.
fn missing(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("42P01" | "3F000"))
}

/// Another process created it first.
fn raced(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("42P06" | "42P07" | "23505")
    )
}

fn denied(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some("42501")
}

impl Exec for Db {
    fn query(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<Vec<Val>>> {
        self.run(|l, rt, t| l.query(rt, t, sql, vals))
    }

    fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64> {
        self.run(|l, rt, t| l.execute(rt, t, sql, vals))
    }
}

impl Backend for PgBackend {
    fn acquire(&mut self, req: &Request) -> Result<Acquire> {
        let mut db = self.db();
        let (r, fx) = self.leases.acquire(&mut *db, req)?;
        match &r {
            Acquire::Acquired(g) => {
                db.granted(req.name, &req.kind, g.fence);
                // Room left for another (a reader, a free slot).
                if fx.wake {
                    db.announce(req.name);
                }
            }
            // A woken waiter keeps the name's wake lock and listens, so the
            // others sleep on, unless a waiter ahead of it is owed the wake-up.
            Acquire::Busy(info) | Acquire::Queued(info) => {
                db.busy(req.name, info.as_ref(), fx.owed)
            }
        }
        Ok(r)
    }

    fn renew(&mut self, name: &str, token: &str, lease: Duration) -> Result<Check> {
        let mut db = self.db();
        let (r, who) = self.leases.renew(&mut *db, name, token, lease)?;
        match r {
            // Taken again after a reconnect, or once a waiter that had it lets go.
            Check::Done => db.renewed(name, who),
            _ => db.drop_wake(name, false),
        }
        Ok(r)
    }

    fn release(&mut self, name: &str, token: &str) -> Result<Check> {
        let mut db = self.db();
        let (r, fx) = self.leases.release(&mut *db, name, token)?;
        db.drop_wake(name, fx.wake);
        Ok(r)
    }

    fn force_release(&mut self, name: &str, only: Option<&str>) -> Result<Vec<LockInfo>> {
        // A broken live holder hears of it on its break channel (the store
        // sends that with the write) and lets its wake lock go as it stops;
        // the announcement wakes a waiter that listens.
        let mut db = self.db();
        let (r, fx) = self.leases.force_release(&mut *db, name, only)?;
        if fx.wake {
            db.announce(name);
        }
        Ok(r)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn status(&mut self, names: Option<&[String]>) -> Result<Vec<LockInfo>> {
        // A look changes nothing: no table means no locks.
        let mut db = self.db();
        db.read_only = true;
        let r = self.leases.status(&mut *db, names);
        db.read_only = false;
        sql::none_without_table(r)
    }

    fn waiter(&mut self, name: &str) -> Result<Box<dyn Waiter>> {
        // No statement and no connection of its own: it waits on this one.
        Ok(Box::new(PgWaiter::new(Arc::clone(&self.db), name)))
    }

    fn reconnect(&mut self) -> Result<()> {
        let mut db = self.db();
        db.drop_connection();
        db.link()
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.db().timeout = timeout.max(Duration::from_millis(1));
        Ok(())
    }

    fn changes(&mut self, names: Option<&[String]>) -> Result<Option<Box<dyn Waiter>>> {
        let n = changes::subscribe(&self.url, &self.cfg, names, Arc::clone(&self.breaks))?;
        Ok(Some(Box::new(n)))
    }

    /// What a break notice said, else what the row records (a watch of
    /// every lock hears no notices).
    fn broken_by(&mut self, name: &str, token_id: &str) -> Result<Option<String>> {
        if let Some(by) = changes::broken_by(&self.breaks, token_id) {
            return Ok(Some(by));
        }
        let mut db = self.db();
        db.read_only = true;
        let r = self.leases.broken_by(&mut *db, name, token_id);
        db.read_only = false;
        sql::none_without_table(r)
    }

    fn watch_breaks(&mut self, name: &str, token: &str, on_break: Box<dyn FnOnce(String) + Send>) {
        breaks::watch(&self.url, &self.cfg, name, token, on_break);
    }
}
