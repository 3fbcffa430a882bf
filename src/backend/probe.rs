//! What a server speaks, for the error line when a URL names the wrong port:
//! `mysql://` at a Redis port waits for a greeting that never comes, and
//! `redis://` at a MySQL port reads a greeting it cannot parse.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The protocol the server at `host:port` answers in, as far as a short look
/// can tell: first what it sends unasked (MySQL, SSH, SMTP greet first), then
/// its answer to a Redis `PING`. None when it says nothing recognisable.
pub fn speaks(host: &str, port: u16, within: Duration) -> Option<&'static str> {
    let end = Instant::now() + within;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, within).ok()?;
    let left = |end: Instant| {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    // Half the time for a greeting; the rest for an answer to PING.
    s.set_read_timeout(Some(within / 2)).ok()?;
    let mut buf = [0u8; 64];
    if let Ok(n) = s.read(&mut buf) {
        if n > 0 {
            return greeting(&buf[..n]);
        }
        return None;
    }
    s.write_all(b"PING\r\n").ok()?;
    s.set_read_timeout(Some(left(end))).ok()?;
    let n = s.read(&mut buf).ok()?;
    answer(&buf[..n])
}

/// A protocol from the bytes a server sends before the client says anything.
fn greeting(b: &[u8]) -> Option<&'static str> {
    // MySQL/MariaDB: a 3-byte length, sequence 0, then protocol version 10.
    if b.len() >= 5 && b[3] == 0 && b[4] == 10 {
        return Some("MySQL/MariaDB");
    }
    if b.starts_with(b"SSH-") {
        return Some("SSH");
    }
    if b.starts_with(b"220") {
        return Some("SMTP or FTP");
    }
    None
}

/// A protocol from the answer to `PING\r\n`.
fn answer(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"+PONG") || b.starts_with(b"-NOAUTH") || b.starts_with(b"-ERR") {
        return Some("Redis");
    }
    if b.starts_with(b"HTTP/") {
        return Some("HTTP");
    }
    // A TLS server answers plain text with an alert record.
    if b.first() == Some(&0x15) && b.get(1) == Some(&3) {
        return Some("TLS");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_and_answers_name_the_protocol() {
        let mysql = b"J\0\0\0\x0a5.5.5-10.11.6-MariaDB\0";
        assert_eq!(greeting(mysql), Some("MySQL/MariaDB"));
        assert_eq!(greeting(b"SSH-2.0-OpenSSH_9.2\r\n"), Some("SSH"));
        assert_eq!(greeting(b"hello"), None);
        assert_eq!(answer(b"+PONG\r\n"), Some("Redis"));
        assert_eq!(
            answer(b"-NOAUTH Authentication required.\r\n"),
            Some("Redis")
        );
        assert_eq!(answer(b"HTTP/1.1 400 Bad Request\r\n"), Some("HTTP"));
        assert_eq!(answer(b"\x15\x03\x03\x00\x02\x02\x32"), Some("TLS"));
        assert_eq!(answer(b""), None);
    }
}
