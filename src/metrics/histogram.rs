//! A fixed-bucket, lock-free latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for CSI RPC latencies: probes take microseconds,
/// a DeleteVolume of a large tree can take minutes.
pub const RPC_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds (seconds) for SMB request round trips: a LAN round trip is
/// about 100 µs, a large read or a slow server several seconds.
pub const SMB_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Observations counted per bucket (not cumulative: the exposition sums them),
/// so `_count` always equals the `+Inf` bucket even while observations race a scrape.
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound, plus the last for observations above every bound.
    counts: Box<[AtomicU64]>,
    /// Nanoseconds: integer addition is exact and needs no CAS loop.
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy of a histogram for rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// `(upper bound, cumulative count)`, the bounds in increasing order.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds` must be finite and strictly increasing.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]) && bounds.iter().all(|b| b.is_finite()));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // `le` is inclusive: an observation equal to a bound belongs to it.
        let slot = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        Snapshot { buckets, count, sum_seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 0.1];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // exactly on a bound: counted in it
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3)); // above every bound: +Inf only
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 2), (0.1, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 3.0515).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn empty_and_default_buckets_are_sane() {
        for bounds in [RPC_BUCKETS, SMB_BUCKETS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
            let s = Histogram::new(bounds).snapshot();
            assert_eq!(s.count, 0);
            assert_eq!(s.buckets.len(), bounds.len());
            assert!(s.buckets.iter().all(|&(_, c)| c == 0));
        }
    }

    #[test]
    fn huge_durations_saturate_the_sum() {
        let h = Histogram::new(SMB_BUCKETS);
        h.observe(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.count, 1);
        assert_eq!(s.buckets.last().unwrap().1, 0);
        assert!(s.sum_seconds > 1e10);
    }
}
