//! One connection to the server, driven on a current-thread runtime of its
//! own: every request is bounded by a timeout (a stalled server must not
//! hold a renewal past its deadline), and notifications (LISTEN) are
//! collected by the task that reads the connection.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend::sql::Val;

/// Why a request got no answer.
pub(super) enum Failed {
    /// The driver's error (the server's, or the transport's).
    Pg(tokio_postgres::Error),
    /// No answer within the timeout; the connection is closed.
    TimedOut,
    /// The port speaks another protocol (the error says which).
    Elsewhere(anyhow::Error),
}

/// How long a connection may take before dlock looks at what listens
/// there: a Redis or ZooKeeper port never answers the start-up message.
pub(super) const QUIET: Duration = Duration::from_millis(500);

/// What a connection attempt that failed (with the driver's error) or is
/// slow (None) met instead of PostgreSQL, looked at within the time given.
pub(super) type Look<'a> =
    &'a dyn Fn(Option<&tokio_postgres::Error>, Duration) -> Option<anyhow::Error>;

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed::Pg(e)
    }
}

pub(super) type Answer<T> = std::result::Result<T, Failed>;

pub(super) struct Link {
    /// None once closing.
    client: Option<Client>,
    /// Reads the connection; aborted with the link, which closes the socket.
    driver: JoinHandle<()>,
    /// The payloads of notifications received, in order.
    notes: UnboundedReceiver<String>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Bounds `fut` by `limit` on `rt`.
fn bounded<T>(
    rt: &Runtime,
    limit: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Answer<T> {
    let _guard = rt.enter();
    match rt.block_on(tokio::time::timeout(limit, fut)) {
        Ok(r) => r.map_err(Failed::Pg),
        Err(_) => Err(Failed::TimedOut),
    }
}

/// Reads the connection until it ends, passing on each notification's payload.
async fn drive<S, T>(mut conn: Connection<S, T>, tx: UnboundedSender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let _ = tx.send(n.payload().to_string());
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

async fn open<M>(config: &Config, tls: M) -> Result<Link, tokio_postgres::Error>
where
    M: MakeTlsConnect<Socket>,
    M::Stream: Send + 'static,
    <M as MakeTlsConnect<Socket>>::TlsConnect: Send,
    <<M as MakeTlsConnect<Socket>>::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, conn) = config.connect(tls).await?;
    let (tx, rx) = unbounded_channel();
    let driver = tokio::spawn(drive(conn, tx));
    Ok(Link {
        client: Some(client),
        driver,
        notes: rx,
    })
}

/// Awaits a connection for at most `limit`, asking `look` what answers
/// when it fails or is still unanswered after [`QUIET`]; the attempt goes on
/// (within the same limit) unless `look` names another protocol.
fn staged<T>(
    rt: &Runtime,
    limit: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    look: Look,
) -> Answer<T> {
    let _guard = rt.enter();
    let started = Instant::now();
    let left = || limit.saturating_sub(started.elapsed());
    let mut fut = std::pin::pin!(fut);
    let first = limit.min(QUIET);
    let r = match rt.block_on(tokio::time::timeout(first, fut.as_mut())) {
        Ok(r) => r,
        Err(_) if first >= limit => return Err(Failed::TimedOut),
        Err(_) => {
            if let Some(e) = look(None, left().min(QUIET)) {
                return Err(Failed::Elsewhere(e));
            }
            match rt.block_on(tokio::time::timeout(left(), fut)) {
                Ok(r) => r,
                Err(_) => return Err(Failed::TimedOut),
            }
        }
    };
    r.map_err(|e| match look(Some(&e), left().min(QUIET)) {
        Some(other) => Failed::Elsewhere(other),
        None => Failed::Pg(e),
    })
}

impl Link {
    pub(super) fn connect(
        rt: &Runtime,
        config: &Config,
        tls: Option<&MakeRustlsConnect>,
        limit: Duration,
        look: Look,
    ) -> Answer<Link> {
        match tls {
            None => staged(rt, limit, open(config, NoTls), look),
            Some(t) => staged(rt, limit, open(config, t.clone()), look),
        }
    }

