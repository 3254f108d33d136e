//! The CSI gRPC surface: generated protocol types, the unix-socket server with
//! per-RPC logging, and the Identity service. Controller and Node services
//! plug into [`server::Services`].

pub mod controller;
pub(crate) mod h2fix;
mod health;
pub mod identity;
mod locks;
pub mod node;
pub mod redact;
mod rotation;
pub mod server;

/// Types and service traits generated from `proto/csi.proto` (package `csi.v1`).
///
/// Messages that carry secrets print `<redacted>` for them in `Debug` (see
/// `build.rs`). Service traits have default methods that answer
/// UNIMPLEMENTED, so a service implements only the RPCs it supports.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");
    include!(concat!(env!("OUT_DIR"), "/csi_v1_extras.rs"));
}

/// Longest user or domain name accepted from a Secret (AD's sAMAccountName is 20, UPNs reach 1024).
const MAX_ACCOUNT_NAME: usize = 1024;

/// The credentials in a CSI secrets map (keys matched case-insensitively, as csi-driver-smb; values trimmed),
/// `None` for an empty map. Shared by the controller and node services. Either
/// - `krb5cc_<uid>`: a base64 MIT credential cache (the incumbent's Kerberos Secrets), the key chosen by
///   [`ccache_key`] (`cruid=` mount option), kept in memory only; or
/// - `username`, `password`, optionally `domain`: NTLMv2, or Kerberos with the client's own tickets when the
///   server offers it and the realm has KDCs in krb5.conf (or with `sec=krb5`).
pub(crate) fn credentials_from_secrets(
    secrets: &std::collections::HashMap<String, String>,
) -> Result<Option<smb3::Credentials>, tonic::Status> {
    credentials_from_secrets_for(secrets, None)
}

/// As [`credentials_from_secrets`], with the `cruid=` of the volume's mount options.
pub(crate) fn credentials_from_secrets_for(
    secrets: &std::collections::HashMap<String, String>,
    cruid: Option<u32>,
) -> Result<Option<smb3::Credentials>, tonic::Status> {
    use smb3::{CcacheBytes, Credentials, KerberosCredentials, Secret};
    use tonic::Status;
    if secrets.is_empty() {
        return Ok(None);
    }
    let get = |key: &str| secrets.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim());
    if let Some(key) = ccache_key(secrets.keys().map(String::as_str), cruid) {
        let value = get(&key).unwrap_or_default();
        let bytes =
            decode_ccache(value).map_err(|why| Status::invalid_argument(format!("the secret's {key}: {why}")))?;
        return Ok(Some(Credentials::Kerberos(KerberosCredentials::Ccache(CcacheBytes::new(bytes)))));
    }
    let user = get("username").filter(|u| !u.is_empty()).ok_or_else(|| {
        let mut keys: Vec<&str> = secrets.keys().map(String::as_str).collect();
        keys.sort_unstable();
        Status::invalid_argument(format!(
            "the secret has no \"username\" (keys present: {}); it needs username, password and optionally \
             domain, or a Kerberos credential cache under krb5cc_<uid>",
            keys.join(", ")
        ))
    })?;
    let password = get("password").ok_or_else(|| {
        Status::invalid_argument("the secret has no \"password\"; it needs username, password and optionally domain")
    })?;
    let domain = get("domain").unwrap_or("");
    // A name with control characters cannot be a real account, and would reach logs and NTLM as is.
    for (key, value) in [("username", user), ("domain", domain)] {
        if value.chars().any(char::is_control) || value.len() > MAX_ACCOUNT_NAME {
            return Err(Status::invalid_argument(format!(
                "the secret's \"{key}\" has control characters or is longer than {MAX_ACCOUNT_NAME} bytes"
            )));
        }
    }
    Ok(Some(Credentials::user(user, domain, Secret::new(password))))
}

/// Which secret key holds the credential cache: `krb5cc_<cruid>` when `cruid=` is given (present or not, so a
/// missing one is named), else the only `krb5cc_*` key, else `krb5cc_0` if present. `None`: no ccache.
pub(crate) fn ccache_key<'a>(keys: impl Iterator<Item = &'a str>, cruid: Option<u32>) -> Option<String> {
    let ccaches: Vec<&str> = keys.filter(|k| k.len() > 7 && k[..7].eq_ignore_ascii_case("krb5cc_")).collect();
    match cruid {
        Some(uid) if !ccaches.is_empty() => Some(format!("krb5cc_{uid}")),
        _ => match ccaches.as_slice() {
            [] => None,
            [one] => Some(one.to_string()),
            many => many.iter().find(|k| k.eq_ignore_ascii_case("krb5cc_0")).map(|k| k.to_string()),
        },
    }
}

/// A `krb5cc_<uid>` value: base64 of the MIT ccache file (as `base64 -w0 /tmp/krb5cc_1000` gives), checked to be
/// a ccache. Never echoes the value.
pub(crate) fn decode_ccache(value: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    if value.is_empty() {
        return Err("empty (expected the base64 of an MIT credential cache)".into());
    }
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| "not base64 (expected the base64 of an MIT credential cache, e.g. base64 -w0 /tmp/krb5cc_1000)")?;
    smb3::auth::ccache::Ccache::decode(&bytes).map_err(|e| format!("not an MIT credential cache: {e}"))?;
    Ok(bytes)
}

pub use controller::ControllerService;
pub use identity::IdentityService;
pub use server::{serve, Endpoint, EndpointError, ServeError, Services};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn keys<'a>(k: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        k.iter().copied()
    }

    #[test]
    fn ccache_key_follows_cruid_and_the_keys_present() {
        assert_eq!(ccache_key(keys(&["username", "password"]), None), None);
        assert_eq!(ccache_key(keys(&["username", "password"]), Some(1000)), None);
        assert_eq!(ccache_key(keys(&["krb5cc_1000"]), None).as_deref(), Some("krb5cc_1000"));
        assert_eq!(ccache_key(keys(&["krb5cc_1000", "krb5cc_0"]), None).as_deref(), Some("krb5cc_0"));
        assert_eq!(ccache_key(keys(&["krb5cc_1000", "krb5cc_2000"]), None), None);
        assert_eq!(ccache_key(keys(&["krb5cc_1000", "krb5cc_0"]), Some(1000)).as_deref(), Some("krb5cc_1000"));
        assert_eq!(ccache_key(keys(&["krb5cc_0"]), Some(1000)).as_deref(), Some("krb5cc_1000"), "named when missing");
    }

    #[test]
    fn ccache_values_are_checked_and_never_echoed() {
        let secrets = |v: &str| HashMap::from([("krb5cc_0".to_string(), v.to_string())]);
        for bad in ["", "!!not base64!!", "aGVsbG8="] {
            let e = credentials_from_secrets(&secrets(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("krb5cc_0"), "{}", e.message());
            assert!(bad.is_empty() || !e.message().contains(bad), "{}", e.message());
        }
        let missing = HashMap::from([("krb5cc_0".to_string(), "eA==".to_string())]);
        let e = credentials_from_secrets_for(&missing, Some(7)).unwrap_err();
        assert!(e.message().contains("krb5cc_7"), "{}", e.message());
    }
}
