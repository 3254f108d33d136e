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

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use smb3::auth::ccache::Ccache;
use smb3::auth::kdc::{request_service_ticket, request_tgt, KdcConfig, KerberosError};
use smb3::{
    CcacheBytes, Client, ClientOptions, Credentials, EncryptionPolicy, KerberosCredentials, NtStatus, SecurityMechanism,
};
use smb3_csi::csi::proto::NodeStageVolumeRequest;
use smb3_testkit::AdDc;

use crate::node::{publish_request, rwx, unpublish_unstage, NodePlugin, TestVolume};

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
    let wrong = request_tgt(&config(dc), dc.user(), &smb3_testkit::run_log::test_password("not-the-password-1A"))
        .await
        .unwrap_err();
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
    smb3_testkit::run_log::register_ccache(&bytes);
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
        password: smb3_testkit::run_log::test_password("not-the-password-1A"),
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

/// The DC's krb5.conf asking for `lifetime` tickets (`ticket_lifetime`, which
/// the Samba KDC honours below its 10-hour policy; Samba's own
/// `kdc:user ticket lifetime` takes whole hours only).
fn short_ticket_conf(dc: &AdDc, lifetime: &str) -> std::path::PathBuf {
    let conf = dc.scratch_path(&format!("short-{lifetime}-{}.conf", std::process::id()));
    let mut text = std::fs::read_to_string(dc.krb5_conf()).unwrap();
    text.push_str(&format!("\n[libdefaults]\nticket_lifetime = {lifetime}\n"));
    std::fs::write(&conf, text).unwrap();
    conf
}

/// A TGT and a service ticket, or why the KDC refused, asking for `secs`-long
/// tickets (printed: what the KDC does with short lifetimes is a measurement).
async fn ask_for_tickets(dc: &AdDc, secs: u64) -> Result<(u32, u32), KerberosError> {
    let kdc = KdcConfig { ticket_lifetime: Duration::from_secs(secs), ..config(dc) };
    let tgt = request_tgt(&kdc, dc.user(), dc.password()).await?;
    let cifs = request_service_ticket(&kdc, &tgt, "cifs", &dc.server_name()).await?;
    let lives = (tgt.end_time - tgt.start_time, cifs.end_time - cifs.start_time);
    eprintln!("asked for {secs} s tickets: TGT {} s, cifs {} s", lives.0, lives.1);
    Ok(lives)
}

/// A password logon's ticket lifetime for the renewal test: the Samba 4.17
/// KDC refuses a TGS request whose TGT has 120 s or less left
/// (KRB_AP_ERR_TKT_EXPIRED; measured with MIT kinit and kvno too: a 121 s TGT
/// gets a ticket at once, a 200 s one 70 s later but not 85 s later), and a
/// password logon asks for both tickets with the same lifetime, so 150 s
/// leaves 30 s for the two exchanges under load.
const PASSWORD_TICKET_LIFETIME: u64 = 150;
/// A credential cache's `cifs/` ticket lifetime for the renewal test: a
/// service ticket may end long before its TGT (AD's "maximum lifetime for
/// service ticket" policy), and a new one comes from the TGT, which then
/// still has far more than 120 s left.
const CCACHE_SERVICE_TICKET_LIFETIME: u64 = 30;

