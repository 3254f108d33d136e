//! `smb3-csi smb`: a small SMB client for troubleshooting shares and
//! checking what the driver sees.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use smb3::{
    join_path, parse_cipher_list, parse_dialect, CipherId, Client, ClientOptions, Credentials, Dialect,
    EncryptionPolicy, Error, KerberosCredentials, OpenOptions, SecurityMechanism, ShareTarget, Tree,
};

#[derive(Args)]
#[command(after_help = "Credentials come from --credentials FILE (mount.cifs format: username=, password=, domain=), \
from the SMB_USERNAME, SMB_PASSWORD and SMB_DOMAIN environment variables, or (Kerberos) from the credential cache \
KRB5CCNAME names (FILE: caches; preferred with --sec krb5); never from the command line. krb5.conf comes from \
KRB5_CONFIG or /etc/krb5.conf.\n\n\
Example: smb3-csi smb --credentials /etc/smb-creds //fileserver/share put ./backup.tar backups/backup.tar")]
pub struct SmbArgs {
    /// mount.cifs-style credentials file.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Log on as guest (only when asked for).
    #[arg(long, conflicts_with_all = ["credentials", "anonymous"])]
    guest: bool,
    /// Anonymous (null) session (only when asked for).
    #[arg(long, conflicts_with = "credentials")]
    anonymous: bool,
    /// required (default), if-supported or off.
    #[arg(long, default_value = "required", value_parser = parse_policy)]
    encryption: EncryptionPolicy,
    /// Ciphers offered for SMB 3.1.1, in preference order, e.g. aes-256-gcm,aes-128-gcm.
    #[arg(long, value_parser = parse_ciphers)]
    ciphers: Option<Ciphers>,
    /// Highest dialect to offer: 2.1, 3.0, 3.0.2 or 3.1.1.
    #[arg(long, value_parser = parse_dialect, default_value = "3.1.1")]
    max_dialect: Dialect,
    /// Lowest dialect to accept.
    #[arg(long, value_parser = parse_dialect, default_value = "2.1")]
    min_dialect: Dialect,
    /// Authentication: krb5 (Kerberos only), ntlmssp (NTLMv2 only); unset: Kerberos when the server offers it
    /// and the credentials allow.
    #[arg(long, value_parser = parse_sec, default_value = "auto")]
    sec: SecurityMechanism,
    /// Connect to this address instead of resolving HOST (cifs ip=); HOST still names the Kerberos principal.
    #[arg(long, value_name = "ADDR")]
    ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    deadlines: super::deadlines::DeadlineArgs,
    /// //HOST[:PORT]/SHARE[/PATH]; remote paths below are relative to PATH.
    target: String,
    #[command(subcommand)]
    command: SmbCommand,
}

#[derive(Clone, Debug)]
struct Ciphers(Vec<CipherId>);

fn parse_ciphers(s: &str) -> Result<Ciphers, String> {
    parse_cipher_list(s).map(Ciphers)
}

fn parse_policy(s: &str) -> Result<EncryptionPolicy, String> {
    s.parse()
}

fn parse_sec(s: &str) -> Result<SecurityMechanism, String> {
    s.parse()
}

