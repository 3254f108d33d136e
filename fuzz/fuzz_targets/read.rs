//! READ response (MS-SMB2 2.2.20).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::io::ReadResponse;

fuzz_target!(|data: &[u8]| {
    let _ = ReadResponse::decode(data);
});
