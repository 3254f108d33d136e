//! Directory attributes answered without the server within the attribute TTL (`actimeo`).
//!
//! Every create, unlink or rename in a directory makes the kernel drop the directory's cached attributes,
//! and with `default_permissions` the next path walk through it asks for them again (to check the caller's
//! search permission). Without this, a `cp -r` into the mount costs a stat of the target directory per
//! file, a round trip as long as the CREATE itself. The modes and owners the kernel checks come from the
//! mount options, not from the server, so they cannot have changed; what a change by this node does change
//! on the server (the directory's modification and change times) is applied here as well, with this node's
//! clock, as the server stamps them. Another client's change to the directory shows once the TTL since the
//! attributes were fetched has passed, as with every attribute the kernel caches.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use smb3::Metadata;

/// Directories remembered at most: beyond it expired entries are dropped, then all of them.
const MAX_DIRS: usize = 1024;

/// The attributes of one directory as fetched at `since`, with this node's changes applied after it.
struct Fetched {
    since: Instant,
    metadata: Metadata,
}

/// Directory attributes by inode number.
pub struct DirAttrs {
    ttl: Duration,
    dirs: HashMap<u64, Fetched>,
}

impl DirAttrs {
    /// Attributes kept for `ttl` (zero: never used).
    pub fn new(ttl: Duration) -> DirAttrs {
        DirAttrs { ttl, dirs: HashMap::new() }
    }

    /// The server answered `metadata` for inode `ino` at `at` (anything but a directory is ignored).
    pub fn fetched(&mut self, ino: u64, metadata: &Metadata, at: Instant) {
        if self.ttl.is_zero() || !metadata.is_dir() {
            return;
        }
        if self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&ino) {
            let ttl = self.ttl;
            self.dirs.retain(|_, f| at.saturating_duration_since(f.since) < ttl);
            if self.dirs.len() >= MAX_DIRS {
                self.dirs.clear();
            }
        }
        self.dirs.insert(ino, Fetched { since: at, metadata: metadata.clone() });
    }

    /// The attributes of directory `ino` at `now`, if fetched within the TTL.
    pub fn get(&self, ino: u64, now: Instant) -> Option<Metadata> {
        let f = self.dirs.get(&ino)?;
        (now.saturating_duration_since(f.since) < self.ttl).then(|| f.metadata.clone())
    }

    /// This node changed an entry of directory `ino` at `when` (a create, unlink, rename or link there): the
    /// server moved its modification and change times to then.
    pub fn entry_changed(&mut self, ino: u64, when: SystemTime) {
        if let Some(f) = self.dirs.get_mut(&ino) {
            let t = smb3::wire::info::system_time_to_filetime(when);
            f.metadata.modified = f.metadata.modified.max(t);
            f.metadata.changed = f.metadata.changed.max(t);
        }
    }

    /// What is known of `ino` no longer holds (its attributes were set, or it was removed).
    pub fn forget(&mut self, ino: u64) {
        self.dirs.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb3::wire::create::attributes;

    const TTL: Duration = Duration::from_secs(1);

    fn dir(modified: u64) -> Metadata {
        Metadata {
            size: 0,
            allocation_size: 0,
            attributes: attributes::DIRECTORY,
            file_id: 7,
            links: 1,
            created: 1,
            accessed: 1,
            modified,
            changed: modified,
        }
    }

    #[test]
    fn a_directory_is_answered_within_the_ttl_and_files_never() {
        let t0 = Instant::now();
        let mut c = DirAttrs::new(TTL);
        c.fetched(2, &dir(10), t0);
        assert_eq!(c.get(2, t0 + Duration::from_millis(999)), Some(dir(10)));
        assert_eq!(c.get(2, t0 + TTL), None, "expired attributes answer nothing");
        let file = Metadata { attributes: attributes::ARCHIVE, ..dir(10) };
        c.fetched(3, &file, t0);
        assert_eq!(c.get(3, t0), None);
        c.forget(2);
        assert_eq!(c.get(2, t0), None);
        let mut off = DirAttrs::new(Duration::ZERO);
        off.fetched(2, &dir(10), t0);
        assert_eq!(off.get(2, t0), None, "actimeo=0 keeps nothing");
    }

    #[test]
    fn this_nodes_changes_move_the_times_forward_only() {
        let t0 = Instant::now();
        let mut c = DirAttrs::new(TTL);
        let now = SystemTime::now();
        let stamped = smb3::wire::info::system_time_to_filetime(now);
        c.fetched(2, &dir(5), t0);
        c.entry_changed(2, now);
        let m = c.get(2, t0).unwrap();
        assert_eq!((m.modified, m.changed), (stamped, stamped));
        // A clock behind the server's time never moves a time back.
        c.fetched(2, &dir(stamped + 100), t0);
        c.entry_changed(2, now);
        assert_eq!(c.get(2, t0).unwrap().modified, stamped + 100);
        // A change in a directory not known adds nothing.
        c.entry_changed(9, now);
        assert_eq!(c.get(9, t0), None);
    }
}
