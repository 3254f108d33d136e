//! The `process_*` families that Prometheus client libraries export for the
//! process they run in, so that dashboards and alerts written for other
//! Kubernetes components (memory, CPU, file descriptors near their limit,
//! restarts by start time) work for the driver unchanged. They are read from
//! `/proc` at scrape time; [`parse`] is a pure function over the files' text
//! so the parsing is tested on crafted input.

use std::num::ParseIntError;

use super::exposition::{Exposition, Kind};

/// What one scrape reports about this process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub max_fds: Option<u64>,
}

/// The `/proc` text [`parse`] reads, and the two numbers that are not in it.
#[derive(Clone, Copy, Debug)]
pub struct ProcText<'a> {
    /// `/proc/self/stat`
    pub stat: &'a str,
    /// `/proc/self/status`
    pub status: &'a str,
    /// `/proc/self/limits`
    pub limits: &'a str,
    /// `/proc/stat` (for `btime`: `stat` counts the start time from boot)
    pub system_stat: &'a str,
    /// Entries in `/proc/self/fd`.
    pub open_fds: u64,
    /// `sysconf(_SC_CLK_TCK)`: the unit of `stat`'s times.
    pub clock_ticks_per_second: u64,
}

/// Why the process families could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sysconf(_SC_CLK_TCK): {0}")]
    ClockTicks(#[source] nix::Error),
    #[error("sysconf(_SC_CLK_TCK) gave no positive value")]
    NoClockTicks,
    #[error("{file}: no {field}")]
    Missing { file: &'static str, field: &'static str },
    #[error("{file}: {field} {value:?} is not a whole number: {source}")]
    Integer {
        file: &'static str,
        field: &'static str,
        value: String,
        #[source]
        source: ParseIntError,
    },
}

/// Reads this process's numbers from `/proc/self` now.
pub fn read() -> Result<ProcessStats, ProcessError> {
    let file = |path: &'static str| std::fs::read_to_string(path).map_err(|source| ProcessError::Read { path, source });
    let (stat, status, limits, system_stat) =
        (file("/proc/self/stat")?, file("/proc/self/status")?, file("/proc/self/limits")?, file("/proc/stat")?);
    let fd_dir = |source| ProcessError::Read { path: "/proc/self/fd", source };
    // Counts the descriptor read_dir itself holds, as the Go client does.
    let mut open_fds = 0u64;
    for entry in std::fs::read_dir("/proc/self/fd").map_err(fd_dir)? {
        entry.map_err(fd_dir)?;
        open_fds += 1;
    }
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).map_err(ProcessError::ClockTicks)?;
    let clock_ticks_per_second = ticks.and_then(|t| u64::try_from(t).ok()).filter(|&t| t > 0);
    let clock_ticks_per_second = clock_ticks_per_second.ok_or(ProcessError::NoClockTicks)?;
    parse(ProcText {
        stat: &stat,
        status: &status,
        limits: &limits,
        system_stat: &system_stat,
        open_fds,
        clock_ticks_per_second,
    })
}

/// The numbers in `/proc` text; see [`ProcText`].
pub fn parse(text: ProcText<'_>) -> Result<ProcessStats, ProcessError> {
    const STAT: &str = "/proc/self/stat";
    // The command name (field 2) is in parentheses and may itself hold spaces
    // and parentheses; the fields after the last `)` start at field 3.
    let after_comm = text
        .stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(ProcessError::Missing { file: STAT, field: "command name in parentheses" })?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Field n of proc(5) is at index n - 3.
    let stat_field = |n: usize, field: &'static str| -> Result<u64, ProcessError> {
        let value = fields.get(n - 3).ok_or(ProcessError::Missing { file: STAT, field })?;
        integer(STAT, field, value)
    };
    let ticks = text.clock_ticks_per_second as f64;
    let cpu_ticks = stat_field(14, "utime")? + stat_field(15, "stime")?;
    let start_ticks = stat_field(22, "starttime")?;

    let boot_time = keyed(text.system_stat, "/proc/stat", "btime")?;

    const STATUS: &str = "/proc/self/status";
    let kib = |field: &'static str| -> Result<u64, ProcessError> {
        let value = keyed_text(text.status, STATUS, field)?;
        let number = value.strip_suffix("kB").map(str::trim_end).unwrap_or(value);
        Ok(integer(STATUS, field, number)? * 1024)
    };

    const LIMITS: &str = "/proc/self/limits";
    let soft_nofile = text
        .limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or(ProcessError::Missing { file: LIMITS, field: "Max open files" })?;
    let max_fds = match soft_nofile {
        "unlimited" => None,
        value => Some(integer(LIMITS, "Max open files", value)?),
    };

    Ok(ProcessStats {
        cpu_seconds: cpu_ticks as f64 / ticks,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks,
        resident_memory_bytes: kib("VmRSS")?,
        virtual_memory_bytes: kib("VmSize")?,
        threads: keyed(text.status, STATUS, "Threads")?,
        open_fds: text.open_fds,
        max_fds,
    })
}

/// The value of a `key value` or `Key:\tvalue` line.
fn keyed_text<'a>(text: &'a str, file: &'static str, key: &'static str) -> Result<&'a str, ProcessError> {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?;
            let rest = rest.strip_prefix(':').unwrap_or(rest);
            // `key` must be the whole first word: VmRSS, not VmRSSx.
            rest.starts_with(char::is_whitespace).then(|| rest.trim())
        })
        .ok_or(ProcessError::Missing { file, field: key })
}

