//! QUERY_INFO / SET_INFO responses and every information structure read from them (MS-SMB2 2.2.38, MS-FSCC 2.4, 2.5).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::info::*;

fuzz_target!(|data: &[u8]| {
    let _ = QueryInfoResponse::decode(data);
    let _ = SetInfoResponse::decode(data);
    let _ = FileBasicInformation::decode(data);
    let _ = FileStandardInformation::decode(data);
    let _ = FileInternalInformation::decode(data);
    let _ = FileNetworkOpenInformation::decode(data);
    let _ = FileIdInformation::decode(data);
    let _ = FileEndOfFileInformation::decode(data);
    let _ = FileAllInformation::decode(data);
    let _ = FileFsFullSizeInformation::decode(data);
    let _ = FileFsSizeInformation::decode(data);
    let _ = FileFsVolumeInformation::decode(data);
    let _ = FileFsAttributeInformation::decode(data);
});
