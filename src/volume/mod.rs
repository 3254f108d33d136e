//! The volume model: what a StorageClass asks for and how a provisioned
//! volume is named, as plain validated types with no I/O.
//!
//! - [`ShareUrl`]: where the share is (`//server[:port]/share[/base]`).
//! - [`SharePath`]: a validated relative path inside a share.
//! - [`StorageClassParams`]: the StorageClass `parameters`, typed once.
//! - [`VolumeId`]: the CSI volume handle, versioned and reversible (format in
//!   [`id`]); [`compact::fit`] shortens the directory of a volume whose
//!   readable id would exceed CSI's 128 bytes.

pub mod compact;
pub mod id;
pub mod params;
pub mod path;
pub mod share_url;

pub use id::{VolumeId, VolumeIdError, MAX_VOLUME_ID_LEN};
pub use params::{OnDelete, ParamError, StorageClassParams, SubDirTemplate};
pub use path::{PathError, SharePath};
pub use share_url::{ShareUrl, ShareUrlError, DEFAULT_SMB_PORT};
