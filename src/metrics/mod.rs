//! Prometheus metrics for the driver: what kubelet-side operators need to see
//! without reading logs. One process-wide [`Metrics`] collects them; the CSI
//! RPC wrapper, the SMB connection and the session pool record into it, the
//! node service reports its volumes through the free functions below, and
//! [`server`] serves the text exposition on `/metrics` (with `/healthz`).
//!
//! Families (all prefixed `smb3_csi_`):
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `rpc_requests_total` | counter | `method`, `code` |
//! | `rpc_duration_seconds` | histogram | `method`, `code` |
//! | `smb_bytes_sent_total`, `smb_bytes_received_total` | counter | |
//! | `smb_request_duration_seconds` | histogram | `command` |
//! | `smb_sessions_open` | gauge | |
//! | `smb_sessions_established_total` | counter | |
//! | `smb_reconnects_total` | counter | |
//! | `smb_disconnects_total` | counter | |
//! | `smb_outage_seconds` | histogram | |
//! | `mounted_volumes` | gauge | |
//! | `volumes_disconnected` | gauge | |
//! | `volume_condition_abnormal` | gauge | `volume_id` |
//! | `build_info` | gauge | `version` |
//!
//! Next to them, without the prefix, the [`process`] families Prometheus
//! clients export: `process_cpu_seconds_total`, `process_start_time_seconds`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, and our own `process_threads`.
//!
//! Labels never carry request contents beyond the volume id: no secrets, no
//! user names, no paths inside a volume.
//!
//! ```
//! use std::time::Duration;
//! let metrics = smb3_csi::metrics::Metrics::new();
//! metrics.record_rpc("/csi.v1.Controller/CreateVolume", tonic::Code::Ok, Duration::from_millis(40));
//! metrics.set_volume_condition("v1|srv|445|share|base|pvc-1|delete", true);
//! let text = metrics.render();
//! assert!(text.contains(r#"smb3_csi_rpc_requests_total{method="/csi.v1.Controller/CreateVolume",code="OK"} 1"#));
//! assert!(text.contains(r#"smb3_csi_volume_condition_abnormal{volume_id="v1|srv|445|share|base|pvc-1|delete"} 1"#));
//! ```

pub mod address;
pub mod exposition;
pub mod histogram;
pub mod listener;
pub mod process;
pub mod server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tonic::Code;

use exposition::{Exposition, Kind};
use histogram::{Histogram, RPC_BUCKETS, SMB_BUCKETS};
use smb3::wire::Command;

pub use address::{MetricsAddress, MetricsAddressError};
pub use exposition::CONTENT_TYPE;
pub use server::MetricsServer;