#[derive(Subcommand)]
enum SmbCommand {
    /// Negotiated dialect, cipher, signing, and server limits.
    Info,
    /// List a directory.
    Ls {
        #[arg(default_value = "")]
        path: String,
    },
    /// Attributes of a file or directory.
    Stat { path: String },
    /// Download REMOTE to LOCAL.
    Get { remote: String, local: PathBuf },
    /// Upload LOCAL to REMOTE (replacing it).
    Put { local: PathBuf, remote: String },
    /// Create a directory (and missing parents with -p).
    Mkdir {
        path: String,
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Delete a file.
    Rm {
        path: String,
        /// Delete a directory tree.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Delete an empty directory.
    Rmdir { path: String },
    /// Rename FROM to TO (replacing TO if it is a file).
    Mv { from: String, to: String },
    /// Space on the share.
    Df,
}

pub async fn run(args: SmbArgs) -> Result<(), String> {
    let target = ShareTarget::parse(&args.target).map_err(|e| e.to_string())?;
    let ccache = || KerberosCredentials::from_krb5ccname().transpose().map_err(|e| e.to_string());
    let creds = if args.guest {
        Credentials::Guest
    } else if args.anonymous {
        Credentials::Anonymous
    } else if let Some(k) = ccache()?.filter(|_| args.sec == SecurityMechanism::Kerberos) {
        Credentials::Kerberos(k)
    } else if let Some(file) = &args.credentials {
        Credentials::from_file(file).map_err(|e| e.to_string())?
    } else if let Some(user) = Credentials::from_env() {
        user
    } else {
        Credentials::Kerberos(ccache()?.ok_or_else(|| {
            "no credentials: use --credentials FILE, set SMB_USERNAME and SMB_PASSWORD, or KRB5CCNAME for Kerberos"
                .to_string()
        })?)
    };
    let mut opts = args.deadlines.apply(ClientOptions {
        encryption: args.encryption,
        max_dialect: args.max_dialect,
        min_dialect: args.min_dialect,
        security: args.sec,
        connect_address: args.ip.map(|ip| ip.to_string()),
        ..Default::default()
    });
    if let Some(c) = args.ciphers {
        opts.ciphers = c.0;
    }
    let (client, tree) = Client::connect_share(&target, &creds, &opts)
        .await
        .map_err(|e| format!("connect {target} as {}: {}", creds.display_name(), strip_op(&e)))?;
    let at = |p: &str| join_path(&target.path, p);
    let shown = |p: &str| target.join(p).to_string();
    let result = match args.command {
        SmbCommand::Info => {
            print_info(&client, &tree);
            Ok(())
        }
        SmbCommand::Ls { path } => ls(&tree, &at(&path)).await.map_err(|e| fail("ls", &shown(&path), e)),
        SmbCommand::Stat { path } => stat(&tree, &at(&path)).await.map_err(|e| fail("stat", &shown(&path), e)),
        SmbCommand::Get { remote, local } => {
            get(&tree, &at(&remote), &local).await.map_err(|e| fail("get", &shown(&remote), e))
        }
        SmbCommand::Put { local, remote } => {
            put(&tree, &local, &at(&remote)).await.map_err(|e| fail("put", &shown(&remote), e))
        }
        SmbCommand::Mkdir { path, parents } => {
            let r = if parents { tree.mkdir_all(&at(&path)).await } else { tree.mkdir(&at(&path)).await };
            r.map_err(|e| fail("mkdir", &shown(&path), e))
        }
        SmbCommand::Rm { path, recursive } => {
            let r = if recursive {
                match tree.remove_tree(&at(&path)).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        Err(Error::Status { op: String::new(), status: smb3::NtStatus::OBJECT_NAME_NOT_FOUND })
                    }
                    Err(e) => Err(e),
                }
            } else {
                tree.remove_file(&at(&path)).await
            };
            r.map_err(|e| fail("rm", &shown(&path), e))
        }
        SmbCommand::Rmdir { path } => tree.remove_dir(&at(&path)).await.map_err(|e| fail("rmdir", &shown(&path), e)),
        SmbCommand::Mv { from, to } => {
            tree.rename(&at(&from), &at(&to), true).await.map_err(|e| fail("mv", &shown(&from), e))
        }
        SmbCommand::Df => df(&tree).await.map_err(|e| fail("df", &target.to_string(), e)),
    };
    let _ = tree.disconnect().await;
    let _ = client.logoff().await;
    result
}

/// For status errors, the operation is named by the caller; keep only the status.
fn strip_op(e: &Error) -> String {
    match e {
        Error::Status { status, .. } => status.to_string(),
        Error::EncryptionUnavailable(_) => {
            format!("{e} (--encryption if-supported or off relaxes this; only on a network you trust)")
        }
        other => other.to_string(),
    }
}

fn fail(op: &str, target: &str, e: Error) -> String {
    format!("{op} {target}: {}", strip_op(&e))
}

