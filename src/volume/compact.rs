//! Volume ids for names too long to spell out.
//!
//! CSI allows volume names and volume ids of up to 128 bytes each, but a v1
//! id carries the server, share, base path and subdir (by default the name)
//! besides, so a long name cannot be written into its id as is. When the
//! readable id does not fit, [`fit`] gives the volume a shorter directory
//! name instead: the last subdir component becomes
//!
//! ```text
//! <up to 40 bytes of the component, as the id spells it>-<sha256(subdir), 16 hex>
//! ```
//!
//! (the prefix shorter, or left out, when the rest of the id leaves less room)
//! e.g. `pvc-aaaa…aaaa-3f9c0e1b7d2a4c58`. It is a pure function of the
//! subdir, so a retried CreateVolume with the same name gets the same id and
//! directory; the kept prefix lets an administrator tell which volume a
//! directory belongs to, and the volume record (`<base>/.smb3-csi/`) holds
//! the full name. If even that is too long (a long template subdir), the
//! whole subdir becomes that one component under the base path. The result
//! is an ordinary v1 id, so DeleteVolume, ControllerGetVolume and the node
//! need nothing else to find the volume.

use sha2::{Digest, Sha256};

use super::id::{VolumeId, VolumeIdError, MAX_VOLUME_ID_LEN};
use super::path::SharePath;

/// How much of the original directory name the compact one keeps.
const KEPT_PREFIX_BYTES: usize = 40;
/// Hex digits of the hash (64 bits): distinct names collide with negligible probability, and a collision
/// would still be refused (the directory's record names its owner).
const HASH_HEX_DIGITS: usize = 16;

