//! LOCK response (MS-SMB2 2.2.27).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::io::LockResponse;

fuzz_target!(|data: &[u8]| {
    let _ = LockResponse::decode(data);
});