/// Tickets that end during a read/write loop, for a password logon (a
/// 150 s TGT and cifs ticket) and a credential cache (a 300 s TGT and a
/// 30 s cifs ticket our client was given): one client of each renews before
/// the end (re-authenticating in place), the other does not and is told
/// STATUS_NETWORK_SESSION_EXPIRED by Samba, which it heals in place. Samba
/// expires the session at the real end time of the ticket the KDC issued.
/// All keep their open handle throughout, and the loop sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_ending_mid_loop_are_renewed_without_an_application_error() {
    let Some(dc) = shared_dc().await else { return };
    let refused = ask_for_tickets(dc, 120).await.unwrap_err();
    assert!(matches!(refused, KerberosError::TicketExpired { .. }), "120 s tickets: {refused}");
    let (tgt_life, cifs_life) = ask_for_tickets(dc, PASSWORD_TICKET_LIFETIME).await.expect("150 s tickets");
    assert!(u64::from(tgt_life.max(cifs_life)) <= PASSWORD_TICKET_LIFETIME + 1, "{tgt_life} {cifs_life}");
    let password_conf = short_ticket_conf(dc, &format!("{PASSWORD_TICKET_LIFETIME}s"));

    // The cache a user would hand over: a TGT, and a cifs ticket that ends first.
    let tgt =
        request_tgt(&KdcConfig { ticket_lifetime: Duration::from_secs(300), ..config(dc) }, dc.user(), dc.password())
            .await
            .expect("300 s TGT");
    let short = KdcConfig { ticket_lifetime: Duration::from_secs(CCACHE_SERVICE_TICKET_LIFETIME), ..config(dc) };
    let cifs = request_service_ticket(&short, &tgt, "cifs", &dc.server_name()).await.expect("30 s cifs ticket");
    assert!(u64::from(cifs.end_time - cifs.start_time) <= CCACHE_SERVICE_TICKET_LIFETIME + 1, "{cifs:?}");
    let cache =
        Ccache { version: 0x0504, header: vec![], default_principal: tgt.client.clone(), credentials: vec![tgt, cifs] };
    let ccache_creds = Credentials::Kerberos(KerberosCredentials::Ccache(CcacheBytes::new(cache.encode())));

    let run = |creds: Credentials, conf: std::path::PathBuf, lifetime: u64, renewal: bool, name: &'static str| async move {
        let opts = ClientOptions { krb5_config: Some(conf), kerberos_renewal: renewal, ..dc_options(dc) };
        let client = Client::connect(&dc.server_name(), 445, &creds, &opts).await.expect("logon");
        let first_end = client.ticket_end().expect("a Kerberos ticket end");
        let tree = client.tree(dc.share_name()).await.unwrap();
        let file = tree.create(name).await.unwrap();
        let started = std::time::Instant::now();
        let (mut offset, mut slowest) = (0u64, Duration::ZERO);
        while started.elapsed() < Duration::from_secs(lifetime + 15) {
            let line = format!("{offset:08}\n");
            let t = std::time::Instant::now();
            file.write_at(offset, line.as_bytes()).await.expect("write across the ticket's end");
            let back = file.read_at(offset, line.len()).await.expect("read across the ticket's end");
            slowest = slowest.max(t.elapsed());
            assert_eq!(back, line.as_bytes());
            offset += line.len() as u64;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        file.close().await.expect("the handle survived");
        assert!(client.reauth_count() >= 1, "{name}: no re-authentication");
        assert_eq!(client.reconnect_count(), 0, "{name}: healed in place, not by reconnecting");
        assert!(client.ticket_end().unwrap() > first_end, "{name}: a new ticket");
        eprintln!(
            "{name}: {offset} bytes, {} re-authentications, slowest write+read {slowest:?}",
            client.reauth_count()
        );
    };
    let dc_conf = dc.krb5_conf().to_path_buf();
    let cc = CCACHE_SERVICE_TICKET_LIFETIME;
    tokio::join!(
        run(password_creds(dc), password_conf.clone(), PASSWORD_TICKET_LIFETIME, true, "password-renewed.txt"),
        run(password_creds(dc), password_conf, PASSWORD_TICKET_LIFETIME, false, "password-expired.txt"),
        run(ccache_creds.clone(), dc_conf.clone(), cc, true, "ccache-renewed.txt"),
        run(ccache_creds, dc_conf, cc, false, "ccache-expired.txt"),
    );
}

