//! Subcommands of the `smb3-csi` binary.

pub mod deadlines;
#[cfg(feature = "demo")]
pub mod demo;
pub mod keeper;
pub mod mount;
pub mod registrar;
pub mod serve;
pub mod smb;

/// Logs go to stderr, as text or JSON.
pub fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
