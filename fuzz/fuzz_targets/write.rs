//! WRITE, CLOSE and FLUSH responses (MS-SMB2 2.2.22, 2.2.16, 2.2.18).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::io::{CloseResponse, FlushResponse, WriteResponse};

fuzz_target!(|data: &[u8]| {
    let _ = WriteResponse::decode(data);
    let _ = CloseResponse::decode(data);
    let _ = FlushResponse::decode(data);
});
