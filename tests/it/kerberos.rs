//! Our Kerberos client pieces against the test bed's AD DC (issue #16).
//!
//! The AS exchange gets a TGT from the Samba KDC with a password, and the
//! TGS exchange a `cifs/` ticket with it; MIT's smbclient then logs on to the
//! DC's share (Kerberos required, encryption required) with nothing but our
//! TGT, or nothing but our service ticket, in a ccache our codec wrote: the
//! independent proof that the tickets and their session keys are right.
//! Each failure names itself in one line.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use smb3::auth::ccache::Ccache;
use smb3::auth::kdc::{request_service_ticket, request_tgt, KdcConfig, KerberosError};
use smb3::Secret;
use smb3_testkit::AdDc;

async fn shared_dc() -> Option<&'static AdDc> {
    tokio::task::spawn_blocking(AdDc::shared).await.unwrap()
}

/// MIT's GSS-API refuses a ccache file others can read (seen: "unknown
/// mech-code 1" from gss_krb5_import_cred on a 0644 file): 0600, as kinit writes.
fn write_private(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

fn config(dc: &AdDc) -> KdcConfig {
    KdcConfig { realm: dc.realm().to_string(), kdcs: vec![dc.kdc_addr()], timeout: Duration::from_secs(10) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_gets_a_tgt_that_mit_smbclient_logs_on_with() {
    let Some(dc) = shared_dc().await else { return };
    let tgt = request_tgt(&config(dc), dc.user(), dc.password()).await.expect("TGT");
    assert_eq!(tgt.client.display(), dc.user_principal());
    assert_eq!(tgt.server.display(), format!("krbtgt/{0}@{0}", dc.realm()));
    assert_eq!((tgt.key_type, tgt.key.len()), (18, 32), "aes256-cts-hmac-sha1-96 session key");
    assert!(tgt.end_time > tgt.start_time, "{tgt:?}");

    let cache =
        Ccache { version: 0x0504, header: vec![], default_principal: tgt.client.clone(), credentials: vec![tgt] };
    let path = dc.scratch_path(&format!("ours-{}.ccache", std::process::id()));
    write_private(&path, &cache.encode());
    let name = format!("tgt-from-our-as-exchange-{}.txt", std::process::id());
    std::fs::write(dc.share_path().join(&name), b"x").unwrap();
    let listing = tokio::task::spawn_blocking({
        let path = path.clone();
        move || dc.smbclient_krb5(&path, "ls")
    })
    .await
    .unwrap()
    .expect("smbclient with our TGT");
    assert!(listing.contains(&name), "{listing}");
    // smbclient added the cifs ticket it got with our TGT to our cache.
    let after = Ccache::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert!(after.service_ticket("cifs", &dc.server_name()).is_some(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_principal_and_kdc_down_are_named() {
    let Some(dc) = shared_dc().await else { return };
    let wrong = request_tgt(&config(dc), dc.user(), &Secret::new("not-the-password-1A")).await.unwrap_err();
    assert!(matches!(wrong, KerberosError::WrongPassword { .. }), "{wrong}");
    assert!(!format!("{wrong} {wrong:?}").contains("not-the-password"), "{wrong:?}");

    let unknown = request_tgt(&config(dc), "nobody-here", dc.password()).await.unwrap_err();
    assert!(matches!(unknown, KerberosError::PrincipalUnknown { .. }), "{unknown}");
    assert!(unknown.to_string().contains("nobody-here@SMB3TEST.TEST"), "{unknown}");

    // A port that was free a moment ago: nothing answers there.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let down = KdcConfig { kdcs: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))], ..config(dc) };
    let e = request_tgt(&down, dc.user(), dc.password()).await.unwrap_err();
    assert!(matches!(e, KerberosError::KdcUnreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_service_ticket_alone_logs_mit_smbclient_on() {
    let Some(dc) = shared_dc().await else { return };
    let config = config(dc);
    let tgt = request_tgt(&config, dc.user(), dc.password()).await.expect("TGT");
    let cifs = request_service_ticket(&config, &tgt, "cifs", &dc.server_name()).await.expect("service ticket");
    assert_eq!(cifs.server.display(), dc.service_principal());
    assert_eq!(cifs.client.display(), dc.user_principal());
    assert_eq!(cifs.key.len(), 32, "aes256 session key");
    assert_ne!(cifs.key, tgt.key);

    // Only the service ticket: smbclient cannot get one itself without a TGT, so a logon proves ours.
    let cache =
        Ccache { version: 0x0504, header: vec![], default_principal: cifs.client.clone(), credentials: vec![cifs] };
    let path = dc.scratch_path(&format!("cifs-only-{}.ccache", std::process::id()));
    write_private(&path, &cache.encode());
    tokio::task::spawn_blocking(move || dc.smbclient_krb5(&path, "ls"))
        .await
        .unwrap()
        .expect("smbclient with our cifs ticket");

    let nosuch = request_service_ticket(&config, &tgt, "cifs", "nosuch.smb3test.test").await.unwrap_err();
    assert!(matches!(nosuch, KerberosError::ServicePrincipalUnknown { .. }), "{nosuch}");
    assert!(nosuch.to_string().contains("cifs/nosuch.smb3test.test@SMB3TEST.TEST"), "{nosuch}");
}
