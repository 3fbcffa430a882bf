//! A TCP proxy in front of a private server that forwards every request but
//! holds back the reply to one of them: the server applies the request, the
//! client times out waiting for the answer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LateReply {
    pub port: u16,
    /// Set once the held-back request has gone through to the server.
    pub fired: Arc<AtomicBool>,
}

impl LateReply {
    /// Listens on a free loopback port and forwards to `upstream`. The first
    /// client write containing `marker` (any connection) reaches the server
    /// as usual, but the server's reply to it is held back for `delay`.
    pub fn start(upstream: u16, marker: &[u8], delay: Duration) -> LateReply {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let fired = Arc::new(AtomicBool::new(false));
        let (f, marker) = (fired.clone(), marker.to_vec());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let hold = Arc::new(Mutex::new(None::<Instant>));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (hold2, f2, m2) = (hold.clone(), f.clone(), marker.clone());
                std::thread::spawn(move || {
                    pump(c2, s2, |chunk| {
                        let hit = chunk.windows(m2.len()).any(|w| w == m2.as_slice());
                        if hit && !f2.swap(true, Ordering::SeqCst) {
                            *hold2.lock().unwrap() = Some(Instant::now() + delay);
                        }
                    })
                });
                std::thread::spawn(move || {
                    pump(server, client, |_| {
                        let until = *hold.lock().unwrap();
                        if let Some(t) = until {
                            std::thread::sleep(t.saturating_duration_since(Instant::now()));
                        }
                    })
                });
            }
        });
        LateReply { port, fired }
    }
}

/// Copies `from` to `to`, calling `before` with each chunk before forwarding it.
fn pump(mut from: TcpStream, mut to: TcpStream, mut before: impl FnMut(&[u8])) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                before(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A TCP proxy that forwards both ways until it is cut: from then on it
/// swallows everything on open connections and forwards nothing on new
/// ones, as a network partition between its clients and the server would.
pub struct Cuttable {
    pub port: u16,
    cut: Arc<AtomicBool>,
}

impl Cuttable {
    pub fn start(upstream: u16) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if c.load(Ordering::SeqCst) {
                    // Held open, never answered: the client times out.
                    std::mem::forget(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (cut_up, cut_down) = (c.clone(), c.clone());
                std::thread::spawn(move || swallow_once_cut(c2, s2, cut_up));
                std::thread::spawn(move || swallow_once_cut(server, client, cut_down));
            }
        });
        Cuttable { port, cut }
    }

    /// Partitions the proxy's clients from the server.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until `cut`, then reads and drops everything.
fn swallow_once_cut(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if cut.load(Ordering::SeqCst) => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if !cut.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// A TCP proxy that forwards both ways and, on `reset`, closes every
/// connection open through it, as a server that ended its clients' sessions
/// or a firewall that dropped them would; new connections go through.
pub struct Resetting {
    pub port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Resetting {
    pub fn start(upstream: u16) -> Resetting {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(Mutex::new(Vec::new()));
        let o = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                o.lock().unwrap().push(client.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2, |_| {}));
                std::thread::spawn(move || pump(server, client, |_| {}));
            }
        });
        Resetting { port, open }
    }

    /// Closes every connection made through the proxy so far; how many
    /// (some may have been closed already by their ends).
    pub fn reset(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        for c in open.iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
        open.drain(..).count()
    }
}