/// The base64 text of a `krb5cc_*` Secret; the cache is registered for the secret scan.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    smb3_testkit::run_log::register_ccache(bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The node plugin over its gRPC socket stages and publishes a volume on the
/// DC with a `krb5cc_0` Secret (an MIT ccache, base64) and with a password
/// Secret, both `sec=krb5` and `ip=` (the DC's name does not resolve); what a
/// pod writes through FUSE is on the DC's disk and smbclient (Kerberos) reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_stages_with_a_krb5cc_secret_and_with_a_password_secret() {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        assert!(!smb3_testkit::running_in_ci(), "CI=true: /dev/fuse and root are required");
        return;
    }
    let Some(dc) = shared_dc().await else { return };
    let options = ClientOptions {
        timeout: Duration::from_secs(20),
        krb5_config: Some(dc.krb5_conf().to_path_buf()),
        ..Default::default()
    };
    let mut plugin = NodePlugin::start_with(None, options).await;
    let ccache = dc.scratch_path(&format!("node-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let path = ccache.clone();
    tokio::task::spawn_blocking(move || dc.kinit(&path, &dc.user_principal(), dc.password())).await.unwrap().unwrap();
    let krb5cc = HashMap::from([("krb5cc_1000".to_string(), base64(&std::fs::read(&ccache).unwrap()))]);
    let password = HashMap::from([
        ("username".to_string(), dc.user().to_string()),
        ("password".to_string(), dc.password().expose().to_string()),
        ("domain".to_string(), smb3_testkit::ad_dc::NETBIOS_DOMAIN.to_string()),
    ]);
    let ip = format!("ip={}", dc.ip());
    for (name, secrets, flags) in [
        ("ccache", krb5cc, vec!["sec=krb5", "cruid=1000", ip.as_str()]),
        ("password", password, vec!["sec=krb5", ip.as_str()]),
    ] {
        let pv = format!("pvc-{:08x}", rand::random::<u32>());
        let base = format!("krb5-node-{name}");
        std::fs::create_dir_all(dc.share_path().join(&base).join(&pv)).unwrap();
        for d in [dc.share_path().join(&base), dc.share_path().join(&base).join(&pv)] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let host = dc.server_name();
        let volume_id = format!("v1|{host}|445|{}|{base}|{pv}|delete", dc.share_name());
        let context = HashMap::from([
            ("source".to_string(), format!("//{host}/{}/{base}", dc.share_name())),
            ("subdir".to_string(), pv.clone()),
        ]);
        let vol = TestVolume { pv: pv.clone(), volume_id, dir: format!("{base}/{pv}"), context };
        let staging = plugin.staging_path(&vol.volume_id);
        let target = plugin.target_path("0d6f2d7e-1b1c-4bb5-a7f1-6c3f3e2f9a11", &vol.pv);
        let cap = rwx(&flags);
        let mut stage = NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            publish_context: HashMap::new(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap.clone()),
            secrets,
            volume_context: vol.context.clone(),
        };
        plugin.node.node_stage_volume(stage.clone()).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        plugin.node.node_publish_volume(publish_request(&vol, &staging, &target, cap.clone(), false)).await.unwrap();
        let t = target.clone();
        let body = format!("pod wrote this over Kerberos ({name})\n");
        let b = body.clone();
        tokio::task::spawn_blocking(move || std::fs::write(t.join("pod.txt"), b)).await.unwrap().unwrap();
        let on_disk = std::fs::read_to_string(dc.share_path().join(&vol.dir).join("pod.txt")).unwrap();
        assert_eq!(on_disk, body, "{name}");
        let witness = dc.scratch_path(&format!("node-{name}.out"));
        let (c, cmd) = (ccache.clone(), format!("get {}/pod.txt {}", vol.dir, witness.display()));
        tokio::task::spawn_blocking(move || dc.smbclient_krb5(&c, &cmd)).await.unwrap().expect("smbclient");
        assert_eq!(std::fs::read_to_string(&witness).unwrap(), body);
        unpublish_unstage(&mut plugin, &vol, &target, &staging).await;

        // The secrets never show in an error: a Secret with a garbled ccache is named by its key only.
        if name == "ccache" {
            stage.secrets = HashMap::from([("krb5cc_1000".to_string(), "bm90IGEgY2NhY2hl".to_string())]);
            let e = plugin.node.node_stage_volume(stage).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("krb5cc_1000") && !e.message().contains("bm90"), "{}", e.message());
        }
    }
    plugin.stop().await;
}