/// `id` and its encoding: the readable form when it fits in 128 bytes, else the
/// compact directory name (see the module documentation). Errors only when
/// not even the compact form fits (a server, share and base path that
/// leave no room).
pub fn fit(id: VolumeId) -> Result<(VolumeId, String), VolumeIdError> {
    let too_long = match id.encode() {
        Ok(encoded) => return Ok((id, encoded)),
        Err(e @ VolumeIdError::TooLong { .. }) if !id.sub_dir.is_root() => e,
        Err(e) => return Err(e),
    };
    let Some((last, parents)) = id.sub_dir.components().split_last() else { return Err(too_long) };
    let hash = hash_hex(&id.sub_dir);
    let mut last_error = too_long;
    for parents in [parents, &[]] {
        let with_last = |component: String| {
            let sub_dir = parents.iter().cloned().chain([component]).collect::<Vec<_>>().join("/");
            VolumeId { sub_dir: SharePath::parse(&sub_dir).expect("built from valid components"), ..id.clone() }
        };
        // The hash alone first: what it leaves of the 128 bytes bounds the kept prefix.
        let room = match with_last(hash.clone()).encode() {
            Ok(encoded) => MAX_VOLUME_ID_LEN - encoded.len(),
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let prefix = spelled_prefix(last, room.saturating_sub(1).min(KEPT_PREFIX_BYTES));
        let compact = if prefix.is_empty() { with_last(hash) } else { with_last(format!("{prefix}-{hash}")) };
        let encoded = compact.encode()?;
        return Ok((compact, encoded));
    }
    Err(last_error)
}

/// The first 64 bits of sha256 of the subdir, in hex.
fn hash_hex(sub_dir: &SharePath) -> String {
    let digest = Sha256::digest(sub_dir.to_string().as_bytes());
    digest.iter().take(HASH_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect()
}

/// The longest start of `component` that the id spells in at most `budget` bytes (`%` is escaped to three),
/// whole characters only, without trailing dots and spaces (Windows servers drop them).
fn spelled_prefix(component: &str, budget: usize) -> &str {
    let mut spelled = 0;
    let mut end = 0;
    for (i, c) in component.char_indices() {
        spelled += if c == '%' { 3 } else { c.len_utf8() };
        if spelled > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    component[..end].trim_end_matches(['.', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{OnDelete, ShareUrl};
    use smb3::EncryptionPolicy;

    fn id(source: &str, sub_dir: &str) -> VolumeId {
        VolumeId {
            share: ShareUrl::parse(source).unwrap(),
            sub_dir: SharePath::parse_or_root(sub_dir).unwrap(),
            on_delete: Some(OnDelete::Delete),
            encryption: Some(EncryptionPolicy::IfSupported),
            address: None,
        }
    }

    #[test]
    fn short_names_keep_the_readable_id() {
        let readable = id("//files.example.com/team/k8s", "pvc-1234");
        let (fitted, encoded) = fit(readable.clone()).unwrap();
        assert_eq!(fitted, readable);
        assert_eq!(encoded, "v1|files.example.com||team|k8s|pvc-1234|delete|if-supported");
    }

    #[test]
    fn every_name_up_to_128_bytes_fits_and_is_stable() {
        let source = "//smb-server.default.svc.cluster.local/share/k8s-volumes";
        for len in [1, 40, 60, 100, 127, 128] {
            for fill in ["a", "é", "%", "x.y"] {
                // At most `len` bytes (CSI limits bytes), whole characters only.
                let mut name = String::new();
                for c in fill.repeat(128).chars() {
                    if name.len() + c.len_utf8() > len {
                        break;
                    }
                    name.push(c);
                }
                let name = name.trim_end_matches('.').to_string();
                let Ok(sub_dir) = SharePath::parse(&name) else { continue };
                let wanted = VolumeId { sub_dir, ..id(source, "") };
                let (fitted, encoded) = fit(wanted.clone()).unwrap_or_else(|e| panic!("{name:?}: {e}"));
                assert!(encoded.len() <= MAX_VOLUME_ID_LEN, "{name:?}: {} bytes", encoded.len());
                assert_eq!(VolumeId::parse(&encoded).unwrap(), fitted, "{name:?}");
                assert_eq!(fit(wanted.clone()).unwrap().1, encoded, "{name:?}: not deterministic");
                if wanted.encode().is_err() {
                    let dir = fitted.sub_dir.to_string();
                    let spelled = dir.len() + 2 * dir.matches('%').count();
                    assert!(spelled <= KEPT_PREFIX_BYTES + 1 + HASH_HEX_DIGITS, "{dir:?}");
                    let (prefix, hash) = dir.rsplit_once('-').unwrap();
                    assert!(name.starts_with(prefix) && !prefix.is_empty(), "{dir:?} keeps a prefix of {name:?}");
                    assert_eq!(hash.len(), HASH_HEX_DIGITS, "{dir:?}");
                }
            }
        }
    }

    #[test]
    fn names_that_differ_anywhere_get_different_directories() {
        let source = "//files.example.com/team/k8s";
        let a = "a".repeat(128);
        let mut b = a.clone();
        b.replace_range(127.., "b");
        let upper = "A".repeat(128);
        let dirs: Vec<String> =
            [&a, &b, &upper].iter().map(|n| fit(id(source, n)).unwrap().0.sub_dir.to_string()).collect();
        assert_ne!(dirs[0], dirs[1]);
        assert_ne!(dirs[0], dirs[2]);
        assert!(dirs.iter().all(|d| d.len() == KEPT_PREFIX_BYTES + 1 + HASH_HEX_DIGITS), "{dirs:?}");
    }

    #[test]
    fn template_parents_are_kept_when_they_fit_and_dropped_when_not() {
        let source = "//files.example.com/team";
        let name = "n".repeat(100);
        let (fitted, _) = fit(id(source, &format!("prod/{name}"))).unwrap();
        assert_eq!(fitted.sub_dir.components().len(), 2);
        assert_eq!(fitted.sub_dir.components()[0], "prod");

        let (fitted, encoded) = fit(id(source, &format!("{}/{name}", "p".repeat(80)))).unwrap();
        assert_eq!(fitted.sub_dir.components().len(), 1, "{encoded}");
        assert!(encoded.len() <= MAX_VOLUME_ID_LEN);
    }

    #[test]
    fn a_source_that_leaves_no_room_is_still_an_error() {
        let source = format!("//{}/share/{}", "s".repeat(60), "b".repeat(60));
        let err = fit(id(&source, &"n".repeat(64))).unwrap_err();
        assert!(matches!(err, VolumeIdError::TooLong { .. }), "{err}");
        // A whole-share volume has no directory name to shorten.
        let err = fit(id(&format!("//{}/share/{}", "s".repeat(60), "b".repeat(80)), "")).unwrap_err();
        assert!(matches!(err, VolumeIdError::TooLong { .. }), "{err}");
    }
}
