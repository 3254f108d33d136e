//! The keeper: a small long-lived process that holds a duplicate of every live mount's /dev/fuse
//! descriptor (received over a unix socket with SCM_RIGHTS) and the node plugin's record of that mount, so
//! that a crash, a restart or an upgrade of the plugin leaves the kernel's FUSE connections, and the pods'
//! volumes, alive for a successor to serve. See docs/restart-survival.md.
//!
//! - [`codec`]: the versioned, length-prefixed messages (pure).
//! - [`channel`]: frames and descriptors over a unix stream socket, peer credential check.
//! - [`server`]: the keeper process itself (`smb3-csi keeper`).
//! - [`client`]: the plugin's requests (register, forget, fetch, ping, start one if none answers).
//!
//! The same framing carries the plugin-to-plugin handover ([`codec::Message::HandOver`]).

pub mod channel;
pub mod client;
pub mod codec;
pub mod handover;
pub mod server;

pub use channel::{Channel, ChannelError};
pub use client::{ClientError, HeldMount, KeeperStatus};
pub use codec::{CodecError, Message};
pub use server::{KeeperError, KeeperOptions};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A keeper on a temporary socket, stopped on drop.
    struct Running {
        socket: std::path::PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Result<(), KeeperError>>>,
        _dir: tempfile::TempDir,
    }

    impl Running {
        fn start(idle_exit: Option<Duration>) -> Running {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("keeper/keeper.sock");
            let stop = Arc::new(AtomicBool::new(false));
            let options = KeeperOptions { socket: socket.clone(), idle_exit };
            let flag = stop.clone();
            let thread = std::thread::spawn(move || server::run(&options, &flag));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while client::ping(&socket).is_err() {
                assert!(std::time::Instant::now() < deadline, "keeper did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            Running { socket, stop, thread: Some(thread), _dir: dir }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn file_with(text: &str) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn contents(fd: std::os::fd::OwnedFd) -> String {
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn holds_descriptors_across_the_registrant_closing_them_and_gives_them_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the keeper only answers root");
            return;
        }
        let keeper = Running::start(None);
        let (a, b) = (file_with("first"), file_with("second"));
        client::register(&keeper.socket, "/mnt/a", b"record a".to_vec(), a.as_fd()).unwrap();
        client::register(&keeper.socket, "/mnt/b", b"record b".to_vec(), b.as_fd()).unwrap();
        // The plugin's copies go (as when it is SIGKILLed): the keeper's keep the files open.
        drop((a, b));
        assert_eq!(client::ping(&keeper.socket).unwrap().mounts, 2);
        let held = client::fetch(&keeper.socket).unwrap();
        let got: Vec<(String, Vec<u8>, String)> =
            held.into_iter().map(|h| (h.key, h.record, contents(h.device))).collect();
        assert_eq!(
            got,
            [
                ("/mnt/a".to_string(), b"record a".to_vec(), "first".to_string()),
                ("/mnt/b".to_string(), b"record b".to_vec(), "second".to_string())
            ]
        );
        // Fetch does not take them away; forget does; re-registering replaces.
        assert_eq!(client::fetch(&keeper.socket).unwrap().len(), 2);
        client::forget(&keeper.socket, "/mnt/a").unwrap();
        client::forget(&keeper.socket, "/mnt/never").unwrap();
        client::register(&keeper.socket, "/mnt/b", b"newer".to_vec(), file_with("third").as_fd()).unwrap();
        let held = client::fetch(&keeper.socket).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].record, b"newer");
        assert_eq!(contents(held.into_iter().next().unwrap().device), "third");
    }

    #[test]
    fn socket_and_directory_are_private_and_a_second_keeper_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the keeper only answers root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let keeper = Running::start(None);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keeper.socket), 0o600);
        assert_eq!(mode(keeper.socket.parent().unwrap()), 0o700);
        let second = KeeperOptions { socket: keeper.socket.clone(), idle_exit: None };
        let err = server::run(&second, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, KeeperError::InUse(_)), "{err}");
        // A request a keeper does not serve is refused with a reason, not a dropped connection.
        let mut channel = Channel::connect(&keeper.socket).unwrap();
        channel.send(&Message::HandOver, None).unwrap();
        assert!(matches!(channel.recv().unwrap().unwrap().0, Message::Failed { .. }));
    }

    #[test]
    fn an_idle_keeper_without_mounts_exits_and_one_holding_mounts_stays() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the keeper only answers root");
            return;
        }
        let mut keeper = Running::start(Some(Duration::from_millis(300)));
        let held = file_with("x");
        client::register(&keeper.socket, "/mnt/a", vec![], held.as_fd()).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(client::ping(&keeper.socket).unwrap().mounts, 1, "a keeper holding a mount stays");
        client::forget(&keeper.socket, "/mnt/a").unwrap();
        let thread = keeper.thread.take().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() {
            assert!(std::time::Instant::now() < deadline, "an idle keeper did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().unwrap().unwrap();
        assert!(!keeper.socket.exists(), "the socket is removed on exit");
    }
}
