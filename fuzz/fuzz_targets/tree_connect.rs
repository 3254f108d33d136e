//! TREE_CONNECT and TREE_DISCONNECT responses (MS-SMB2 2.2.10, 2.2.12).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::tree::{TreeConnectResponse, TreeDisconnectResponse};

fuzz_target!(|data: &[u8]| {
    let _ = TreeConnectResponse::decode(data);
    let _ = TreeDisconnectResponse::decode(data);
});
