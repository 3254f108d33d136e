//! Mount options as StorageClasses, PVs and `smb3-csi mount -o` give them (one flag per line,
//! each comma-separated), and everything derived from them. The driver's src/mount/options.rs
//! and the filesystem settings it fills in (src/fs/config.rs) are compiled in here from their
//! source files (see Cargo.toml).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/fs/config.rs"]
mod fs_config;
#[path = "../../src/mount/options.rs"]
mod options;

/// What options.rs names `crate::fs`.
mod fs {
    pub use super::fs_config::{CacheMode, FsConfig};
}

use libfuzzer_sys::fuzz_target;
use options::MountOptions;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let flags: Vec<String> = text.lines().map(str::to_string).collect();
    let Ok((mut opts, _ignored)) = MountOptions::parse(&flags) else { return };
    let base = smb3::ClientOptions::default();
    let _ = opts.client_options(&base);
    let _ = (opts.effective_echo_interval(&base), opts.soft_timeout(&base), opts.ccache_key(), opts.attr_ttl());
    let _ = fs::FsConfig::from(&opts);
    opts.apply_fs_group(u32::MAX);
    let _ = fs::FsConfig::from(&opts);
});