fn keyed(text: &str, file: &'static str, key: &'static str) -> Result<u64, ProcessError> {
    integer(file, key, keyed_text(text, file, key)?)
}

fn integer(file: &'static str, field: &'static str, value: &str) -> Result<u64, ProcessError> {
    value.parse().map_err(|source| ProcessError::Integer { file, field, value: value.to_string(), source })
}

impl ProcessStats {
    /// The families under the names every Prometheus client uses
    /// (`process_threads` is ours: the Go client has no such gauge).
    pub fn write(&self, e: &mut Exposition) {
        e.family("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds.");
        e.sample("process_cpu_seconds_total", &[], self.cpu_seconds);
        e.family("process_start_time_seconds", Kind::Gauge, "Start time of the process since unix epoch in seconds.");
        e.sample("process_start_time_seconds", &[], self.start_time_seconds);
        e.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes.");
        e.sample("process_resident_memory_bytes", &[], self.resident_memory_bytes as f64);
        e.family("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes.");
        e.sample("process_virtual_memory_bytes", &[], self.virtual_memory_bytes as f64);
        e.family("process_open_fds", Kind::Gauge, "Number of open file descriptors.");
        e.sample("process_open_fds", &[], self.open_fds as f64);
        e.family("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors.");
        e.sample("process_max_fds", &[], self.max_fds.map_or(f64::INFINITY, |max| max as f64));
        e.family("process_threads", Kind::Gauge, "Number of OS threads in the process.");
        e.sample("process_threads", &[], self.threads as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command name with a space and a `)`, as a process may rename itself.
    const STAT: &str = "4242 (smb3 (csi)) S 1 4242 4242 0 -1 4194560 2935 0 0 0 \
        250 130 0 0 20 0 9 0 12345 1059061760 4660 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
    const STATUS: &str = "Name:\tsmb3-csi\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 1100000 kB\n\
        VmSize:\t 1034240 kB\nVmRSSMax:\t 1 kB\nVmRSS:\t   18640 kB\nThreads:\t9\nSigQ:\t0/63439\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1048576              1048576              files     \n\
        Max locked memory         8388608              8388608              bytes     \n";
    const SYSTEM_STAT: &str = "cpu  1 2 3 4\ncpu0 1 2 3 4\nintr 1 2\nctxt 99\nbtime 1764547200\nprocesses 77\n";

    fn text() -> ProcText<'static> {
        ProcText {
            stat: STAT,
            status: STATUS,
            limits: LIMITS,
            system_stat: SYSTEM_STAT,
            open_fds: 23,
            clock_ticks_per_second: 100,
        }
    }

    #[test]
    fn parses_crafted_proc_text() {
        let stats = parse(text()).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.8,
                start_time_seconds: 1764547200.0 + 123.45,
                resident_memory_bytes: 18640 * 1024,
                virtual_memory_bytes: 1034240 * 1024,
                threads: 9,
                open_fds: 23,
                max_fds: Some(1048576),
            }
        );
    }

    #[test]
    fn unlimited_descriptors_render_as_infinity() {
        let limits = LIMITS.replace("1048576              1048576", "unlimited            unlimited");
        let stats = parse(ProcText { limits: &limits, ..text() }).unwrap();
        assert_eq!(stats.max_fds, None);
        let mut e = Exposition::new();
        stats.write(&mut e);
        let rendered = e.finish();
        assert!(rendered.lines().any(|l| l == "process_max_fds +Inf"), "{rendered}");
        assert!(rendered.lines().any(|l| l == "process_open_fds 23"), "{rendered}");
        assert!(rendered.lines().any(|l| l == "process_cpu_seconds_total 3.8"), "{rendered}");
        assert!(rendered.contains("# TYPE process_threads gauge\n"), "{rendered}");
    }

    #[test]
    fn malformed_text_names_the_file_and_field() {
        let error = |t: ProcText<'_>| parse(t).unwrap_err().to_string();
        assert_eq!(
            error(ProcText { stat: "4242 smb3-csi S 1", ..text() }),
            "/proc/self/stat: no command name in parentheses"
        );
        assert_eq!(error(ProcText { stat: "4242 (x) S 1 2 3", ..text() }), "/proc/self/stat: no utime");
        let status = STATUS.replace("VmRSS:\t   18640 kB", "VmRSS:\t   lots kB");
        assert!(error(ProcText { status: &status, ..text() }).starts_with("/proc/self/status: VmRSS \"lots\""));
        let status = STATUS.replace("Threads:", "Thread:");
        assert_eq!(error(ProcText { status: &status, ..text() }), "/proc/self/status: no Threads");
        assert_eq!(error(ProcText { system_stat: "cpu 1 2\n", ..text() }), "/proc/stat: no btime");
        assert_eq!(error(ProcText { limits: "Limit\n", ..text() }), "/proc/self/limits: no Max open files");
    }

    #[test]
    fn reads_this_process() {
        let stats = read().unwrap();
        assert!(stats.resident_memory_bytes > 0 && stats.resident_memory_bytes <= stats.virtual_memory_bytes);
        assert!(stats.threads >= 1);
        // stdout, stderr and the directory being listed, at least.
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(stats.max_fds.is_none_or(|max| max >= stats.open_fds), "{stats:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        // The test binary started in the last day, not in the future (boot time is whole seconds).
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 86400.0, "{stats:?}");
        assert!(stats.cpu_seconds >= 0.0 && stats.cpu_seconds < now - stats.start_time_seconds + 3600.0, "{stats:?}");
    }
}