/// Every metric of one process. Tests build their own; the driver uses
/// [`Metrics::global`].
pub struct Metrics {
    /// `(method, code)` -> latency histogram; its count is the request count.
    rpcs: Mutex<BTreeMap<(&'static str, &'static str), Arc<Histogram>>>,
    smb_bytes_sent: AtomicU64,
    smb_bytes_received: AtomicU64,
    /// Indexed by command code ([`Command::KNOWN`]); the last slot is every other code.
    smb_round_trips: Vec<Histogram>,
    smb_sessions_open: AtomicI64,
    smb_sessions_established: AtomicU64,
    smb_reconnects: AtomicU64,
    smb_disconnects: AtomicU64,
    /// How long lost connections were away before they were re-established.
    smb_outages: Histogram,
    mounted_volumes: AtomicU64,
    volumes_disconnected: AtomicU64,
    /// volume id -> abnormal.
    volume_conditions: Mutex<BTreeMap<String, bool>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            rpcs: Mutex::new(BTreeMap::new()),
            smb_bytes_sent: AtomicU64::new(0),
            smb_bytes_received: AtomicU64::new(0),
            smb_round_trips: (0..=Command::KNOWN.len()).map(|_| Histogram::new(SMB_BUCKETS)).collect(),
            smb_sessions_open: AtomicI64::new(0),
            smb_sessions_established: AtomicU64::new(0),
            smb_reconnects: AtomicU64::new(0),
            smb_disconnects: AtomicU64::new(0),
            smb_outages: Histogram::new(RPC_BUCKETS),
            mounted_volumes: AtomicU64::new(0),
            volumes_disconnected: AtomicU64::new(0),
            volume_conditions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The process-wide metrics that `/metrics` serves.
    pub fn global() -> &'static Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Metrics::new)
    }

    /// One finished CSI RPC. `method` is the gRPC path
    /// (`/csi.v1.Node/NodeStageVolume`): a fixed set, so bounded cardinality.
    pub fn record_rpc(&self, method: &'static str, code: Code, elapsed: Duration) {
        let series = {
            let mut rpcs = lock(&self.rpcs);
            rpcs.entry((method, code_name(code))).or_insert_with(|| Arc::new(Histogram::new(RPC_BUCKETS))).clone()
        };
        series.observe(elapsed);
    }

    /// How many volumes this node currently has mounted (staged or published).
    pub fn set_mounted_volumes(&self, count: usize) {
        self.mounted_volumes.store(count as u64, Ordering::Relaxed);
    }

    /// How many mounted volumes have their SMB connection down right now (reconnecting or given up).
    pub fn set_volumes_disconnected(&self, count: usize) {
        self.volumes_disconnected.store(count as u64, Ordering::Relaxed);
    }

    /// The last health verdict for a mounted volume (what NodeGetVolumeStats
    /// reports as `VolumeCondition.abnormal`).
    pub fn set_volume_condition(&self, volume_id: &str, abnormal: bool) {
        let mut conditions = lock(&self.volume_conditions);
        match conditions.get_mut(volume_id) {
            Some(current) => *current = abnormal,
            None => {
                conditions.insert(volume_id.to_string(), abnormal);
            }
        }
    }

    /// Stops reporting a volume (after it is unmounted), so series do not
    /// accumulate for volumes long gone.
    pub fn forget_volume(&self, volume_id: &str) {
        lock(&self.volume_conditions).remove(volume_id);
    }

    /// The text exposition (format 0.0.4) of every family.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();

        let rpcs: Vec<_> = lock(&self.rpcs).iter().map(|(key, h)| (*key, h.snapshot())).collect();
        e.family("smb3_csi_rpc_requests_total", Kind::Counter, "CSI RPCs handled, by gRPC method and status code.");
        for ((method, code), snapshot) in &rpcs {
            e.sample("smb3_csi_rpc_requests_total", &[("method", method), ("code", code)], snapshot.count as f64);
        }
        e.family(
            "smb3_csi_rpc_duration_seconds",
            Kind::Histogram,
            "Time to answer a CSI RPC, by gRPC method and status code.",
        );
        for ((method, code), snapshot) in &rpcs {
            e.histogram("smb3_csi_rpc_duration_seconds", &[("method", method), ("code", code)], snapshot);
        }

        let counter = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
        e.family("smb3_csi_smb_bytes_sent_total", Kind::Counter, "Bytes written to SMB server connections.");
        e.sample("smb3_csi_smb_bytes_sent_total", &[], counter(&self.smb_bytes_sent));
        e.family("smb3_csi_smb_bytes_received_total", Kind::Counter, "Bytes read from SMB server connections.");
        e.sample("smb3_csi_smb_bytes_received_total", &[], counter(&self.smb_bytes_received));
        e.family(
            "smb3_csi_smb_request_duration_seconds",
            Kind::Histogram,
            "SMB request round trip from send to response, by command (compounds under their first command).",
        );
        let names = Command::KNOWN.iter().map(|c| c.name()).chain([Command::Unknown(0xFFFF).name()]);
        for (name, histogram) in names.zip(&self.smb_round_trips) {
            let snapshot = histogram.snapshot();
            if snapshot.count > 0 {
                e.histogram("smb3_csi_smb_request_duration_seconds", &[("command", name)], &snapshot);
            }
        }
        e.family("smb3_csi_smb_sessions_open", Kind::Gauge, "Authenticated SMB sessions on live connections.");
        e.sample("smb3_csi_smb_sessions_open", &[], self.smb_sessions_open.load(Ordering::Relaxed).max(0) as f64);
        e.family("smb3_csi_smb_sessions_established_total", Kind::Counter, "SMB sessions authenticated.");
        e.sample("smb3_csi_smb_sessions_established_total", &[], counter(&self.smb_sessions_established));
        e.family(
            "smb3_csi_smb_reconnects_total",
            Kind::Counter,
            "SMB connections re-established after they were lost (trees and open files re-bound), and pooled \
             sessions that had given up replaced.",
        );
        e.sample("smb3_csi_smb_reconnects_total", &[], counter(&self.smb_reconnects));
        e.family("smb3_csi_smb_disconnects_total", Kind::Counter, "SMB connections found lost (reconnecting started).");
        e.sample("smb3_csi_smb_disconnects_total", &[], counter(&self.smb_disconnects));
        e.family(
            "smb3_csi_smb_outage_seconds",
            Kind::Histogram,
            "How long a lost SMB connection was away before it was re-established.",
        );
        e.histogram("smb3_csi_smb_outage_seconds", &[], &self.smb_outages.snapshot());

        e.family("smb3_csi_mounted_volumes", Kind::Gauge, "Volumes this node has mounted.");
        e.sample("smb3_csi_mounted_volumes", &[], counter(&self.mounted_volumes));
        e.family(
            "smb3_csi_volumes_disconnected",
            Kind::Gauge,
            "Mounted volumes whose SMB connection is down (being re-established, or given up for good).",
        );
        e.sample("smb3_csi_volumes_disconnected", &[], counter(&self.volumes_disconnected));
        e.family(
            "smb3_csi_volume_condition_abnormal",
            Kind::Gauge,
            "1 when the last health check of a mounted volume found it abnormal, else 0.",
        );
        for (volume_id, abnormal) in lock(&self.volume_conditions).iter() {
            e.sample("smb3_csi_volume_condition_abnormal", &[("volume_id", volume_id)], u8::from(*abnormal));
        }

        e.family("smb3_csi_build_info", Kind::Gauge, "Always 1; the version is a label.");
        e.sample("smb3_csi_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1u8);

        // A scrape without them still carries the driver's own families.
        match process::read() {
            Ok(stats) => stats.write(&mut e),
            Err(error) => tracing::warn!(%error, "metrics: the process_* families are left out of this scrape"),
        }
        e.finish()
    }
}

