//! A userspace SMB2/3 client with mandatory encryption and signing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smb3::Error> {
//! use smb3::{Client, ClientOptions, Credentials, Secret, ShareTarget};
//! let target = ShareTarget::parse("//fileserver/share")?;
//! let creds = Credentials::user("alice", "CORP", Secret::new("s3cret"));
//! let (_client, tree) = Client::connect_share(&target, &creds, &ClientOptions::default()).await?;
//! tree.mkdir_all("volumes/pvc-1").await?;
//! # Ok(()) }
//! ```
//!
//! This crate knows nothing of CSI, Kubernetes, FUSE or Prometheus: it reports
//! traffic and session events through the [`Observer`] in its options.

#![forbid(unsafe_code)]

pub mod auth;
pub mod crypto;
pub mod observer;
pub mod secret;
pub mod wire;

mod client;
mod conn;
mod error;
mod file;
mod link;
mod pool;
mod recovery;
mod session;
mod tree;

pub use client::{
    join_path, parse_cipher_list, parse_dialect, Client, ClientOptions, Credentials, EncryptionPolicy, HostPort,
    ShareTarget, DEFAULT_PORT, NETBIOS_PORT,
};
pub use conn::{ConnectionStats, Framing};
pub use error::{Error, Result};
pub use file::{File, OpenOptions, CHUNK, PIPELINE_DEPTH};
pub use observer::{NoObserver, Observer, ObserverHandle};
pub use pool::SessionPool;
pub use recovery::{Backoff, ConnectionState, CredentialsSource, Recovery};
pub use secret::Secret;
pub use session::SessionInfo;
pub use tree::{is_not_found, CopyMethod, CopyProgress, DirEntry, FsStats, Metadata, Tree};
pub use wire::{CipherId, Dialect, NtStatus, SigningAlgorithmId};
