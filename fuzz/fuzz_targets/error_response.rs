//! SMB2 ERROR response and the header in front of every message (MS-SMB2 2.2.2, 2.2.1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::simple::ErrorResponse;
use smb3::wire::Header;

fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(data);
    let _ = ErrorResponse::decode(data);
});
