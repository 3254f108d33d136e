//! The CSI gRPC surface: generated protocol types, the unix-socket server with
//! per-RPC logging, and the Identity service. Controller and Node services
//! plug into [`server::Services`].

pub mod controller;
pub mod identity;
pub mod node;
pub mod redact;
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

pub use controller::ControllerService;
pub use identity::IdentityService;
pub use server::{serve, Endpoint, EndpointError, ServeError, Services};
