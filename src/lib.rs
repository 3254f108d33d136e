//! smb3-csi: a Kubernetes CSI driver for SMB shares built on a userspace SMB3 client.

#![forbid(unsafe_code)]

pub mod csi;
pub mod fs;
pub mod k8s;
pub mod keeper;
pub mod metrics;
pub mod mount;
pub mod registrar;
pub mod volume;
