//! What a server speaks, for the error line when a URL names the wrong port:
//! `mysql://` at a Redis port waits for a greeting that never comes, and
//! `redis://` at a MySQL port reads a greeting it cannot parse.
//!
//! No one opening line draws an answer from every protocol (Redis ignores
//! bytes until a newline, PostgreSQL and ZooKeeper read a binary length
//! first, a TLS server closes on anything but a handshake), so the look
//! opens one connection per opening line, all at once, and takes the first
//! answer that names its protocol. Each reader recognises only the answer
//! to its own line, so they cannot disagree.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A protocol a server was seen to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Mysql,
    Redis,
    Sentinel,
    Postgres,
    ZooKeeper,
    /// HTTP/2 without TLS, as etcd's gRPC port speaks it.
    Http2,
    Http,
    Tls,
    Ssh,
    SmtpOrFtp,
}

impl Proto {
    /// The protocol's name in a sentence.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Mysql => "MySQL/MariaDB",
            Proto::Redis => "Redis",
            Proto::Sentinel => "Redis Sentinel",
            Proto::Postgres => "PostgreSQL",
            Proto::ZooKeeper => "ZooKeeper",
            Proto::Http2 => "HTTP/2 (gRPC)",
            Proto::Http => "HTTP",
            Proto::Tls => "TLS",
            Proto::Ssh => "SSH",
            Proto::SmtpOrFtp => "SMTP or FTP",
        }
    }

    /// How a dlock URL for such a server begins, when dlock has one.
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            Proto::Mysql => Some("mysql://"),
            Proto::Redis => Some("redis://"),
            Proto::Sentinel => Some("redis+sentinel://HOST:PORT/SERVICE"),
            Proto::Postgres => Some("postgres://"),
            Proto::ZooKeeper => Some("zk://"),
            Proto::Http2 => Some("etcd://"),
            _ => None,
        }
    }
}

/// The line for a URL whose port answers in `other` instead of `expected`:
/// what answered, and what to write instead. `tls_form` is the scheme's
/// TLS spelling, suggested when the port speaks TLS.
pub fn wrong_port(
    (host, port): (&str, u16),
    shown: &str,
    expected: &str,
    other: Proto,
    tls_form: Option<&str>,
) -> String {
    let at = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let instead = match (other, other.scheme()) {
        (Proto::Tls, _) => match tls_form {
            Some(form) => format!("for a TLS port use {form}; otherwise fix the port in {shown}"),
            None => format!("is the port in {shown} right?"),
        },
        (Proto::Http2, Some(scheme)) => {
            format!("for etcd use {scheme}; otherwise fix the port in {shown}")
        }
        (_, Some(scheme)) => format!(
            "for {} use {scheme}; otherwise fix the port in {shown}",
            other.name()
        ),
        (_, None) => format!("is the port in {shown} right?"),
    };
    format!(
        "the server at {at} does not speak the {expected} protocol: it answers as {} does; {instead}",
        other.name()
    )
}

/// What a reader makes of the bytes read so far.
enum Seen {
    Is(Proto),
    Not,
    More,
}

type Reader = fn(&[u8]) -> Seen;

/// How long each look listens before it speaks.
const GREET_FIRST: Duration = Duration::from_millis(50);

