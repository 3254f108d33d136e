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

/// `username`, `password`, `domain` from a CSI secrets map (keys matched case-insensitively, as csi-driver-smb;
/// values trimmed). `None` for an empty map. Shared by the controller and node services.
pub(crate) fn credentials_from_secrets(
    secrets: &std::collections::HashMap<String, String>,
) -> Result<Option<smb3::Credentials>, tonic::Status> {
    use smb3::{Credentials, Secret};
    use tonic::Status;
    if secrets.is_empty() {
        return Ok(None);
    }
    let get = |key: &str| secrets.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim());
    let user = get("username").filter(|u| !u.is_empty()).ok_or_else(|| {
        let mut keys: Vec<&str> = secrets.keys().map(String::as_str).collect();
        keys.sort_unstable();
        Status::invalid_argument(format!(
            "the secret has no \"username\" (keys present: {}); it needs username, password and optionally domain",
            keys.join(", ")
        ))
    })?;
    let password = get("password").ok_or_else(|| {
        Status::invalid_argument("the secret has no \"password\"; it needs username, password and optionally domain")
    })?;
    let domain = get("domain").unwrap_or("");
    Ok(Some(Credentials::user(user, domain, Secret::new(password))))
}

pub use controller::ControllerService;
pub use identity::IdentityService;
pub use server::{serve, Endpoint, EndpointError, ServeError, Services};
