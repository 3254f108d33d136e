//! Our Kerberos client pieces against the test bed's AD DC (issue #16).
//!
//! The AS exchange gets a TGT from the Samba KDC with a password, and the
//! TGS exchange a `cifs/` ticket with it; MIT's smbclient then logs on to the
//! DC's share (Kerberos required, encryption required) with nothing but our
//! TGT, or nothing but our service ticket, in a ccache our codec wrote: the
//! independent proof that the tickets and their session keys are right.
//! Each failure names itself in one line.
//!
//! Then our own client logs on with Kerberos (SPNEGO, AP-REQ, mutual
//! authentication, encryption required) with a password and with a ccache
//! MIT kinit wrote; NTLM is blocked on this DC, so nothing passes by falling back.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use smb3::auth::ccache::Ccache;
use smb3::auth::kdc::{request_service_ticket, request_tgt, KdcConfig, KerberosError};
use smb3::{
    CcacheBytes, Client, ClientOptions, Credentials, EncryptionPolicy, KerberosCredentials, NtStatus, Secret,
    SecurityMechanism,
};
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
    KdcConfig {
        realm: dc.realm().to_string(),
        kdcs: vec![dc.kdc_addr()],
        timeout: Duration::from_secs(10),
        ticket_lifetime: smb3::auth::kdc::DEFAULT_TICKET_LIFETIME,
    }
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

/// Client options that reach the DC at its address under its name (cifs
/// `ip=`), with the DC's krb5.conf.
fn dc_options(dc: &AdDc) -> ClientOptions {
    ClientOptions {
        krb5_config: Some(dc.krb5_conf().to_path_buf()),
        connect_address: Some(dc.ip().to_string()),
        encryption: EncryptionPolicy::Required,
        ..Default::default()
    }
}

fn password_creds(dc: &AdDc) -> Credentials {
    Credentials::Kerberos(KerberosCredentials::Password {
        user: dc.user().to_string(),
        realm: dc.realm().to_string(),
        password: dc.password().clone(),
    })
}

