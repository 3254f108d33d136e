//! QUERY_DIRECTORY response and its entry buffer in every information class (MS-SMB2 2.2.34, MS-FSCC 2.4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::directory::{parse_directory_entries, QueryDirectoryResponse};

fuzz_target!(|data: &[u8]| {
    let Some((&class, rest)) = data.split_first() else { return };
    let _ = QueryDirectoryResponse::decode(rest);
    let _ = parse_directory_entries(class, rest);
});
