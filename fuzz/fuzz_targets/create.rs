//! CREATE response with its create contexts: maximal access, on-disk id, durable v2, lease v2 (MS-SMB2 2.2.14).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::wire::create::CreateResponse;
use smb3::wire::durable::LeaseBreakNotification;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CreateResponse::decode(data) {
        let _ = r.maximal_access();
        let _ = r.on_disk_id();
        let _ = r.durable_v2();
        let _ = r.lease_v2();
    }
    let _ = LeaseBreakNotification::decode(data);
});
