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
//! Renewal: when the knowledge of a directory has expired after answering many lookups
//! ([`RELIST_AFTER`]), the next lookup there lists the directory again ([`DirCache::relist`]) instead of
//! asking for its one name. A failed open of a new name costs the server a scan of the whole directory
//! (Samba compares names without case), as a listing does, so a `cp -r` of a thousand files pays one scan
//! per TTL instead of one per file. A directory looked up rarely is never listed for it.
//!
//! A listing races this node's own changes: a create answered while the listing is in flight may or may
//! not be in it. Every change made to a directory while it is being listed is recorded and applied again,
//! in order, to the listing when it arrives (adding a name that is there, or removing one that is not,
//! changes nothing), so the result is what the server has after both.
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
/// Negative answers a directory's knowledge must have given before its expiry is renewed by a listing:
/// a listing costs the server about what this many failed lookups in a small directory cost it.
pub const RELIST_AFTER: u32 = 16;

/// What the names of one directory were at `since`, with this node's changes applied after it.
struct Known {
    since: Instant,
    names: HashSet<String>,
    /// Lookups answered ENOENT from it.
    answered: u32,
    /// A listing to renew it is in flight.
    relisting: bool,
}

impl Known {
    fn new(since: Instant, names: HashSet<String>) -> Known {
        Known { since, names, answered: 0, relisting: false }
    }
}

/// One of this node's changes to a directory's names, recorded while the directory is being listed.
#[derive(Clone)]
enum Change {
    Added(String),
    Removed(String),
}

/// The listings of one directory in flight, and the changes made there since the first was asked.
#[derive(Default)]
struct Recording {
    listings: usize,
    changes: Vec<Change>,
    /// The directory was removed or renamed meanwhile, or too much changed: the listings are thrown away.
    void: bool,
}