fn print_info(client: &Client, tree: &Tree) {
    let i = client.info();
    println!("server:        {}", i.server);
    println!("share:         {}", tree.share());
    println!("dialect:       {}", i.dialect);
    println!("encrypted:     {}", if i.encrypted { "yes" } else { "no" });
    println!("cipher:        {}", i.cipher.map(|c| c.to_string()).unwrap_or_else(|| "none".into()));
    println!("signing:       {}", i.signing.map(|s| s.to_string()).unwrap_or_else(|| "none".into()));
    println!("guest:         {}", if i.guest { "yes" } else { "no" });
    println!("auth:          {}", if i.kerberos { "kerberos" } else { "ntlmv2" });
    println!("max read:      {}", i.max_read);
    println!("max write:     {}", i.max_write);
    println!("max transact:  {}", i.max_transact);
}

async fn ls(tree: &Tree, path: &str) -> Result<(), Error> {
    let mut entries = tree.read_dir(path).await?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let kind = if e.metadata.is_dir() { 'd' } else { '-' };
        let when = e.metadata.modified_time().map(format_time).unwrap_or_default();
        let slash = if e.metadata.is_dir() { "/" } else { "" };
        println!("{kind} {:>14} {when} {}{slash}", e.metadata.size, e.name);
    }
    Ok(())
}

async fn stat(tree: &Tree, path: &str) -> Result<(), Error> {
    let m = tree.stat(path).await?;
    println!("type:       {}", if m.is_dir() { "directory" } else { "file" });
    println!("size:       {}", m.size);
    println!("allocated:  {}", m.allocation_size);
    println!("attributes: 0x{:08x}", m.attributes);
    println!("file id:    {}", m.file_id);
    println!("links:      {}", m.links);
    println!("modified:   {}", m.modified_time().map(format_time).unwrap_or_default());
    println!("changed:    {}", m.changed_time().map(format_time).unwrap_or_default());
    println!("accessed:   {}", m.accessed_time().map(format_time).unwrap_or_default());
    println!("created:    {}", m.created_time().map(format_time).unwrap_or_default());
    Ok(())
}

/// The download's chunks are written by a thread of their own with plain write(2)s of the decrypted responses:
/// no buffer in between (a tokio file would copy each chunk once more for its blocking thread).
async fn get(tree: &Tree, remote: &str, local: &std::path::Path) -> Result<(), Error> {
    use std::io::Write;
    let file = tree.open(remote, OpenOptions::new().read(true)).await?;
    let started = std::time::Instant::now();
    let writing = |source| Error::LocalIo { op: format!("writing {}", local.display()), source };
    let mut out = std::fs::File::create(local)
        .map_err(|source| Error::LocalIo { op: format!("creating {}", local.display()), source })?;
    let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        while let Some(chunk) = received.blocking_recv() {
            out.write_all(&chunk)?;
        }
        Ok(())
    });
    let downloaded = file.download_into(chunks).await;
    let written = writer.await.map_err(|e| writing(std::io::Error::other(e.to_string())))?;
    // The writer's own error explains a download cut short by it.
    written.map_err(writing)?;
    let n = downloaded?;
    file.close().await?;
    report(n, started);
    Ok(())
}

/// Chunks read ahead of the local writes at most (each up to the read size, 1 MiB or more).
const WRITE_QUEUE: usize = 4;

async fn put(tree: &Tree, local: &std::path::Path, remote: &str) -> Result<(), Error> {
    let mut input = tokio::fs::File::open(local)
        .await
        .map_err(|source| Error::LocalIo { op: format!("opening {}", local.display()), source })?;
    let started = std::time::Instant::now();
    let file = tree.create(remote).await?;
    let n = file.upload(&mut input).await?;
    file.close().await?;
    report(n, started);
    Ok(())
}

fn report(bytes: u64, started: std::time::Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    eprintln!("{bytes} bytes in {secs:.2}s ({:.1} MiB/s)", bytes as f64 / secs / 1048576.0);
}

async fn df(tree: &Tree) -> Result<(), Error> {
    let s = tree.statfs().await?;
    println!("total:     {}", s.total_bytes);
    println!("available: {}", s.available_bytes);
    println!("free:      {}", s.free_bytes);
    println!("block:     {}", s.block_size);
    Ok(())
}

fn format_time(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d, hh, mm, ss) = smb3::calendar::civil_from_unix(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_time(std::time::UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(
            format_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(19_723 * 86_400)),
            "2024-01-01 00:00:00"
        );
        assert_eq!(format_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_399)), "1970-01-01 23:59:59");
    }
}