/// A poisoned lock only means another thread panicked while counting; the
/// maps stay usable, and metrics must never take the driver down.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// gRPC's canonical code names, as Go's `codes.Code.String()` prints them
/// (what the CSI sidecars' own metrics use).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Records a finished CSI RPC in the process-wide metrics.
pub fn record_rpc(method: &'static str, code: Code, elapsed: Duration) {
    Metrics::global().record_rpc(method, code, elapsed);
}

/// For the node service: how many volumes are mounted now.
pub fn set_mounted_volumes(count: usize) {
    Metrics::global().set_mounted_volumes(count);
}

/// For the node service: how many mounted volumes have their SMB connection down.
pub fn set_volumes_disconnected(count: usize) {
    Metrics::global().set_volumes_disconnected(count);
}

/// For the node service: the latest condition of a mounted volume.
pub fn set_volume_condition(volume_id: &str, abnormal: bool) {
    Metrics::global().set_volume_condition(volume_id, abnormal);
}

/// For the node service: the volume is no longer mounted here.
pub fn forget_volume(volume_id: &str) {
    Metrics::global().forget_volume(volume_id);
}

/// The SMB client's events become this process's SMB series.
impl smb3::Observer for Metrics {
    fn bytes_sent(&self, bytes: usize) {
        self.smb_bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn bytes_received(&self, bytes: usize) {
        self.smb_bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn round_trip(&self, command: Command, elapsed: Duration) {
        let slot = match command {
            Command::Unknown(_) => Command::KNOWN.len(),
            known => usize::from(known.code()).min(Command::KNOWN.len()),
        };
        self.smb_round_trips[slot].observe(elapsed);
    }

    fn session_opened(&self) {
        self.smb_sessions_established.fetch_add(1, Ordering::Relaxed);
        self.smb_sessions_open.fetch_add(1, Ordering::Relaxed);
    }

    fn sessions_closed(&self, count: u64) {
        self.smb_sessions_open.fetch_sub(count as i64, Ordering::Relaxed);
    }

    fn reconnect(&self) {
        self.smb_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self, _reason: &str) {
        self.smb_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn reconnected(&self, outage: Duration) {
        self.smb_outages.observe(outage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::Observer;

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn rpc_series_by_method_and_code() {
        let m = Metrics::new();
        m.record_rpc("/csi.v1.Controller/CreateVolume", Code::Ok, Duration::from_millis(30));
        m.record_rpc("/csi.v1.Controller/CreateVolume", Code::Ok, Duration::from_millis(300));
        m.record_rpc("/csi.v1.Controller/CreateVolume", Code::Aborted, Duration::from_micros(20));
        m.record_rpc("/csi.v1.Identity/Probe", Code::Ok, Duration::from_micros(5));
        let text = m.render();
        let lines = sample_lines(&text);
        let create_ok = r#"{method="/csi.v1.Controller/CreateVolume",code="OK"}"#;
        assert!(lines.contains(&format!("smb3_csi_rpc_requests_total{create_ok} 2").as_str()), "{text}");
        assert!(lines.contains(&format!("smb3_csi_rpc_duration_seconds_count{create_ok} 2").as_str()), "{text}");
        assert!(
            lines
                .contains(&r#"smb3_csi_rpc_requests_total{method="/csi.v1.Controller/CreateVolume",code="Aborted"} 1"#),
            "{text}"
        );
        assert!(lines.contains(
            &r#"smb3_csi_rpc_duration_seconds_bucket{method="/csi.v1.Controller/CreateVolume",code="OK",le="0.05"} 1"#
        ));
        assert!(lines.contains(
            &r#"smb3_csi_rpc_duration_seconds_bucket{method="/csi.v1.Controller/CreateVolume",code="OK",le="0.5"} 2"#
        ));
        assert!(lines.contains(&r#"smb3_csi_rpc_requests_total{method="/csi.v1.Identity/Probe",code="OK"} 1"#));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let m = Metrics::new();
        m.round_trip(Command::Read, Duration::from_millis(2));
        m.round_trip(Command::Unknown(0x99), Duration::from_millis(2));
        m.record_rpc("/csi.v1.Node/NodeGetInfo", Code::Ok, Duration::from_millis(1));
        m.set_volume_condition("vol", false);
        let text = m.render();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(typed.insert(name.to_string()), "{name} typed twice");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
        for line in sample_lines(&text) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{line}: no TYPE for {family}");
            assert!(name.starts_with("smb3_csi_") || name.starts_with("process_"), "{line}");
        }
        assert!(text.contains(r#"smb3_csi_smb_request_duration_seconds_count{command="READ"} 1"#), "{text}");
        assert!(text.contains(r#"smb3_csi_smb_request_duration_seconds_count{command="OTHER"} 1"#), "{text}");
        assert!(!text.contains(r#"command="WRITE""#), "unused commands are not exported: {text}");
        for family in
            ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_threads"]
        {
            assert!(typed.contains(family), "{family} missing: {text}");
        }
    }

    #[test]
    fn smb_counters_sessions_and_reconnects() {
        let m = Metrics::new();
        m.bytes_sent(100);
        m.bytes_sent(28);
        m.bytes_received(4096);
        m.session_opened();
        m.session_opened();
        m.sessions_closed(1);
        m.disconnected("connection reset");
        m.reconnected(Duration::from_millis(700));
        m.reconnect();
        m.disconnected("no reply to ECHO");
        m.reconnected(Duration::from_secs(4));
        m.reconnect();
        let text = m.render();
        let lines = sample_lines(&text);
        for want in [
            "smb3_csi_smb_bytes_sent_total 128",
            "smb3_csi_smb_bytes_received_total 4096",
            "smb3_csi_smb_sessions_open 1",
            "smb3_csi_smb_sessions_established_total 2",
            "smb3_csi_smb_reconnects_total 2",
            "smb3_csi_smb_disconnects_total 2",
            "smb3_csi_smb_outage_seconds_count 2",
            "smb3_csi_smb_outage_seconds_sum 4.7",
        ] {
            assert!(lines.contains(&want), "{want} missing from {text}");
        }
        // A miscount never shows a negative number of sessions.
        m.sessions_closed(5);
        assert!(sample_lines(&m.render()).contains(&"smb3_csi_smb_sessions_open 0"));
    }

    #[test]
    fn volume_gauges_and_forgetting() {
        let m = Metrics::new();
        m.set_mounted_volumes(2);
        m.set_volumes_disconnected(1);
        m.set_volume_condition("a", false);
        m.set_volume_condition("b\"\n", true);
        m.set_volume_condition("a", true);
        let text = m.render();
        let lines = sample_lines(&text);
        assert!(lines.contains(&"smb3_csi_mounted_volumes 2"), "{text}");
        assert!(lines.contains(&"smb3_csi_volumes_disconnected 1"), "{text}");
        assert!(lines.contains(&r#"smb3_csi_volume_condition_abnormal{volume_id="a"} 1"#), "{text}");
        assert!(lines.contains(&r#"smb3_csi_volume_condition_abnormal{volume_id="b\"\n"} 1"#), "{text}");
        m.forget_volume("a");
        m.set_mounted_volumes(1);
        let text = m.render();
        assert!(!text.contains(r#"volume_id="a""#), "{text}");
        assert!(sample_lines(&text).contains(&"smb3_csi_mounted_volumes 1"));
    }

    #[test]
    fn code_names_match_grpc() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::from_i32(5)), "NotFound");
        assert_eq!(code_name(Code::from_i32(16)), "Unauthenticated");
    }
}