/// Writes through our Kerberos session, checks the session facts, and has
/// smbclient (Kerberos, encryption required) read what we wrote.
async fn write_and_witness(dc: &'static AdDc, client: &Client, name: &str) {
    let info = client.info();
    assert!(info.kerberos && info.encrypted && !info.guest, "{info:?}");
    let tree = client.tree(dc.share_name()).await.expect("tree connect");
    let body = format!("written by our Kerberos session as {name}\n");
    let file = tree.create(name).await.expect("create");
    file.write_at(0, body.as_bytes()).await.expect("write");
    assert_eq!(file.read_at(0, 4096).await.expect("read back"), body.as_bytes());
    file.close().await.expect("close");
    let ccache = dc.scratch_path(&format!("witness-{name}.ccache"));
    let _ = std::fs::remove_file(&ccache);
    let name = name.to_string();
    let got = tokio::task::spawn_blocking(move || {
        dc.kinit(&ccache, &dc.user_principal(), dc.password()).unwrap();
        let out = dc.scratch_path(&format!("witness-{name}.out"));
        dc.smbclient_krb5(&ccache, &format!("get {name} {}", out.display())).expect("smbclient get");
        std::fs::read_to_string(out).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(got, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_logs_on_with_a_password_through_kerberos() {
    let Some(dc) = shared_dc().await else { return };
    let client = Client::connect(&dc.server_name(), 445, &password_creds(dc), &dc_options(dc))
        .await
        .expect("Kerberos logon with a password");
    write_and_witness(dc, &client, "krb5-password.txt").await;

    // A plain user + password (the Secrets people have) with sec= unset:
    // Kerberos, because the server offers it and krb5.conf lists the realm's KDC.
    let user = Credentials::user(dc.user(), smb3_testkit::ad_dc::NETBIOS_DOMAIN, dc.password().clone());
    let client = Client::connect(&dc.server_name(), 445, &user, &dc_options(dc)).await.expect("sec= unset");
    write_and_witness(dc, &client, "krb5-user-auto.txt").await;
    // sec=ntlmssp insists on NTLM, which this DC blocks.
    let ntlm = ClientOptions { security: SecurityMechanism::Ntlm, ..dc_options(dc) };
    let err = Client::connect(&dc.server_name(), 445, &user, &ntlm).await.err().expect("NTLM is blocked");
    assert_eq!(err.status(), Some(NtStatus::NTLM_BLOCKED), "{err}");
    // sec=krb5 with a ccache-less guest is refused before anything is sent.
    let krb5 = ClientOptions { security: SecurityMechanism::Kerberos, ..dc_options(dc) };
    let err = Client::connect(&dc.server_name(), 445, &Credentials::Guest, &krb5).await.err().expect("guest");
    assert!(err.to_string().contains("sec=krb5 needs a user"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_logs_on_with_a_ccache_from_mit_kinit() {
    let Some(dc) = shared_dc().await else { return };
    let ccache = dc.scratch_path(&format!("kinit-for-us-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let path = ccache.clone();
    tokio::task::spawn_blocking(move || dc.kinit(&path, &dc.user_principal(), dc.password())).await.unwrap().unwrap();
    let bytes = std::fs::read(&ccache).unwrap();
    // The cache holds only the TGT: our client asks the KDC for the cifs ticket.
    let creds = Credentials::Kerberos(KerberosCredentials::Ccache(CcacheBytes::new(bytes.clone())));
    assert_eq!(creds.display_name(), dc.user_principal());
    assert!(!format!("{creds:?}").contains("krbtgt"), "{creds:?}");
    let krb5 = ClientOptions { security: SecurityMechanism::Kerberos, ..dc_options(dc) };
    let client = Client::connect(&dc.server_name(), 445, &creds, &krb5).await.expect("Kerberos logon with a ccache");
    write_and_witness(dc, &client, "krb5-ccache.txt").await;
    // KRB5CCNAME-style names read the same cache.
    let named = KerberosCredentials::from_ccache_name(&format!("FILE:{}", ccache.display())).unwrap();
    assert_eq!(Credentials::Kerberos(named), creds);
    let e = KerberosCredentials::from_ccache_name("KEYRING:persistent:0").unwrap_err();
    assert!(e.to_string().contains("use a FILE: cache"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_logon_failures_are_named_in_one_line() {
    let Some(dc) = shared_dc().await else { return };
    let connect = |creds: Credentials, opts: ClientOptions| async move {
        let e = Client::connect(&dc.server_name(), 445, &creds, &opts).await.err().expect("must fail");
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        line
    };
    let wrong = Credentials::Kerberos(KerberosCredentials::Password {
        user: dc.user().into(),
        realm: dc.realm().into(),
        password: Secret::new("not-the-password-1A"),
    });
    let line = connect(wrong, dc_options(dc)).await;
    assert!(line.contains("wrong password") && !line.contains("not-the-password"), "{line}");

    let unknown = Credentials::Kerberos(KerberosCredentials::Password {
        user: "nobody-here".into(),
        realm: dc.realm().into(),
        password: dc.password().clone(),
    });
    let line = connect(unknown, dc_options(dc)).await;
    assert!(line.contains("nobody-here@SMB3TEST.TEST is unknown"), "{line}");

    // No ticket: a cache whose only ticket is for another server, and no TGT.
    let ccache = dc.scratch_path(&format!("no-tgt-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let path = ccache.clone();
    tokio::task::spawn_blocking(move || dc.kinit(&path, &dc.user_principal(), dc.password())).await.unwrap().unwrap();
    let mut cache = Ccache::decode(&std::fs::read(&ccache).unwrap()).unwrap();
    let tgt = cache.tgt().unwrap().clone();
    cache.credentials.retain(|c| c.server.components[0] != "krbtgt");
    let only_config = Credentials::Kerberos(KerberosCredentials::Ccache(CcacheBytes::new(cache.encode())));
    let line = connect(only_config, dc_options(dc)).await;
    assert!(line.contains("no Kerberos ticket") && line.contains("cifs/dc1.smb3test.test"), "{line}");

    // Ticket expired: the cache's TGT has ended.
    let mut expired = tgt.clone();
    expired.end_time = expired.start_time + 1;
    cache.credentials = vec![expired];
    let line =
        connect(Credentials::Kerberos(KerberosCredentials::Ccache(CcacheBytes::new(cache.encode()))), dc_options(dc))
            .await;
    assert!(line.contains("has expired"), "{line}");

    // KDC down: a krb5.conf whose KDC port has nothing listening.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let conf = dc.scratch_path(&format!("kdc-down-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!("[libdefaults]\ndefault_realm = {0}\n[realms]\n{0} = {{\nkdc = 127.0.0.1:{port}\n}}\n", dc.realm()),
    )
    .unwrap();
    let down = ClientOptions { krb5_config: Some(conf), ..dc_options(dc) };
    let line = connect(password_creds(dc), down).await;
    assert!(line.contains("unreachable") && line.contains(&format!("127.0.0.1:{port}")), "{line}");
}