/// The opening lines, each with its reader.
const LOOKS: [(&[u8], Reader); 5] = [
    // Greeters first (this one must be first: see `look`) (MySQL, SSH, SMTP send before the client), then Redis.
    (b"PING\r\nROLE\r\n", greeting_or_redis),
    // A four-letter word, answered in text even when not allowed.
    (b"srvr", zookeeper),
    // PostgreSQL's SSLRequest: answered with one byte, S or N.
    (&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], postgres),
    (H2_PREFACE, http2),
    (CLIENT_HELLO, tls),
];

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A TLS 1.2 ClientHello (AES-GCM and TLS 1.3 suites, x25519/P-256, no
/// SNI): any TLS server answers it with a handshake or alert record.
const CLIENT_HELLO: &[u8] = &[
    // Record: handshake, TLS 1.0 framing, 87 bytes; ClientHello of 83.
    0x16, 3, 1, 0, 87, 1, 0, 0, 83, 3, 3, // Random (32 bytes), then an empty session id.
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
    0, // Seven cipher suites; no compression.
    0, 14, 0x13, 1, 0x13, 2, 0x13, 3, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30, 1, 0,
    // Extensions (28 bytes): groups, point formats, signature algorithms.
    0, 28, 0, 0x0a, 0, 6, 0, 4, 0, 0x1d, 0, 0x17, 0, 0x0b, 0, 2, 1, 0, 0, 0x0d, 0, 8, 0, 6, 4, 3, 8,
    4, 4, 1,
];

/// The protocol the server at `host:port` answers in, as far as a short
/// look (at most `within`) can tell. None when it says nothing
/// recognisable, or nothing listens there.
pub fn speaks(host: &str, port: u16, within: Duration) -> Option<Proto> {
    let end = Instant::now() + within;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let (tx, rx) = mpsc::channel();
    for i in 0..LOOKS.len() {
        let tx = tx.clone();
        // Each look ends by its own deadline; nobody waits for the slow ones.
        let _ = std::thread::Builder::new()
            .name("probe".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = tx.send(look(addr, i, end));
            });
    }
    drop(tx);
    // Ends when one names a protocol, or when every look has given up.
    rx.iter().flatten().next()
}

