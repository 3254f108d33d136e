//! Share addresses (`//server[:port]/share[/base]`, `\\server\share`, `smb://`), paths inside a
//! share, and StorageClass parameters (one `key=value` per line): all come from users' objects.
//! The driver's src/volume is compiled in here from its source file (see Cargo.toml).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/volume/mod.rs"]
mod volume;

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use volume::{SharePath, ShareUrl, StorageClassParams};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(url) = ShareUrl::parse(text) {
        let shown = url.to_string();
        let _ = (url.share_root(), url.target(), url.host_port());
        // The canonical form parses back to the same share.
        assert_eq!(ShareUrl::parse(&shown).as_ref(), Ok(&url), "{shown:?}");
    }
    if let Ok(path) = SharePath::parse(text) {
        assert_eq!(SharePath::parse(&path.to_string()).as_ref(), Ok(&path));
    }
    let parameters: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(params) = StorageClassParams::parse(&parameters) {
        let _ = params.sub_dir_for("pvc-0f1e2d3c");
    }
});
