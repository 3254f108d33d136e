//! Test kit: a private Samba server, a private AD domain controller with its
//! KDC (Kerberos), and a corrupting TCP proxy.
//!
//! It lives in the library (not under `tests/`) because both the integration
//! tests and the `smb3-csi demo` command start the same private Samba.
//!
//! ```no_run
//! use smb3_testkit::{Samba, SambaProfile};
//!
//! let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
//!     eprintln!("skipped: Samba is not installed");
//!     return;
//! };
//! samba.smbclient("ls").unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod ad_dc;
pub mod hostile;
pub mod proxy;
pub mod run_log;
pub mod samba;
pub mod sealed;
pub mod secret_scan;

pub use ad_dc::AdDc;
pub use proxy::CorruptingProxy;
pub use samba::{live_processes_using, Samba, SambaError, SambaProfile};

/// True when running under CI (`CI=true`): there a missing Samba is a
/// failure, not a reason to skip.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}
