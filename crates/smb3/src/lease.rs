//! Lease breaks as the user of the client sees them. Opens of files hold a lease (read, write and handle
//! caching where the server grants it); when another client's open conflicts, the server breaks the lease
//! with an unsolicited notification and waits for our acknowledgment before it lets that open proceed. A
//! [`LeaseBreakHandler`] registered on a [`Tree`](crate::Tree) runs first (to flush cached writes and drop
//! cached data), and only when it is done is the break acknowledged, so nothing cached here outlives another
//! client's change.

use futures_util::future::BoxFuture;

use crate::wire::durable::lease_state;

/// One lease break, for the open of `path` holding lease `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseBreak {
    /// Share-relative path of the open.
    pub path: String,
    pub key: [u8; 16],
    /// `lease_state` bits held until now.
    pub current: u32,
    /// `lease_state` bits the server leaves us.
    pub new: u32,
}

impl LeaseBreak {
    /// Written data may no longer be held back: it must reach the server before the acknowledgment.
    pub fn loses_write_caching(&self) -> bool {
        self.current & lease_state::WRITE_CACHING != 0 && self.new & lease_state::WRITE_CACHING == 0
    }

    /// Data and attributes read before may be stale from now on.
    pub fn loses_read_caching(&self) -> bool {
        self.current & lease_state::READ_CACHING != 0 && self.new & lease_state::READ_CACHING == 0
    }
}

/// Runs before a lease break is acknowledged. Kept short: the server waits for the acknowledgment (and
/// gives up on it after 35 s, MS-SMB2 3.3.2.5), and the client acknowledges after at most
/// [`HANDLER_BOUND`](crate::lease::HANDLER_BOUND) whatever the handler does.
pub trait LeaseBreakHandler: Send + Sync {
    fn lease_breaking(&self, event: LeaseBreak) -> BoxFuture<'static, ()>;
}

/// How long a handler may hold up an acknowledgment.
pub const HANDLER_BOUND: std::time::Duration = std::time::Duration::from_secs(25);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_break_takes_away() {
        let rwh = lease_state::READ_CACHING | lease_state::WRITE_CACHING | lease_state::HANDLE_CACHING;
        let rh = lease_state::READ_CACHING | lease_state::HANDLE_CACHING;
        let b = LeaseBreak { path: "f".into(), key: [1; 16], current: rwh, new: rh };
        assert!(b.loses_write_caching() && !b.loses_read_caching());
        let b = LeaseBreak { current: rh, new: lease_state::NONE, ..b };
        assert!(!b.loses_write_caching() && b.loses_read_caching());
    }
}
