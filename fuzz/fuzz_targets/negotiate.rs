//! NEGOTIATE response with its negotiate contexts (MS-SMB2 2.2.4, 2.2.3.1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::negotiate::NegotiateResponse;

fuzz_target!(|data: &[u8]| {
    let _ = NegotiateResponse::decode(data);
});
