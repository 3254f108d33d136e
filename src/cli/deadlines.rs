//! The SMB deadline flags shared by `smb3-csi smb` and `smb3-csi mount`, applied to
//! [`ClientOptions`] in one place (the plugin's `serve` spells them `--smb-...-secs`).

use std::time::Duration;

use smb3::ClientOptions;

/// `--timeout`, `--connect-timeout`, `--pending-timeout` (seconds).
#[derive(clap::Args, Clone, Debug)]
pub struct DeadlineArgs {
    /// Longest wait for a response (or the server's STATUS_PENDING) to any request, in seconds; a
    /// server silent for longer counts as lost.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Deadline for TCP connect, NEGOTIATE and SESSION_SETUP together, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
    /// Ceiling for a request the server keeps answering STATUS_PENDING, in seconds (blocking locks
    /// are bounded by their caller instead).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub pending_timeout: u64,
}

impl DeadlineArgs {
    /// `base` with these deadlines.
    pub fn apply(&self, base: ClientOptions) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(self.timeout),
            connect_timeout: Duration::from_secs(self.connect_timeout),
            pending_timeout: Duration::from_secs(self.pending_timeout),
            ..base
        }
    }
}
