//! IOCTL response and its FSCTL payloads: validate negotiate, resume key, copychunk (MS-SMB2 2.2.32).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::ioctl::{CopyChunkResponse, IoctlResponse, ResumeKey, ValidateNegotiateInfoResponse};

fuzz_target!(|data: &[u8]| {
    let _ = IoctlResponse::decode(data);
    let _ = ValidateNegotiateInfoResponse::decode(data);
    let _ = ResumeKey::decode(data);
    let _ = CopyChunkResponse::decode(data);
});
