//! Our own FUSE server: the kernel ABI (`wire`), the request loop of one connection (`session`) and the
//! mapping of requests onto [`SmbFs`](super::SmbFs) operations (`dispatch`).
//!
//! Owned rather than borrowed from a FUSE crate because a node plugin restart must not touch pods' volumes:
//! a successor process has to serve a /dev/fuse connection that is already initialised (no INIT will come),
//! with the node ids and file handles its predecessor handed out (the takeover journal, `fs::journal`), and
//! must ask the kernel to resend what the predecessor read but never answered (FUSE_NOTIFY_RESEND, Linux 6.9+;
//! on older kernels those requests are lost and their callers hang until the mount is aborted).

pub(crate) mod dispatch;
pub mod session;
pub mod wire;

pub use dispatch::MAX_IO;
pub use session::{Notifier, Session};
