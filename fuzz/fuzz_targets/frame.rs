//! Transport frame header, NetBIOS session reply and the SMB3 transform header (MS-SMB2 2.1, 2.2.41).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::framing;
use smb3::wire::transform::TransformHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = <[u8; 4]>::try_from(data.get(..4).unwrap_or_default()) {
        let _ = framing::decode_frame_header(head);
    }
    let _ = framing::decode_netbios_session_reply(data);
    let _ = TransformHeader::decode(data);
});