/// The controller over its gRPC socket creates and deletes volumes on the
/// DC with a `krb5cc_<uid>` Secret and with a password Secret. The DC's name
/// does not resolve on this machine: the StorageClass `mountOptions` give
/// `ip=` (recorded in the volume id, since DeleteVolume carries no mount
/// options); the SPN is `cifs/dc1.smb3test.test` from the `source`. Without
/// `ip=` the same request fails on the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_creates_and_deletes_with_krb5cc_and_password_secrets() {
    use crate::common::csi::{create_request, delete, provision, Claim, Plugin, StorageClass};
    let Some(dc) = shared_dc().await else { return };
    let options = ClientOptions {
        timeout: Duration::from_secs(20),
        krb5_config: Some(dc.krb5_conf().to_path_buf()),
        ..Default::default()
    };
    let mut plugin = Plugin::start_with(options).await;
    let ccache = dc.scratch_path(&format!("controller-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let path = ccache.clone();
    tokio::task::spawn_blocking(move || dc.kinit(&path, &dc.user_principal(), dc.password())).await.unwrap().unwrap();
    let krb5cc = HashMap::from([("krb5cc_0".to_string(), base64(&std::fs::read(&ccache).unwrap()))]);
    let password = HashMap::from([
        ("username".to_string(), dc.user().to_string()),
        ("password".to_string(), dc.password().expose().to_string()),
        ("domain".to_string(), dc.realm().to_string()),
    ]);
    for (name, secret) in [("krb5cc", krb5cc), ("password", password)] {
        let base = format!("krb5-controller-{name}");
        std::fs::create_dir_all(dc.share_path().join(&base)).unwrap();
        std::fs::set_permissions(dc.share_path().join(&base), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut class = StorageClass {
            parameters: Default::default(),
            mount_options: vec!["sec=krb5".into(), format!("ip={}", dc.ip())],
            provisioner_secret: Some(secret),
        };
        class.parameters.insert("source".into(), format!("//{}/{}/{base}", dc.server_name(), dc.share_name()));
        for role in ["provisioner", "node-stage"] {
            class.parameters.insert(format!("csi.storage.k8s.io/{role}-secret-name"), "krb5".into());
            class.parameters.insert(format!("csi.storage.k8s.io/{role}-secret-namespace"), "default".into());
        }
        let claim = Claim::new("team", name, 1 << 30);
        let unresolved = StorageClass { mount_options: vec!["sec=krb5".into()], ..class.clone() };
        let e = provision(&mut plugin.controller, create_request(&unresolved, &claim)).await.unwrap_err();
        assert!(e.message().contains(&dc.server_name()), "{name}: without ip=: {e:?}");
        let volume = provision(&mut plugin.controller, create_request(&class, &claim))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(volume.volume_id.ends_with(&format!("|{}", dc.ip())), "{name}: {}", volume.volume_id);
        let dir = dc.share_path().join(&base).join(claim.pv_name());
        assert!(dir.is_dir(), "{name}: {} not created", dir.display());
        delete(&mut plugin.controller, &volume.volume_id, &class).await.unwrap();
        assert!(!dir.exists(), "{name}: {} not deleted", dir.display());
    }
    plugin.stop().await;
}

/// `smb3-csi smb` reads the credential cache `KRB5CCNAME` names, as smbclient
/// does, and reaches the DC at `--ip` under its name; `info` says Kerberos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_cli_logs_on_with_the_krb5ccname_cache() {
    let Some(dc) = shared_dc().await else { return };
    let ccache = dc.scratch_path(&format!("cli-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let out = tokio::task::spawn_blocking(move || {
        dc.kinit(&ccache, &dc.user_principal(), dc.password()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
            .args(["smb", "--sec", "krb5", "--ip", &dc.ip().to_string()])
            .arg(format!("//{}/{}", dc.server_name(), dc.share_name()))
            .arg("info")
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .env("KRB5_CONFIG", dc.krb5_conf())
            .env_remove("SMB_USERNAME")
            .output()
            .unwrap();
        smb3_testkit::run_log::register_ccache(&std::fs::read(&ccache).unwrap_or_default());
        smb3_testkit::run_log::record_output("cli", &out);
        out
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("auth:          kerberos") && stdout.contains("encrypted:     yes"), "{stdout}");
}

/// A node whose clock is an hour off (libfaketime, from the `faketime`
/// package scripts/setup.sh installs) gets a one-line "clock skew" error
/// from the KDC, with a ccache (`KRB5CCNAME`: the TGS exchange) and with a
/// password (the AS exchange's encrypted timestamp), and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_is_named_as_clock_skew() {
    let faketime = Path::new("/usr/bin/faketime");
    if !faketime.exists() {
        assert!(!smb3_testkit::running_in_ci(), "CI=true: faketime is required (scripts/setup.sh installs it)");
        eprintln!("faketime not installed: skipping");
        return;
    }
    let Some(dc) = shared_dc().await else { return };
    let ccache = dc.scratch_path(&format!("skew-{}.ccache", std::process::id()));
    let _ = std::fs::remove_file(&ccache);
    let lines = tokio::task::spawn_blocking(move || {
        dc.kinit(&ccache, &dc.user_principal(), dc.password()).unwrap();
        let smb = |offset: &str, ccache: Option<&Path>| {
            let mut cmd = std::process::Command::new(faketime);
            cmd.args(["-f", offset, env!("CARGO_BIN_EXE_smb3-csi"), "smb", "--sec", "krb5", "--ip"])
                .arg(dc.ip().to_string())
                .arg(format!("//{}/{}", dc.server_name(), dc.share_name()))
                .arg("info")
                .env("KRB5_CONFIG", dc.krb5_conf())
                .env_remove("KRB5CCNAME");
            match ccache {
                Some(path) => cmd
                    .env("KRB5CCNAME", format!("FILE:{}", path.display()))
                    .env_remove("SMB_USERNAME")
                    .env_remove("SMB_PASSWORD"),
                None => cmd.env("SMB_USERNAME", dc.user()).env("SMB_PASSWORD", dc.password().expose()),
            };
            let out = cmd.output().unwrap();
            assert!(!out.status.success(), "{offset}: {}", String::from_utf8_lossy(&out.stdout));
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        };
        [smb("+1h", Some(&ccache)), smb("-1h", None)]
    })
    .await
    .unwrap();
    for line in lines {
        assert!(line.contains("clock skew") && line.contains("KRB_AP_ERR_SKEW"), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.contains(dc.password().expose()), "{line}");
    }
}
