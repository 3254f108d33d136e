//! A compound chain of responses: headers walked by NextCommand as the reader does (MS-SMB2 3.2.5.1.9), each body through ErrorResponse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::simple::ErrorResponse;
use smb3::wire::Header;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..64 {
        let Ok(h) = Header::decode(rest) else { return };
        let next = h.next_command as usize;
        let msg = if next == 0 { rest } else { match rest.get(..next) { Some(m) if next >= 64 => m, _ => return } };
        let _ = ErrorResponse::decode(msg);
        if next == 0 {
            return;
        }
        rest = &rest[next..];
    }
});
