//! What the supervisor and the keep-alive loop react to: signals (from the
//! signal thread), a lost lease (from the renewal thread or a break notice),
//! and a watched process's exit. A leaf, so that the threads that send
//! events need not know who receives them.

use nix::sys::signal::Signal;

pub enum Event {
    Signal(Signal),
    /// The server says the lease is gone; the message says why.
    Lost(String),
    /// A watched process (`acquire --keepalive-pid`) exited.
    Watched,
}
