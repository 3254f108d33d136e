//! Where a volume's SMB sessions go, decided in one place from its share address and its mount options, for
//! every caller: the node (NodeStageVolume), the controller (CreateVolume from the StorageClass
//! `mountOptions`; DeleteVolume and the other RPCs from the volume id, which records the address) and
//! `smb3-csi mount`.
//!
//! The server *name* stays the share's: it names the Kerberos service principal `cifs/<name>`. `ip=`/`addr=`
//! only say where to connect, so a name the node or controller cannot resolve still works, as with
//! mount.cifs.

use std::net::IpAddr;

use smb3::{ClientOptions, SecurityMechanism};

use super::MountOptions;
use crate::volume::{ShareUrl, VolumeId};

/// A share, the address to reach its server at, and the logon mechanism.
///
/// ```
/// use smb3_csi::mount::{ConnectTarget, MountOptions};
/// use smb3_csi::volume::ShareUrl;
/// let share = ShareUrl::parse("//fs1.corp.example/team/k8s").unwrap();
/// let (options, _) = MountOptions::parse(&["sec=krb5,ip=10.0.0.5,port=1445".to_string()]).unwrap();
/// let to = ConnectTarget::new(&share, &options);
/// assert_eq!(to.share.to_string(), "//fs1.corp.example:1445/team/k8s");
/// let client = to.client_options(&Default::default());
/// assert_eq!(client.connect_address.as_deref(), Some("10.0.0.5"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The share by its server's name, on the port `port=` gives, else the source's.
    pub share: ShareUrl,
    /// `ip=`/`addr=`: connect here instead of resolving the server's name.
    pub address: Option<IpAddr>,
    /// `sec=`.
    pub security: SecurityMechanism,
}

impl ConnectTarget {
    /// The target of a volume on `share` mounted with `options`.
    pub fn new(share: &ShareUrl, options: &MountOptions) -> ConnectTarget {
        let share = match options.port {
            Some(port) => share.with_port(port),
            None => share.clone(),
        };
        ConnectTarget { share, address: options.ip, security: options.sec }
    }

    /// The target of a provisioned volume as its id records it (the StorageClass's `port=` and `ip=` were
    /// folded into it at CreateVolume). `sec=` is not recorded: the client prefers Kerberos when the server
    /// offers it and the credentials allow, which is what `sec=krb5` volumes need.
    pub fn of_volume(id: &VolumeId) -> ConnectTarget {
        ConnectTarget { share: id.share.clone(), address: id.address, security: SecurityMechanism::Auto }
    }

    /// `base` connecting as this target says.
    pub fn client_options(&self, base: &ClientOptions) -> ClientOptions {
        let mut options = base.clone();
        super::options::connect_as(&mut options, self.address, self.security);
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(flags: &str) -> MountOptions {
        MountOptions::parse(&[flags.to_string()]).unwrap().0
    }

    #[test]
    fn ip_port_and_sec_make_the_target_and_the_name_stays() {
        let share = ShareUrl::parse("//dc1.smb3test.test/share/k8s").unwrap();
        let to = ConnectTarget::new(&share, &options("sec=krb5,addr=127.0.0.20"));
        assert_eq!(to.share, share, "no port= keeps the source's");
        assert_eq!((to.address, to.security), (Some("127.0.0.20".parse().unwrap()), SecurityMechanism::Kerberos));
        let client = to.client_options(&ClientOptions::default());
        assert_eq!(client.connect_address.as_deref(), Some("127.0.0.20"));
        assert_eq!(client.security, SecurityMechanism::Kerberos);
        // The principal comes from the name: the target still says dc1.
        assert_eq!(to.share.target().host, "dc1.smb3test.test");

        let to = ConnectTarget::new(&share, &options("ip=fd00::5,port=1445"));
        assert_eq!((to.share.port(), to.share.server()), (1445, "dc1.smb3test.test"));
        assert_eq!(to.client_options(&ClientOptions::default()).connect_address.as_deref(), Some("fd00::5"));
        assert_eq!(to.security, SecurityMechanism::Auto);
    }

    #[test]
    fn without_ip_the_name_is_resolved() {
        let share = ShareUrl::parse("//files.example.com/team").unwrap();
        let to = ConnectTarget::new(&share, &MountOptions::default());
        let base = ClientOptions { connect_address: None, ..Default::default() };
        assert_eq!(to.client_options(&base).connect_address, None);
    }

    #[test]
    fn a_volume_id_gives_its_recorded_address() {
        let id = VolumeId::parse("v1|dc1.smb3test.test||share|k8s|pvc-1|delete||127.0.0.20").unwrap();
        let to = ConnectTarget::of_volume(&id);
        assert_eq!((to.share.server(), to.address), ("dc1.smb3test.test", Some("127.0.0.20".parse().unwrap())));
        assert_eq!(to.security, SecurityMechanism::Auto);
    }
}
