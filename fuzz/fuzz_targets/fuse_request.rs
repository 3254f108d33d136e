//! FUSE requests as read from /dev/fuse (header and body of every opcode the driver serves):
//! the kernel relays what any process on the node asks of a mount. The driver's
//! src/fs/fuse/wire.rs and the types it uses are compiled in here from their source files
//! (see Cargo.toml).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/fs/config.rs"]
mod fs_config;
#[path = "../../src/fs/attr.rs"]
mod attr;
#[path = "../../src/fs/fuse/wire.rs"]
mod wire;

/// attr.rs's `super::FsConfig`.
use fs_config::FsConfig;

/// What wire.rs names `crate::fs`.
mod fs {
    pub use super::attr::{Attr, FileKind};
    pub use super::fs_config::{CacheMode, FsConfig};
}

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_header, request)) = wire::decode(data) {
        let _ = request.is_one_way();
    }
    if let Some((&op, body)) = data.split_first() {
        let _ = wire::decode_body(u32::from(op), body);
    }
});
