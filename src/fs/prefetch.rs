//! The first bytes of a file, read in the same round trip as its open (CREATE + READ compounded, see
//! `smb3::Tree::open_and_read`) and kept for the handle's first read: reading a small file costs the open
//! alone. The data is what a READ sent with the open returned, so serving it is the same as having sent
//! the kernel's first READ at that moment; it is used once, only when it answers the whole request (a
//! FUSE read answered short means end of file), only within the attribute TTL of the open (never with
//! `actimeo=0`), and dropped when another handle of the node may write the file or a lock is taken on it
//! (a reader that locks before it reads must see what the previous lock holder wrote).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::lease::Invalidator;

/// How much an open for reading asks for with the CREATE: small files whole, and for a large file no more
/// than the kernel's first readahead would ask for anyway.
pub const PREFETCH_LEN: u32 = 64 * 1024;

/// What an open read: its bytes from offset 0, and whether they reach the end of the file.
struct Head {
    ino: u64,
    data: Bytes,
    whole: bool,
    read_at: Instant,
}

/// Read-with-open data by handle, until its first read.
pub struct Prefetched {
    max_age: Duration,
    by_fh: Mutex<HashMap<u64, Head>>,
}

/// The answer to a read of `size` bytes at `offset` from a file's first bytes `data` (`whole`: all of the
/// file), or `None` when they do not settle it.
fn answer(data: &Bytes, whole: bool, offset: u64, size: u32) -> Option<Bytes> {
    let len = data.len() as u64;
    let end = offset.checked_add(u64::from(size))?;
    if end <= len {
        return Some(data.slice(offset as usize..end as usize));
    }
    whole.then(|| data.slice(offset.min(len) as usize..))
}

impl Prefetched {
    /// Data is served up to `max_age` after it was read (the attribute TTL; zero: never asked for).
    pub fn new(max_age: Duration) -> Prefetched {
        Prefetched { max_age, by_fh: Mutex::default() }
    }

    /// Whether opens should read with the CREATE at all.
    pub fn enabled(&self) -> bool {
        !self.max_age.is_zero()
    }

    /// Keeps `data`, read at `read_at` with the open of `fh` (of `ino`) when asking for `asked` bytes.
    pub fn put(&self, fh: u64, ino: u64, data: Bytes, asked: u32, read_at: Instant) {
        let whole = data.len() < asked as usize;
        self.by_fh.lock().unwrap().insert(fh, Head { ino, data, whole, read_at });
    }

    /// The answer at `now` to the first read of `fh`, if its open's data settles it. Either way the data
    /// is gone.
    pub fn take(&self, fh: u64, offset: u64, size: u32, now: Instant) -> Option<Bytes> {
        let head = self.by_fh.lock().unwrap().remove(&fh)?;
        if now.saturating_duration_since(head.read_at) >= self.max_age {
            return None;
        }
        answer(&head.data, head.whole, offset, size)
    }

    /// Another handle may now change `ino`: what was read with earlier opens of it is no longer served.
    pub fn forget_ino(&self, ino: u64) {
        self.by_fh.lock().unwrap().retain(|_, h| h.ino != ino);
    }

    /// The handle was released.
    pub fn forget(&self, fh: u64) {
        self.by_fh.lock().unwrap().remove(&fh);
    }
}

/// What a lease break does to an inode here: another client changed the file, so what was read with an open
/// is dropped before the kernel's caches are (`then`: the FUSE session's invalidator, once there is one).
pub struct ForgetOnBreak {
    pub prefetched: Arc<Prefetched>,
    pub then: Option<Arc<dyn Invalidator>>,
}

impl Invalidator for ForgetOnBreak {
    fn invalidate(&self, ino: u64) {
        self.prefetched.forget_ino(ino);
        if let Some(kernel) = &self.then {
            kernel.invalidate(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_answered_only_when_the_data_settles_it() {
        let four = Bytes::from(vec![7u8; 4096]);
        // A 4 KiB file read whole (asked for more): any read is settled, past the end too (empty).
        assert_eq!(answer(&four, true, 0, 4096).unwrap().len(), 4096);
        assert_eq!(answer(&four, true, 0, 131_072).unwrap().len(), 4096);
        assert_eq!(answer(&four, true, 4000, 4096).unwrap().len(), 96);
        assert!(answer(&four, true, 9000, 10).unwrap().is_empty());
        // The first 4 KiB of a bigger file: only reads inside them.
        assert_eq!(answer(&four, false, 1024, 1024).unwrap(), four.slice(1024..2048));
        assert_eq!(answer(&four, false, 0, 4097), None);
        assert_eq!(answer(&four, false, 5000, 1), None);
        assert_eq!(answer(&four, false, u64::MAX, 2), None);
        assert!(answer(&Bytes::new(), true, 0, 4096).unwrap().is_empty(), "an empty file");
    }

    #[test]
    fn data_is_used_once_and_dropped_when_the_file_may_change() {
        let t0 = Instant::now();
        let p = Prefetched::new(Duration::from_secs(1));
        assert!(p.enabled());
        p.put(1, 10, Bytes::from_static(b"hello"), 65536, t0);
        assert_eq!(p.take(1, 0, 4096, t0).unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(p.take(1, 0, 4096, t0), None, "used once");
        p.put(2, 10, Bytes::from_static(b"hello"), 65536, t0);
        p.put(3, 11, Bytes::from_static(b"other"), 65536, t0);
        p.forget_ino(10);
        assert_eq!(p.take(2, 0, 4096, t0), None);
        p.forget(3);
        assert_eq!(p.take(3, 0, 4096, t0), None);
        // A first read it cannot settle still drops the data.
        p.put(4, 12, Bytes::from(vec![0u8; 65536]), 65536, t0);
        assert_eq!(p.take(4, 0, 131_072, t0), None);
        assert_eq!(p.take(4, 0, 10, t0), None);
        // Data older than the TTL is not served.
        p.put(5, 13, Bytes::from_static(b"old"), 65536, t0);
        assert_eq!(p.take(5, 0, 10, t0 + Duration::from_secs(1)), None);
        assert!(!Prefetched::new(Duration::ZERO).enabled(), "actimeo=0 reads nothing ahead");
    }

    #[test]
    fn a_lease_break_drops_the_data_then_the_kernels_caches() {
        struct Seen(Mutex<Vec<u64>>);
        impl Invalidator for Seen {
            fn invalidate(&self, ino: u64) {
                self.0.lock().unwrap().push(ino);
            }
        }
        let t0 = Instant::now();
        let prefetched = Arc::new(Prefetched::new(Duration::from_secs(60)));
        prefetched.put(1, 10, Bytes::from_static(b"v1"), 65536, t0);
        let kernel = Arc::new(Seen(Mutex::default()));
        let on_break = ForgetOnBreak { prefetched: prefetched.clone(), then: Some(kernel.clone()) };
        on_break.invalidate(10);
        assert_eq!(prefetched.take(1, 0, 10, t0), None);
        assert_eq!(*kernel.0.lock().unwrap(), [10]);
    }
}
