//! The integration tests, one binary with a module per area: linking tonic,
//! kube and the rest once instead of once per file is most of what a cold
//! `scripts/test.sh` used to spend. Each module starts what it needs (a
//! private Samba through `smb3-testkit`, FUSE mounts, the driver binary);
//! tests that share a process share the test kit's Samba instances.

/// The shared private Samba (encryption required), or: skip the test where Samba is not installed.
macro_rules! samba {
    () => {
        samba!(SambaProfile::EncryptRequired)
    };
    ($profile:expr) => {{
        crate::common::init_tracing();
        match Samba::shared($profile) {
            Some(s) => s,
            None => {
                eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
                return;
            }
        }
    }};
}

mod ad_dc;
mod architecture;
mod chart;
mod common;
mod controller;
mod csi_requests;
mod demo;
mod fs_ops;
mod fs_semantics;
mod fuse;
mod fuse_semantics;
mod grpc_clients;
mod hostile_server;
mod identity;
mod kerberos;
mod metrics;
mod mount_cli;
mod node;
mod proto;
mod reconnect;
mod reliability;
mod restart;
mod small_files;
mod smb_cli;
mod smb_client;
mod smb_locks;
mod takeover;
mod testkit;