    /// The rows of one statement with `?` parameters (numbered here), in
    /// one round trip: no statement is prepared, since a dlock process runs
    /// each only once or twice (and poolers in transaction mode allow it).
    pub(super) fn query(
        &self,
        rt: &Runtime,
        limit: Duration,
        sql: &str,
        vals: &[Val],
    ) -> Answer<Vec<Vec<Val>>> {
        let q = numbered(sql);
        let params = typed(vals);
        let rows = bounded(rt, limit, self.client().query_typed(&q, &params))?;
        rows.iter()
            .map(|r| row_vals(r).map_err(Failed::Pg))
            .collect()
    }

    /// Runs one statement and returns how many rows it matched.
    pub(super) fn execute(
        &self,
        rt: &Runtime,
        limit: Duration,
        sql: &str,
        vals: &[Val],
    ) -> Answer<u64> {
        let q = numbered(sql);
        let params = typed(vals);
        bounded(rt, limit, self.client().execute_typed(&q, &params))
    }

    /// Statements with literal values only (the wake-up ones: integers and
    /// hex), in one round trip; the first column of each row, as text.
    pub(super) fn simple(&self, rt: &Runtime, limit: Duration, sql: &str) -> Answer<Vec<String>> {
        use tokio_postgres::SimpleQueryMessage;
        let msgs = bounded(rt, limit, self.client().simple_query(sql))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .collect())
    }

    /// Waits up to `limit` for a notification; true when one came (or had
    /// come since the last look).
    pub(super) fn notified(&mut self, rt: &Runtime, limit: Duration) -> bool {
        if self.take_notes() {
            return true;
        }
        let _guard = rt.enter();
        matches!(
            rt.block_on(tokio::time::timeout(limit, self.notes.recv())),
            Ok(Some(_))
        )
    }

    /// The next notification's payload, waiting up to `limit`; None when
    /// none came or the connection ended.
    pub(super) fn next_note(&mut self, rt: &Runtime, limit: Duration) -> Option<String> {
        let _guard = rt.enter();
        rt.block_on(tokio::time::timeout(limit, self.notes.recv()))
            .ok()
            .flatten()
    }

    /// Drops notifications already received; true when there were any.
    pub(super) fn take_notes(&mut self) -> bool {
        let mut any = false;
        while self.notes.try_recv().is_ok() {
            any = true;
        }
        any
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(Client::is_closed)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open until closed")
    }

    /// Closes the connection as a client should, within `limit`: once the
    /// replies still on their way have come, with a Terminate message. The
    /// server sends an error before the rest of its reply, and a pooler in
    /// front (PgBouncer) discards a server session whose client left before
    /// it was ready again.
    pub(super) fn close(mut self, rt: &Runtime, limit: Duration) {
        // The driver sends Terminate and ends once no reply is due.
        self.client = None;
        let _guard = rt.enter();
        let _ = rt.block_on(tokio::time::timeout(limit, &mut self.driver));
    }
}

/// `sql` with each `?` outside quotes numbered `$1`, `$2`, …
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let (mut n, mut quote) = (0, None);
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                n += 1;
                out.push_str(&format!("${n}"));
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The shared SQL passes NULL only for text columns (token, state).
static NULL_TEXT: Option<&str> = None;

fn typed(vals: &[Val]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    vals.iter()
        .map(|v| match v {
            Val::Null => (&NULL_TEXT as &(dyn ToSql + Sync), Type::TEXT),
            Val::Int(i) => (i as &(dyn ToSql + Sync), Type::INT8),
            Val::Text(s) => (s as &(dyn ToSql + Sync), Type::TEXT),
        })
        .collect()
}

fn row_vals(r: &tokio_postgres::Row) -> Result<Vec<Val>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let t = c.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map_or(Val::Null, Val::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map_or(Val::Null, |v| Val::Int(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map_or(Val::Null, |v| Val::Int(v.into()))
        } else {
            r.try_get::<_, Option<String>>(i)?
                .map_or(Val::Null, Val::Text)
        };
        out.push(v);
    }
    Ok(out)
}
