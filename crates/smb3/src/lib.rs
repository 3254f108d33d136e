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
pub mod calendar;
pub mod crypto;
pub mod observer;
pub mod secret;
pub mod wire;

mod client;
mod conn;
mod deadlines;
mod error;
mod file;
pub mod lease;
mod link;
mod negotiation;
mod options;
mod pool;
mod protection;
mod recovery;
mod session;
mod small_file;
mod target;
mod tree;

pub use client::Client;
pub use conn::{ConnectionStats, Framing};
pub use error::{Error, Result};
pub use file::{File, LockKind, OpenOptions, CHUNK, PIPELINE_DEPTH};
pub use lease::{LeaseBreak, LeaseBreakHandler};
pub use observer::{NoObserver, Observer, ObserverHandle};
pub use options::{
    parse_cipher_list, parse_dialect, CcacheBytes, ClientOptions, Credentials, EncryptionPolicy, KerberosCredentials,
    SecurityMechanism,
};
pub use pool::SessionPool;
pub use recovery::{Backoff, ConnectionState, CredentialsSource, Recovery};
pub use secret::Secret;
pub use session::SessionInfo;
pub use small_file::WholeFile;
pub use target::{join_path, HostPort, ShareTarget, DEFAULT_PORT, NETBIOS_PORT};
pub use tree::{is_not_found, CopyMethod, CopyProgress, DirEntry, FsStats, Metadata, Tree};
pub use wire::{CipherId, Dialect, NtStatus, SigningAlgorithmId};
