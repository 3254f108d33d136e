//! One operation at a time per key (volume name, volume directory, mount
//! path), shared by the controller and node services.
//!
//! A second caller is not queued: it gets ABORTED at once, which the CSI
//! spec prescribes for "an operation for this volume is already pending"
//! and which the sidecars and the kubelet retry with backoff. Waiting
//! instead would pile calls up behind a slow clone or mount until the
//! caller's own timeout fires, and then run them anyway.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tonic::Status;

/// Keys with an operation in progress. Cheap to clone (the set is shared).
pub(crate) struct InFlight<K> {
    set: Arc<Mutex<HashSet<K>>>,
}

impl<K> Clone for InFlight<K> {
    fn clone(&self) -> Self {
        InFlight { set: self.set.clone() }
    }
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight { set: Arc::default() }
    }
}

/// Releases its keys when dropped, also when the RPC future holding it is
/// cancelled, so an abandoned call never leaves a volume locked.
#[must_use = "the keys are released as soon as the guard is dropped"]
pub(crate) struct InFlightGuard<K: Eq + Hash> {
    set: Arc<Mutex<HashSet<K>>>,
    keys: Vec<K>,
}

impl<K: Eq + Hash + Clone> InFlight<K> {
    /// All of `keys`, or none: `Err` carries the first key already taken.
    /// All-or-nothing so that an operation spanning a name and a directory
    /// never holds one while failing on the other.
    pub(crate) fn try_acquire(&self, keys: Vec<K>) -> Result<InFlightGuard<K>, K> {
        let mut set = self.set.lock().unwrap();
        if let Some(taken) = keys.iter().find(|k| set.contains(*k)) {
            return Err(taken.clone());
        }
        set.extend(keys.iter().cloned());
        Ok(InFlightGuard { set: self.set.clone(), keys })
    }

    /// [`try_acquire`](Self::try_acquire), refusing with ABORTED and a
    /// message naming what is busy (`describe` gets the taken key).
    pub(crate) fn acquire<D: fmt::Display>(
        &self,
        keys: Vec<K>,
        describe: impl FnOnce(&K) -> D,
    ) -> Result<InFlightGuard<K>, Status> {
        self.try_acquire(keys).map_err(|taken| {
            Status::aborted(format!(
                "an operation on {} is already in progress; retry when it has finished",
                describe(&taken)
            ))
        })
    }

    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.set.lock().unwrap().is_empty()
    }
}

impl<K: Eq + Hash> Drop for InFlightGuard<K> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap();
        for key in &self.keys {
            set.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tonic::Code;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_or_nothing() {
        let in_flight = InFlight::default();
        let a = in_flight.try_acquire(keys(&["name:a", "dir:x"])).unwrap();
        assert_eq!(in_flight.try_acquire(keys(&["name:b", "dir:x"])).err().as_deref(), Some("dir:x"));
        // The refused call took nothing: name:b is still free.
        let b = in_flight.try_acquire(keys(&["name:b", "dir:y"])).unwrap();
        drop(a);
        assert!(in_flight.try_acquire(keys(&["dir:x"])).is_ok());
        drop(b);
        assert!(in_flight.is_idle());
    }

    #[test]
    fn clones_share_one_set() {
        let in_flight = InFlight::default();
        let other = in_flight.clone();
        let _held = in_flight.try_acquire(vec![1u32]).unwrap();
        assert_eq!(other.try_acquire(vec![2, 1]).err(), Some(1));
    }

    #[test]
    fn a_second_caller_is_aborted_with_the_busy_key_named() {
        let in_flight = InFlight::default();
        let _held = in_flight.acquire(keys(&["/staging/a"]), |k| k.clone()).unwrap();
        let refused = in_flight.acquire(keys(&["/staging/b", "/staging/a"]), |k| format!("path {k}")).err().unwrap();
        assert_eq!(refused.code(), Code::Aborted);
        assert_eq!(
            refused.message(),
            "an operation on path /staging/a is already in progress; retry when it has finished"
        );
    }

    #[test]
    fn a_dropped_future_releases_its_keys() {
        let in_flight = InFlight::default();
        let task = {
            let in_flight = in_flight.clone();
            async move {
                let _guard = in_flight.try_acquire(keys(&["name:a"])).unwrap();
                std::future::pending::<()>().await;
            }
        };
        let mut task = Box::pin(task);
        let waker = std::task::Waker::noop();
        assert!(task.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending());
        assert!(!in_flight.is_idle());
        drop(task);
        assert!(in_flight.is_idle());
    }
}
