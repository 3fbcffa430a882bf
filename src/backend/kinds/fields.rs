//! The sizes every backend stores a holder's fields in.

use crate::holder::Holder;

/// The holder fields cut to the sizes every backend stores.
pub fn clipped(h: &Holder) -> Holder {
    Holder {
        host: clip(&h.host, MAX_HOST),
        pid: h.pid,
        user: clip(&h.user, MAX_USER),
        command: clip(&h.command, MAX_COMMAND),
    }
}

/// Column sizes, in bytes, of the holder fields (see the SQL CREATE TABLE statements).
pub const MAX_HOST: usize = 255;
pub const MAX_USER: usize = 255;
pub const MAX_COMMAND: usize = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
