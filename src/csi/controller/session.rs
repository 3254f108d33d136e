//! Connecting to a volume's share: the session pool, the volume's
//! encryption policy, and the errors a failed connection turns into.
//!
//! Every RPC goes through [`ControllerService::tree`] so that the policy,
//! the remembered credentials and the auth-failure eviction are applied the
//! same way everywhere.

use tonic::{Code, Status};

use super::status::{self, is_auth_failure};
use super::ControllerService;
use crate::mount::ConnectTarget;
use crate::volume::params::encryption_name;
use smb3::{ClientOptions, Credentials, EncryptionPolicy, Error as SmbError, Recovery, Tree};

/// How long a controller RPC waits for a lost server to come back before it
/// fails with UNAVAILABLE. The controller's work is short and retried by the
/// sidecars (whose own deadline is 10 s by default), so it must never hang the
/// way a `hard` node mount rightly does.
pub(super) const CONTROLLER_RECOVERY: Recovery = Recovery::Soft { timeout: std::time::Duration::from_secs(5) };

impl ControllerService {
    /// The policy a volume's sessions use: its own, else the pool's default.
    pub(super) fn effective(&self, encryption: Option<EncryptionPolicy>) -> EncryptionPolicy {
        encryption.unwrap_or(self.pool.options().encryption)
    }

    /// A connected tree for the share of `to` (at its address, with its
    /// mechanism) with the `encryption` policy (`None`: the pool's default);
    /// on success the credentials are remembered for RPCs that carry none.
    pub(super) async fn tree(
        &self,
        to: &ConnectTarget,
        encryption: Option<EncryptionPolicy>,
        creds: &Credentials,
        missing_share: Code,
    ) -> Result<Tree, Status> {
        let share = &to.share;
        let target = share.target();
        let policy = self.effective(encryption);
        let options = to.client_options(&ClientOptions {
            encryption: policy,
            recovery: CONTROLLER_RECOVERY,
            ..self.pool.options().clone()
        });
        match self.pool.tree_with(&target, creds, &options).await {
            Ok(tree) => {
                self.known_credentials.remember(share, creds);
                Ok(tree)
            }
            Err(e) => {
                if is_auth_failure(&e) {
                    self.pool.invalidate_with(&target, creds, &options);
                }
                let context = format!(
                    "connecting to {} as {} with encryption {}",
                    share.share_root(),
                    creds.display_name(),
                    encryption_name(policy)
                );
                let mut status = status::smb_status(&context, &e, missing_share);
                if matches!(e, SmbError::EncryptionUnavailable(_)) && policy == EncryptionPolicy::Required {
                    status = Status::new(
                        status.code(),
                        format!(
                            "{}; the StorageClass parameter encryption (if-supported or off) relaxes this for its \
                             volumes, which is safe only where the network path is trusted",
                            status.message()
                        ),
                    );
                }
                Err(status)
            }
        }
    }
}

/// The policy that protects data at least as well as both.
pub(super) fn stricter(a: EncryptionPolicy, b: EncryptionPolicy) -> EncryptionPolicy {
    let rank = |p| match p {
        EncryptionPolicy::Off => 0,
        EncryptionPolicy::IfSupported => 1,
        EncryptionPolicy::Required => 2,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stricter_is_the_better_protection() {
        use EncryptionPolicy::*;
        for (a, b, want) in [(Off, Required, Required), (IfSupported, Off, IfSupported), (Off, Off, Off)] {
            assert_eq!((stricter(a, b), stricter(b, a)), (want, want));
        }
    }
}
