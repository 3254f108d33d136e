//! The CSI Identity service: who the plugin is, what it offers, whether it
//! is ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::identity_server::Identity;
use super::proto::{
    plugin_capability, GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};

/// The spec's limit on the plugin name (CSI spec, "GetPluginInfo").
pub const MAX_DRIVER_NAME_LEN: usize = 63;

/// Why a driver name breaks the CSI naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverNameError {
    #[error("driver name is empty")]
    Empty,
    #[error("driver name {name:?} is {len} characters; CSI allows at most {MAX_DRIVER_NAME_LEN}")]
    TooLong { name: String, len: usize },
    #[error("driver name {name:?} must begin and end with a letter or digit")]
    BadEnds { name: String },
    #[error("driver name {name:?} contains {found:?}; only letters, digits, '-' and '.' are allowed")]
    BadCharacter { name: String, found: char },
}

/// Checks a plugin name against the spec: domain-name notation, at most 63
/// characters, alphanumeric at both ends, `-` `.` and alphanumerics between.
pub fn validate_driver_name(name: &str) -> Result<(), DriverNameError> {
    if name.is_empty() {
        return Err(DriverNameError::Empty);
    }
    if let Some(found) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(DriverNameError::BadCharacter { name: name.to_string(), found });
    }
    // All ASCII from here on, so bytes are characters.
    if name.len() > MAX_DRIVER_NAME_LEN {
        return Err(DriverNameError::TooLong { name: name.to_string(), len: name.len() });
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(DriverNameError::BadEnds { name: name.to_string() });
    }
    Ok(())
}

/// Answers the Identity RPCs. `ready` is shared with whatever decides
/// readiness (e.g. the node service once its FUSE prerequisites are checked).
#[derive(Clone, Debug)]
pub struct IdentityService {
    driver_name: String,
    version: &'static str,
    controller: bool,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    /// `controller` says whether this process also serves the Controller
    /// service, which GetPluginCapabilities then advertises.
    pub fn new(driver_name: &str, controller: bool, ready: Arc<AtomicBool>) -> Result<Self, DriverNameError> {
        validate_driver_name(driver_name)?;
        Ok(IdentityService {
            driver_name: driver_name.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            controller,
            ready,
        })
    }

    pub fn driver_name(&self) -> &str {
        &self.driver_name
    }

    pub fn version(&self) -> &'static str {
        self.version
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: self.version.to_string(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // SMB shares are reachable from every node: no accessibility
        // constraints, so VOLUME_ACCESSIBILITY_CONSTRAINTS is not advertised.
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::Service(plugin_capability::Service {
                    r#type: plugin_capability::service::Type::ControllerService as i32,
                })),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _request: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(self.ready.load(Ordering::Acquire)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["smb3.csi.example.com", "a", "smb-csi", "A1.b2", &"x".repeat(63)] {
            assert_eq!(validate_driver_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        assert_eq!(validate_driver_name(""), Err(DriverNameError::Empty));
        assert!(matches!(validate_driver_name(&"x".repeat(64)), Err(DriverNameError::TooLong { len: 64, .. })));
        assert!(matches!(validate_driver_name("-smb"), Err(DriverNameError::BadEnds { .. })));
        assert!(matches!(validate_driver_name("smb."), Err(DriverNameError::BadEnds { .. })));
        assert!(matches!(validate_driver_name("smb_csi"), Err(DriverNameError::BadCharacter { found: '_', .. })));
        assert!(matches!(validate_driver_name("smb/csi"), Err(DriverNameError::BadCharacter { found: '/', .. })));
        assert!(matches!(validate_driver_name("smbé.csi"), Err(DriverNameError::BadCharacter { found: 'é', .. })));
        assert!(IdentityService::new("bad name", true, Arc::default()).is_err());
    }

    #[tokio::test]
    async fn answers() {
        let ready = Arc::new(AtomicBool::new(false));
        let service = IdentityService::new("smb3.csi.example.com", true, ready.clone()).unwrap();
        let info = service.get_plugin_info(Request::new(GetPluginInfoRequest {})).await.unwrap().into_inner();
        assert_eq!(info.name, "smb3.csi.example.com");
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

        let probe = |s: IdentityService| async move {
            s.probe(Request::new(ProbeRequest {})).await.unwrap().into_inner().ready
        };
        assert_eq!(probe(service.clone()).await, Some(false));
        ready.store(true, Ordering::Release);
        assert_eq!(probe(service.clone()).await, Some(true));

        let caps = service
            .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        assert_eq!(caps.len(), 1);
        let node_only = IdentityService::new("smb3.csi.example.com", false, ready).unwrap();
        let caps = node_only
            .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        assert!(caps.is_empty());
    }
}
