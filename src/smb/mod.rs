//! A userspace SMB2/3 client with mandatory encryption and signing.
//!
//! This module knows nothing of CSI or Kubernetes.

pub mod auth;
pub mod crypto;
pub mod secret;
pub mod wire;

pub use secret::Secret;
