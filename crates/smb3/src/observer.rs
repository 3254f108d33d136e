//! Instrumentation hooks: the client reports traffic and session events to
//! an [`Observer`] carried in its options, so the crate needs no metrics
//! library and tests of SMB traffic share no global state. The driver turns
//! these calls into Prometheus series; a library user may ignore them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::Command;

/// Receives the client's events. Every method has an empty default, and all
/// are called on hot paths: keep them cheap (an atomic add, not a lock).
pub trait Observer: Send + Sync + 'static {
    /// Bytes written to the socket (framing and transform header included).
    fn bytes_sent(&self, _bytes: usize) {}
    /// Bytes read from the socket (framing included).
    fn bytes_received(&self, _bytes: usize) {}
    /// A request (or compound chain, under its first command) from the
    /// moment it was written until its last response arrived.
    fn round_trip(&self, _command: Command, _elapsed: Duration) {}
    /// A session was authenticated on a live connection.
    fn session_opened(&self) {}
    /// `count` sessions ended (logoff, connection lost or dropped).
    fn sessions_closed(&self, _count: u64) {}
    /// A session was found dead and is being replaced by a new one.
    fn reconnect(&self) {}
    /// The connection was lost (`reason` is safe to log); reconnecting starts.
    fn disconnected(&self, _reason: &str) {}
    /// The connection is back, trees and open files re-bound; `outage` is
    /// how long it was away.
    fn reconnected(&self, _outage: Duration) {}
}

/// A process-wide observer (a `static`) observes as itself.
impl<T: Observer + ?Sized> Observer for &'static T {
    fn bytes_sent(&self, bytes: usize) {
        (**self).bytes_sent(bytes)
    }
    fn bytes_received(&self, bytes: usize) {
        (**self).bytes_received(bytes)
    }
    fn round_trip(&self, command: Command, elapsed: Duration) {
        (**self).round_trip(command, elapsed)
    }
    fn session_opened(&self) {
        (**self).session_opened()
    }
    fn sessions_closed(&self, count: u64) {
        (**self).sessions_closed(count)
    }
    fn reconnect(&self) {
        (**self).reconnect()
    }
    fn disconnected(&self, reason: &str) {
        (**self).disconnected(reason)
    }
    fn reconnected(&self, outage: Duration) {
        (**self).reconnected(outage)
    }
}

/// An observer that ignores everything: the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// A shared observer handle for [`ClientOptions`](crate::ClientOptions):
/// cheap to clone, printed as its presence only, and never part of a
/// session's identity (two options that differ only here share sessions).
#[derive(Clone)]
pub struct ObserverHandle(Arc<dyn Observer>);

impl ObserverHandle {
    pub fn new(observer: Arc<dyn Observer>) -> ObserverHandle {
        ObserverHandle(observer)
    }
}

impl Default for ObserverHandle {
    fn default() -> Self {
        ObserverHandle(Arc::new(NoObserver))
    }
}

impl std::ops::Deref for ObserverHandle {
    type Target = dyn Observer;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserverHandle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Count(AtomicU64);
    impl Observer for Count {
        fn bytes_sent(&self, bytes: usize) {
            self.0.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    #[test]
    fn handle_dispatches_and_defaults_are_silent() {
        let count = Arc::new(Count::default());
        let handle = ObserverHandle::new(count.clone());
        handle.bytes_sent(5);
        handle.clone().bytes_sent(7);
        handle.round_trip(Command::Read, Duration::from_millis(1));
        assert_eq!(count.0.load(Ordering::Relaxed), 12);
        ObserverHandle::default().session_opened();
        assert_eq!(format!("{handle:?}"), "ObserverHandle");
    }
}
