//! The CSI volume handle (`v1|server|port|share|base|subdir|onDelete[|encryption]` and the
//! incumbent csi-driver-smb's `server/share#subdir#uuid#onDelete`) and the shortening of a
//! long one: the kubelet and the sidecars hand the driver any string as a volume id.
//! The driver's src/volume is compiled in here from its source file (see Cargo.toml).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/volume/mod.rs"]
mod volume;

use libfuzzer_sys::fuzz_target;
use volume::{compact, VolumeId, MAX_VOLUME_ID_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(id) = VolumeId::parse(text) else { return };
    let _ = id.path_in_share();
    let _ = id.to_string();
    // What parses re-encodes to one spelling that parses back to the same volume.
    if let Ok(encoded) = id.encode() {
        assert!(encoded.len() <= MAX_VOLUME_ID_LEN, "encoded id of {} bytes", encoded.len());
        assert_eq!(VolumeId::parse(&encoded).as_ref(), Ok(&id), "{encoded:?}");
    }
    if let Ok((short, _dir)) = compact::fit(id) {
        let encoded = short.encode().expect("a fitted id encodes");
        assert!(encoded.len() <= MAX_VOLUME_ID_LEN);
    }
});