/// Sends the `i`th opening line on a connection of its own and reads until
/// its reader decides or `end` passes.
fn look(addr: SocketAddr, i: usize, end: Instant) -> Option<Proto> {
    let (line, reader) = LOOKS[i];
    let left = || {
        let d = end.saturating_duration_since(Instant::now());
        (!d.is_zero()).then_some(d)
    };
    let mut s = TcpStream::connect_timeout(&addr, left()?).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    // A server that greets first (MySQL) is the greeting reader's: the
    // others leave it before they send it anything it would count as a
    // failed handshake.
    s.set_read_timeout(Some(left()?.min(GREET_FIRST))).ok()?;
    match s.read(&mut chunk) {
        Ok(0) => return None,
        Ok(n) if i == 0 => buf.extend_from_slice(&chunk[..n]),
        Ok(_) => return None,
        Err(_) => {}
    }
    if buf.is_empty() {
        s.set_write_timeout(left()).ok()?;
        s.write_all(line).ok()?;
    }
    while buf.len() < 4096 {
        if !buf.is_empty() {
            match reader(&buf) {
                Seen::Is(p) => return Some(p),
                Seen::Not => return None,
                Seen::More => {}
            }
        }
        s.set_read_timeout(Some(left()?)).ok()?;
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    None
}

/// MySQL, SSH and SMTP greet before the client says anything; a Redis
/// server answers PING and then ROLE, whose first field tells a Sentinel.
fn greeting_or_redis(b: &[u8]) -> Seen {
    // MySQL/MariaDB: a 3-byte length, sequence 0, then protocol version 10.
    if b.len() >= 5 && b[3] == 0 && b[4] == 10 {
        return Seen::Is(Proto::Mysql);
    }
    if b.starts_with(b"SSH-") {
        return Seen::Is(Proto::Ssh);
    }
    if b.starts_with(b"220") {
        return Seen::Is(Proto::SmtpOrFtp);
    }
    if b.starts_with(b"HTTP/") {
        return Seen::Is(Proto::Http);
    }
    if b.starts_with(b"-NOAUTH") || b.starts_with(b"-ERR") {
        return Seen::Is(Proto::Redis);
    }
    if !b.starts_with(b"+PONG\r\n") {
        return if b"+PONG\r\n".starts_with(b) {
            Seen::More
        } else {
            Seen::Not
        };
    }
    let role = &b[7..];
    const SENTINEL: &[u8] = b"*2\r\n$8\r\nsentinel\r\n";
    if role.starts_with(SENTINEL) {
        Seen::Is(Proto::Sentinel)
    } else if SENTINEL.starts_with(role) {
        Seen::More
    } else {
        Seen::Is(Proto::Redis)
    }
}

fn zookeeper(b: &[u8]) -> Seen {
    // Serving, refusing four-letter words, or in an election.
    const ANSWERS: [&[u8]; 3] = [
        b"Zookeeper version",
        b"srvr is not executed",
        b"This ZooKeeper instance is not currently serving",
    ];
    for a in ANSWERS {
        if b.starts_with(a) {
            return Seen::Is(Proto::ZooKeeper);
        }
        if a.starts_with(b) {
            return Seen::More;
        }
    }
    Seen::Not
}

fn postgres(b: &[u8]) -> Seen {
    match b {
        [b'S' | b'N'] => Seen::Is(Proto::Postgres),
        _ => Seen::Not,
    }
}

/// A server's first HTTP/2 frame is SETTINGS (type 4).
fn http2(b: &[u8]) -> Seen {
    match b.get(3) {
        Some(4) => Seen::Is(Proto::Http2),
        Some(_) => Seen::Not,
        None => Seen::More,
    }
}

/// A handshake (22) or alert (21) record of TLS 1.x.
fn tls(b: &[u8]) -> Seen {
    match b {
        [0x15 | 0x16, 3, ..] => Seen::Is(Proto::Tls),
        [0x15 | 0x16] => Seen::More,
        _ => Seen::Not,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is(s: Seen) -> Option<Proto> {
        match s {
            Seen::Is(p) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn answers_name_the_protocol() {
        let mysql = b"J\0\0\0\x0a5.5.5-10.11.6-MariaDB\0";
        assert_eq!(is(greeting_or_redis(mysql)), Some(Proto::Mysql));
        assert_eq!(
            is(greeting_or_redis(b"SSH-2.0-OpenSSH_9.2\r\n")),
            Some(Proto::Ssh)
        );
        let redis = b"+PONG\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";
        assert_eq!(is(greeting_or_redis(redis)), Some(Proto::Redis));
        let sentinel = b"+PONG\r\n*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n";
        assert_eq!(is(greeting_or_redis(sentinel)), Some(Proto::Sentinel));
        assert!(matches!(greeting_or_redis(b"+PONG\r\n*2\r"), Seen::More));
        assert!(matches!(greeting_or_redis(b"+PO"), Seen::More));
        assert!(matches!(greeting_or_redis(b"hello"), Seen::Not));
        let noauth = b"-NOAUTH Authentication required.\r\n";
        assert_eq!(is(greeting_or_redis(noauth)), Some(Proto::Redis));
        assert_eq!(
            is(zookeeper(b"Zookeeper version: 3.8.0")),
            Some(Proto::ZooKeeper)
        );
        assert!(matches!(zookeeper(b"Zoo"), Seen::More));
        let electing = b"This ZooKeeper instance is not currently serving requests\n";
        assert_eq!(is(zookeeper(electing)), Some(Proto::ZooKeeper));
        assert_eq!(is(postgres(b"N")), Some(Proto::Postgres));
        assert!(matches!(postgres(b"-ERR x"), Seen::Not));
        let settings = b"\x00\x00\x0c\x04\x00\x00\x00\x00\x00";
        assert_eq!(is(http2(settings)), Some(Proto::Http2));
        assert!(matches!(http2(b"-ERR unknown"), Seen::Not));
        assert_eq!(is(tls(b"\x16\x03\x03\x00T\x02")), Some(Proto::Tls));
        assert_eq!(is(tls(b"\x15\x03\x03\x00\x02\x02\x46")), Some(Proto::Tls));
        assert!(matches!(tls(b""), Seen::Not));
    }

    #[test]
    fn the_client_hello_is_well_formed() {
        let len = |b: &[u8]| usize::from(b[0]) << 8 | usize::from(b[1]);
        assert_eq!(len(&CLIENT_HELLO[3..5]), CLIENT_HELLO.len() - 5);
        assert_eq!(len(&CLIENT_HELLO[7..9]), CLIENT_HELLO.len() - 9);
    }

    #[test]
    fn a_closed_port_is_nothing_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let t = Instant::now();
        assert_eq!(speaks("127.0.0.1", port, Duration::from_secs(3)), None);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