/// The directories this node knows completely, by share path.
#[derive(Default)]
pub struct DirCache {
    ttl: Duration,
    dirs: HashMap<String, Known>,
    listing: HashMap<String, Recording>,
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
        DirCache { ttl, dirs: HashMap::new(), listing: HashMap::new() }
    }

    /// Whether `path` is known not to exist at `now`.
    pub fn is_absent(&mut self, path: &str, now: Instant) -> bool {
        let (dir, name) = split(path);
        let (Some(known), Some(k)) = (dir.and_then(|d| self.dirs.get_mut(&d)), key(name)) else { return false };
        let absent = now.saturating_duration_since(known.since) < self.ttl && !known.names.contains(&k);
        if absent {
            known.answered = known.answered.saturating_add(1);
        }
        absent
    }

    /// For a lookup of `path` that [`DirCache::is_absent`] could not answer: the directory to list (its path
    /// as given) when its knowledge has expired after answering at least [`RELIST_AFTER`] lookups and no
    /// renewal is in flight. The caller lists it ([`DirCache::listing_asked`], then [`DirCache::listing_done`]).
    pub fn relist<'a>(&mut self, path: &'a str, now: Instant) -> Option<&'a str> {
        let (dir, _) = split(path);
        let key = dir?;
        let known = self.dirs.get_mut(&key)?;
        let expired = now.saturating_duration_since(known.since) >= self.ttl;
        if !expired || known.relisting || known.answered < RELIST_AFTER {
            return None;
        }
        known.relisting = true;
        Some(path.rsplit_once('/').map_or("", |(dir, _)| dir))
    }

    /// A listing of `dir` is about to be asked for: this node's changes there are recorded until it is done.
    pub fn listing_asked(&mut self, dir: &str) {
        if let Some(dir) = dir_key(dir) {
            self.listing.entry(dir).or_default().listings += 1;
        }
    }

    /// The listing of `dir` asked for at `asked` ended: with its `names`, or `None` when it failed. A
    /// listing becomes the directory's knowledge with the changes recorded meanwhile applied.
    pub fn listing_done<'a>(
        &mut self,
        dir: &str,
        names: Option<impl ExactSizeIterator<Item = &'a str>>,
        asked: Instant,
    ) {
        let Some(dir) = dir_key(dir) else { return };
        let (void, last) = match self.listing.get_mut(&dir) {
            Some(rec) => {
                rec.listings -= 1;
                (rec.void, rec.listings == 0)
            }
            None => return,
        };
        // The changes stay recorded for the listings still in flight.
        let changes = if last {
            self.listing.remove(&dir).map(|r| r.changes).unwrap_or_default()
        } else {
            self.listing.get(&dir).map(|r| r.changes.clone()).unwrap_or_default()
        };
        let names = match names {
            Some(names) if !void && !self.ttl.is_zero() && names.len() <= MAX_NAMES => names,
            Some(_) if !void => {
                // Too big to keep, or nothing is kept at all: what was known is dropped with it.
                self.dirs.remove(&dir);
                return;
            }
            _ => {
                if let Some(known) = self.dirs.get_mut(&dir) {
                    known.relisting = false;
                    known.answered = 0;
                }
                return;
            }
        };
        let mut names: HashSet<String> = names.map(stored).collect();
        for change in changes {
            match change {
                Change::Added(n) => {
                    names.insert(n);
                }
                Change::Removed(n) => {
                    names.remove(&n);
                }
            }
        }
        self.insert(dir, Known::new(asked, names));
    }

    /// This node created directory `dir` at `at`: it is empty. Its name now exists in its parent.
    pub fn made_dir(&mut self, dir: &str, at: Instant) {
        self.added(dir);
        if let Some(dir) = dir_key(dir).filter(|_| !self.ttl.is_zero()) {
            self.insert(dir, Known::new(at, HashSet::new()));
        }
    }

    /// This node made `path` exist (create, link, symlink, the target of a rename).
    pub fn added(&mut self, path: &str) {
        let (dir, name) = split(path);
        let Some(dir) = dir else { return };
        if let Some(known) = self.dirs.get_mut(&dir) {
            known.names.insert(stored(name));
        }
        self.record(&dir, Change::Added(stored(name)));
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
                self.record(&dir, Change::Removed(k));
            }
            // A name kept as a marker: unknown now how it compares, so the whole listing is dropped.
            (Some(dir), None) => {
                self.dirs.remove(&dir);
                if let Some(rec) = self.listing.get_mut(&dir) {
                    rec.void = true;
                }
            }
            (None, _) => {}
        }
        let path = path.to_ascii_lowercase();
        let below = format!("{path}/");
        self.dirs.retain(|d, _| *d != path && !d.starts_with(&below));
        for (d, rec) in self.listing.iter_mut() {
            if *d == path || d.starts_with(&below) {
                rec.void = true;
            }
        }
    }

    /// Notes `change` for the listings of `dir` in flight, if any.
    fn record(&mut self, dir: &str, change: Change) {
        if let Some(rec) = self.listing.get_mut(dir) {
            if rec.changes.len() >= MAX_NAMES {
                rec.void = true;
                rec.changes.clear();
            } else if !rec.void {
                rec.changes.push(change);
            }
        }
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

    /// A listing of `dir` with `names`, asked for and answered at `at`.
    fn listed(c: &mut DirCache, dir: &str, names: &[&str], at: Instant) {
        c.listing_asked(dir);
        c.listing_done(dir, Some(names.iter().copied()), at);
    }

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
        listed(&mut c, "d", &["x", "Y"], t0);
        assert!(!c.is_absent("d/x", t0));
        assert!(!c.is_absent("d/y", t0));
        assert!(c.is_absent("d/z", t0));
        assert!(!c.is_absent("d/x/inner", t0), "a directory's children are not known from its parent");
        // A root listing: share paths of the root's children have no '/'.
        listed(&mut c, "", &["top"], t0);
        assert!(c.is_absent("other", t0));
        assert!(!c.is_absent("TOP", t0));
    }

    #[test]
    fn names_the_server_could_alias_are_never_answered() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        listed(&mut c, "d", &["LONGNA~1", "café"], t0);
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
        listed(&mut off, "e", &["a"], t0);
        assert!(!off.is_absent("d/x", t0) && !off.is_absent("e/x", t0));
        let mut c = DirCache::new(TTL);
        listed(&mut c, "d", &["a"], t0);
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("f{i}")).collect();
        c.listing_asked("d");
        c.listing_done("d", Some(names.iter().map(String::as_str)), t0);
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

    #[test]
    fn expired_knowledge_that_answered_many_lookups_is_renewed_by_one_listing() {
        let t0 = Instant::now();
        let later = t0 + TTL;
        let mut c = DirCache::new(TTL);
        c.made_dir("d", t0);
        for i in 0..RELIST_AFTER - 1 {
            assert!(c.is_absent(&format!("d/f{i}"), t0));
        }
        assert_eq!(c.relist("d/x", later), None, "too few lookups answered to pay for a listing");
        assert!(c.is_absent("d/last", t0));
        assert_eq!(c.relist("d/x", t0), None, "still valid: nothing to renew");
        assert_eq!(c.relist("e/x", later), None, "an unknown directory is never listed for a lookup");
        assert_eq!(c.relist("D/x", later), Some("D"), "the directory as the lookup spelled it");
        c.listing_asked("D");
        assert_eq!(c.relist("d/y", later), None, "one renewal at a time");
        c.listing_done("D", Some(["a"].into_iter()), later);
        assert!(c.is_absent("d/x", later) && !c.is_absent("d/A", later));
        // The renewed knowledge starts counting again.
        assert_eq!(c.relist("d/x", later + TTL), None);

        // A failed listing leaves the old knowledge expired, and it must earn a renewal again.
        let mut c = DirCache::new(TTL);
        c.made_dir("d", t0);
        for i in 0..RELIST_AFTER {
            assert!(c.is_absent(&format!("d/f{i}"), t0));
        }
        assert_eq!(c.relist("d/x", later), Some("d"));
        c.listing_asked("d");
        c.listing_done("d", None::<std::vec::IntoIter<&str>>, later);
        assert!(!c.is_absent("d/x", later));
        assert_eq!(c.relist("d/x", later), None);
    }

    #[test]
    fn changes_made_while_a_listing_is_in_flight_are_applied_to_it() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        c.listing_asked("d");
        // Created before the server read the directory (in the listing) and after it (not in it), then one
        // of each removed again.
        c.added("d/early");
        c.added("d/late");
        c.added("d/gone");
        c.removed("d/gone");
        c.removed("d/old");
        c.listing_done("d", Some(["early", "gone", "old", "other"].into_iter()), t0);
        for present in ["d/early", "d/late", "d/other"] {
            assert!(!c.is_absent(present, t0), "{present}");
        }
        for absent in ["d/gone", "d/old", "d/never"] {
            assert!(c.is_absent(absent, t0), "{absent}");
        }

        // Two listings at once: each gets every change made while it was in flight.
        let mut c = DirCache::new(TTL);
        c.listing_asked("d");
        c.listing_asked("d");
        c.added("d/a");
        c.listing_done("d", Some(std::iter::empty()), t0);
        assert!(!c.is_absent("d/a", t0));
        c.added("d/b");
        c.listing_done("d", Some(std::iter::empty()), t0);
        assert!(!c.is_absent("d/a", t0) && !c.is_absent("d/b", t0));
        assert!(c.listing.is_empty(), "nothing is recorded once no listing is in flight");
    }

    #[test]
    fn a_listing_of_a_directory_removed_meanwhile_is_thrown_away() {
        let t0 = Instant::now();
        let mut c = DirCache::new(TTL);
        c.listing_asked("a/b");
        c.removed("a");
        c.listing_done("a/b", Some(["x"].into_iter()), t0);
        assert!(!c.is_absent("a/b/y", t0));
        // Too many changes while in flight: also thrown away.
        c.listing_asked("d");
        for i in 0..=MAX_NAMES {
            c.added(&format!("d/f{i}"));
        }
        c.listing_done("d", Some(std::iter::empty()), t0);
        assert!(!c.is_absent("d/y", t0));
    }
}
