//! Negative lookups answered without the server, within the attribute TTL (`actimeo`).
//!
//! The kernel looks a name up before it creates it, so a `cp -r` into a new directory would cost one failed
//! stat per file. This node knows every name of a directory it has just created (none) or just listed, and
//! every change it made there since (its own creates, unlinks, renames): for the attribute TTL after that
//! knowledge was taken, a name outside it is answered ENOENT without a round trip, as cifs and NFS cache
//! negative entries for `actimeo`. Another client's create in that window shows once the TTL has passed,
//! as its attribute changes do. Positive answers still go to the server (their attributes change with
//! every write; the kernel already caches them for the TTL from READDIRPLUS and LOOKUP).
//!
//! Names the server could match with a name of another spelling are never answered here: SMB compares
//! names without case (compared here as ASCII lowercase, so names with other characters are left to the
//! server), `name:stream` opens a stream of `name`, `~` may be an 8.3 alias, and Windows servers drop
//! trailing dots and spaces.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Directories known at most: beyond it expired knowledge is dropped, then all of it.
const MAX_DIRS: usize = 256;
/// A listing with more names than this is not remembered (its memory would outweigh the lookups saved).
const MAX_NAMES: usize = 16_384;

/// What the names of one directory were at `since`, with this node's changes applied after it.
struct Known {
    since: Instant,
    names: HashSet<String>,
}

/// The directories this node knows completely, by share path.
#[derive(Default)]
pub struct DirCache {
    ttl: Duration,
    dirs: HashMap<String, Known>,
}

/// The key a name is compared by, or `None` for a name only the server can judge (see the module doc).
fn key(name: &str) -> Option<String> {
    let plain = name.is_ascii() && !name.contains([':', '~']) && !name.ends_with(['.', ' ']);
    plain.then(|| name.to_ascii_lowercase())
}

/// A listed name as it is stored: names that are not plain are kept as a marker that matches nothing but
/// makes the listing still count as complete (they can only be looked up through the server anyway).
fn stored(name: &str) -> String {
    key(name).unwrap_or_else(|| format!("\0{name}"))
}

/// Splits a share path into its directory's key and its last name. Directories are known by their path in
/// ASCII lowercase (the same directory reached through another spelling is the same entry); a path with
/// other characters is never known (`None`).
fn split(path: &str) -> (Option<String>, &str) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    (dir_key(dir), name)
}

fn dir_key(dir: &str) -> Option<String> {
    dir.is_ascii().then(|| dir.to_ascii_lowercase())
}

impl DirCache {
    /// Knowledge kept for `ttl` (zero: never used).
    pub fn new(ttl: Duration) -> DirCache {
        DirCache { ttl, dirs: HashMap::new() }
    }

    /// Whether `path` is known not to exist at `now`.
    pub fn is_absent(&self, path: &str, now: Instant) -> bool {
        let (dir, name) = split(path);
        let (Some(known), Some(k)) = (dir.and_then(|d| self.dirs.get(&d)), key(name)) else { return false };
        now.saturating_duration_since(known.since) < self.ttl && !known.names.contains(&k)
    }

