//! The server's recent nonces of one session, so that a reused one is refused.
//!
//! MS-SMB2 2.2.41: the transform header's Nonce "MUST NOT be reused for all
//! encrypted messages within a session". A reused nonce under AES-GCM or
//! AES-CCM leaks the XOR of two plaintexts (and, for GCM, enough to forge
//! tags), so a server that repeats one is broken or hostile, whatever the
//! message it carries. Servers draw nonces differently (Samba: a random
//! prefix and a counter; Windows and Linux: random bytes), so the only check
//! that fits all of them is "not seen before", not "greater than the last".
//!
//! Memory is bounded: the last [`NONCES_REMEMBERED`] nonces of the session.
//! An older nonce coming back is either a replayed frame, whose message id
//! was already answered (the connection refuses a second response to an id),
//! or a server that cycles nonces over thousands of messages, which this
//! window does not catch. 1024 nonces cost about 50 KiB per session.

use std::collections::{HashSet, VecDeque};

/// How many of a session's most recent server nonces are remembered.
pub const NONCES_REMEMBERED: usize = 1024;

/// The nonce bytes a cipher actually uses (11 for CCM, 12 for GCM), zero
/// padded: the unused tail of the 16-byte field must not make a reused nonce
/// look new.
pub type UsedNonce = [u8; 16];

/// The last `capacity` nonces received, oldest first out.
#[derive(Debug)]
pub struct NonceWindow {
    capacity: usize,
    order: VecDeque<UsedNonce>,
    seen: HashSet<UsedNonce>,
}

impl NonceWindow {
    pub fn new(capacity: usize) -> NonceWindow {
        let capacity = capacity.max(1);
        NonceWindow { capacity, order: VecDeque::with_capacity(capacity), seen: HashSet::with_capacity(capacity) }
    }

    /// Records `nonce`; false (and nothing recorded) when it is already among
    /// the remembered ones.
    pub fn admit(&mut self, nonce: UsedNonce) -> bool {
        if !self.seen.insert(nonce) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(nonce);
        true
    }

    /// How many nonces are remembered now (at most the capacity).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// `field` cut to the `used` bytes a cipher reads, the rest zeroed.
pub fn used_part(field: &[u8; 16], used: usize) -> UsedNonce {
    let used = used.min(16);
    let mut out = [0u8; 16];
    out[..used].copy_from_slice(&field[..used]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> UsedNonce {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&i.to_le_bytes());
        out
    }

    #[test]
    fn a_nonce_is_admitted_once() {
        let mut w = NonceWindow::new(8);
        assert!(w.admit(n(1)));
        assert!(w.admit(n(2)));
        assert!(!w.admit(n(1)), "reuse of a remembered nonce");
        assert!(!w.admit(n(2)));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn memory_stays_at_the_capacity_and_forgets_the_oldest() {
        let mut w = NonceWindow::new(4);
        for i in 0..10_000 {
            assert!(w.admit(n(i)));
            assert!(w.len() <= 4);
        }
        assert!(w.seen.len() <= 4);
        assert!(!w.admit(n(9_999)) && !w.admit(n(9_996)), "the last four are remembered");
        assert!(w.admit(n(9_995)), "older ones are forgotten");
    }

    #[test]
    fn a_refused_nonce_does_not_evict_anything() {
        let mut w = NonceWindow::new(2);
        assert!(w.admit(n(1)) && w.admit(n(2)));
        assert!(!w.admit(n(2)));
        assert!(!w.admit(n(1)), "still remembered after a refused duplicate");
    }

    #[test]
    fn only_the_bytes_a_cipher_uses_count() {
        let mut a = [7u8; 16];
        let mut b = a;
        a[12] = 1;
        b[12] = 2;
        assert_eq!(used_part(&a, 12), used_part(&b, 12), "GCM ignores bytes 12..16");
        assert_ne!(used_part(&a, 16), used_part(&b, 16));
        assert_eq!(used_part(&a, 11)[11..], [0; 5]);
        assert_eq!(used_part(&a, 99), a);
    }

    #[test]
    fn capacity_zero_still_catches_back_to_back_reuse() {
        let mut w = NonceWindow::new(0);
        assert!(w.admit(n(1)));
        assert!(!w.admit(n(1)));
    }
}
