//! Helpers shared by integration tests.

pub mod csi;

/// A client logged on to the shared Samba, and a tree of its share.
pub async fn connect(samba: &smb3_testkit::samba::Samba) -> (smb3::Client, smb3::Tree) {
    let creds = smb3::Credentials::user(samba.user(), "", samba.password().clone());
    let client = smb3::Client::connect(samba.host(), samba.port(), &creds, &smb3::ClientOptions::default())
        .await
        .expect("connect");
    let tree = client.tree(samba.share_name()).await.expect("tree");
    (client, tree)
}