    /// Directory `dir` had exactly `names` when its listing was asked for at `asked`.
    pub fn listed<'a>(&mut self, dir: &str, names: impl ExactSizeIterator<Item = &'a str>, asked: Instant) {
        let Some(dir) = dir_key(dir) else { return };
        if self.ttl.is_zero() || names.len() > MAX_NAMES {
            self.dirs.remove(&dir);
            return;
        }
        let names = names.map(stored).collect();
        self.insert(dir, Known { since: asked, names });
    }

    /// This node created directory `dir` at `at`: it is empty. Its name now exists in its parent.
    pub fn made_dir(&mut self, dir: &str, at: Instant) {
        self.added(dir);
        if let Some(dir) = dir_key(dir).filter(|_| !self.ttl.is_zero()) {
            self.insert(dir, Known { since: at, names: HashSet::new() });
        }
    }

    /// This node made `path` exist (create, link, symlink, the target of a rename).
    pub fn added(&mut self, path: &str) {
        let (dir, name) = split(path);
        if let Some(known) = dir.and_then(|d| self.dirs.get_mut(&d)) {
            known.names.insert(stored(name));
        }
    }

    /// This node removed `path` (unlink, rmdir, the source of a rename): gone from its parent, and what was
    /// known below it no longer applies.
    pub fn removed(&mut self, path: &str) {
        let (dir, name) = split(path);
        match (dir, key(name)) {
            (Some(dir), Some(k)) => {
                if let Some(known) = self.dirs.get_mut(&dir) {
                    known.names.remove(&k);
                }
            }
            // A name kept as a marker: unknown now how it compares, so the whole listing is dropped.
            (Some(dir), None) => {
                self.dirs.remove(&dir);
            }
            (None, _) => {}
        }
        let path = path.to_ascii_lowercase();
        let below = format!("{path}/");
        self.dirs.retain(|d, _| *d != path && !d.starts_with(&below));
    }

    fn insert(&mut self, dir: String, known: Known) {
        if self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&dir) {
            let ttl = self.ttl;
            let now = Instant::now();
            self.dirs.retain(|_, k| now.saturating_duration_since(k.since) < ttl);
            if self.dirs.len() >= MAX_DIRS {
                self.dirs.clear();
            }
        }
        self.dirs.insert(dir, known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_new_directory_is_empty_until_the_ttl_passes() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        c.made_dir("vol/new", t0);
        assert!(c.is_absent("vol/new/a.txt", t0 + Duration::from_millis(999)));
        assert!(!c.is_absent("vol/new/a.txt", t0 + TTL), "expired knowledge answers nothing");
        // Our own create makes the name exist, case-insensitively, as on the server.
        c.added("vol/new/A.txt");
        assert!(!c.is_absent("vol/new/a.txt", t0));
        assert!(!c.is_absent("vol/new/A.TXT", t0));
        assert!(c.is_absent("vol/new/b.txt", t0));
        c.removed("vol/new/a.TXT");
        assert!(c.is_absent("vol/new/A.txt", t0));
        // The parent of a new directory is not known because of it; the name is added where it is known.
        assert!(!c.is_absent("vol/other", t0));
    }

    #[test]
    fn listings_are_complete_knowledge_and_unknown_directories_answer_nothing() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        assert!(!c.is_absent("d/x", t0));
        c.listed("d", ["x", "Y"].into_iter(), t0);
        assert!(!c.is_absent("d/x", t0));
        assert!(!c.is_absent("d/y", t0));
        assert!(c.is_absent("d/z", t0));
        assert!(!c.is_absent("d/x/inner", t0), "a directory's children are not known from its parent");
        // A root listing: share paths of the root's children have no '/'.
        c.listed("", ["top"].into_iter(), t0);
        assert!(c.is_absent("other", t0));
        assert!(!c.is_absent("TOP", t0));
    }

    #[test]
    fn names_the_server_could_alias_are_never_answered() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        c.listed("d", ["LONGNA~1", "café"].into_iter(), t0);
        for name in ["d/f:stream", "d/LONGNA~2", "d/trailing.", "d/trailing ", "d/café", "d/CAFÉ", "d/naïve"] {
            assert!(!c.is_absent(name, t0), "{name}");
        }
        assert!(c.is_absent("d/plain", t0));
        // Removing a name kept only as a marker drops the listing.
        c.removed("d/café");
        assert!(!c.is_absent("d/plain", t0));
    }

    #[test]
    fn removing_or_renaming_a_directory_forgets_what_was_known_below_it() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        c.made_dir("a", t0);
        c.made_dir("a/b", t0);
        c.made_dir("ab", t0);
        c.removed("a");
        assert!(!c.is_absent("a/x", t0));
        assert!(!c.is_absent("a/b/x", t0));
        assert!(c.is_absent("ab/x", t0), "a sibling with the same prefix stays known");
        // Another spelling of a known directory is the same directory.
        c.made_dir("Mixed", t0);
        assert!(c.is_absent("MIXED/x", t0));
        c.removed("mixed");
        assert!(!c.is_absent("Mixed/x", t0));
        // Directories with names beyond ASCII are never known.
        c.made_dir("dé", t0);
        assert!(!c.is_absent("dé/x", t0));
    }

    #[test]
    fn no_ttl_or_huge_listings_keep_nothing() {
        let t0 = Instant::now();
        let mut off = DirCache::new(Duration::ZERO);
        off.made_dir("d", t0);
        off.listed("e", ["a"].into_iter(), t0);
        assert!(!off.is_absent("d/x", t0) && !off.is_absent("e/x", t0));
        let mut c = DirCache::new(TTL);
        c.listed("d", ["a"].into_iter(), t0);
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("f{i}")).collect();
        c.listed("d", names.iter().map(String::as_str), t0);
        assert!(!c.is_absent("d/x", t0), "the older listing is dropped too");
    }

    #[test]
    fn the_number_of_directories_is_bounded() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        for i in 0..MAX_DIRS * 3 {
            c.made_dir(&format!("d{i}"), t0);
        }
        assert!(c.dirs.len() <= MAX_DIRS);
        assert!(c.is_absent(&format!("d{}/x", MAX_DIRS * 3 - 1), t0), "the newest is kept");
    }
}
