//! Inode numbers for the FUSE kernel: the server's file ids (stable for a file's life, so `ls -i`, `find`
//! and `tar` see the same number from every mount), with the share path each one was last seen at.

use std::collections::HashMap;

/// The root directory's inode number (fixed by the FUSE protocol).
pub const ROOT_INO: u64 = 1;

/// Synthetic numbers (for file ids 0 and 1, which FUSE reserves) start here.
const SYNTHETIC_BASE: u64 = 1 << 63;

struct Node {
    /// Share path (`/`-separated, relative to the share root).
    path: String,
    /// Kernel references (lookups not yet forgotten).
    lookups: u64,
}

/// The table of inodes the kernel knows about.
pub(crate) struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_synthetic: u64,
}

impl Inodes {
    /// A table whose root inode (1) is the share path `root`.
    pub fn new(root: &str) -> Inodes {
        let mut by_ino = HashMap::new();
        by_ino.insert(ROOT_INO, Node { path: root.to_string(), lookups: 1 });
        Inodes { by_ino, by_path: HashMap::new(), next_synthetic: SYNTHETIC_BASE }
    }

    /// The table a predecessor left (from the takeover journal): the same node ids, paths and lookup counts.
    pub fn restore<'a>(root: &str, nodes: impl IntoIterator<Item = (u64, &'a str, u64)>) -> Inodes {
        let mut t = Inodes::new(root);
        for (ino, path, lookups) in nodes {
            if ino == ROOT_INO {
                continue;
            }
            t.by_ino.insert(ino, Node { path: path.to_string(), lookups });
            t.by_path.insert(path.to_string(), ino);
            if ino >= SYNTHETIC_BASE {
                t.next_synthetic = t.next_synthetic.max(ino);
            }
        }
        t
    }

    pub fn path(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(|n| n.path.as_str())
    }

    /// Records one kernel lookup of `path`, whose server file id is `file_id`; returns its inode number.
    pub fn remember(&mut self, path: &str, file_id: u64) -> u64 {
        let ino = if file_id > 1 && file_id < SYNTHETIC_BASE {
            file_id
        } else {
            // No usable id from the server: keep one number per path.
            match self.by_path.get(path) {
                Some(&ino) if ino >= SYNTHETIC_BASE => ino,
                _ => {
                    self.next_synthetic += 1;
                    self.next_synthetic
                }
            }
        };
        let node = self.by_ino.entry(ino).or_insert_with(|| Node { path: path.to_string(), lookups: 0 });
        node.lookups += 1;
        if node.path != path {
            node.path = path.to_string();
        }
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                let node = self.by_ino.remove(&ino).expect("present");
                if self.by_path.get(&node.path) == Some(&ino) {
                    self.by_path.remove(&node.path);
                }
            }
        }
    }

    /// `path` no longer names anything (unlink, rmdir).
    pub fn unlinked(&mut self, path: &str) {
        self.by_path.remove(path);
    }

    /// `from` (and everything below it) is now at `to`.
    pub fn renamed(&mut self, from: &str, to: &str) {
        self.by_path.remove(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(node) = self.by_ino.get_mut(&ino) {
                if node.path == old {
                    node.path = new.clone();
                }
            }
            self.by_path.insert(new, ino);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_become_inode_numbers_and_are_forgotten() {
        let mut t = Inodes::new("vol");
        assert_eq!(t.path(1), Some("vol"));
        let a = t.remember("vol/a", 4242);
        assert_eq!(a, 4242);
        assert_eq!(t.remember("vol/a", 4242), 4242);
        t.forget(a, 1);
        assert_eq!(t.path(a), Some("vol/a"));
        t.forget(a, 1);
        assert_eq!(t.path(a), None);
        t.forget(1, 10);
        assert_eq!(t.path(1), Some("vol"));
    }

    #[test]
    fn reserved_ids_get_synthetic_numbers_stable_per_path() {
        let mut t = Inodes::new("");
        let x = t.remember("x", 0);
        let y = t.remember("y", 1);
        assert!(x >= SYNTHETIC_BASE && y >= SYNTHETIC_BASE && x != y);
        assert_eq!(t.remember("x", 0), x);
    }

    #[test]
    fn renames_move_subtrees() {
        let mut t = Inodes::new("");
        let d = t.remember("d", 10);
        let f = t.remember("d/f", 11);
        let other = t.remember("dd/g", 12);
        t.renamed("d", "e");
        assert_eq!((t.path(d), t.path(f), t.path(other)), (Some("e"), Some("e/f"), Some("dd/g")));
        t.unlinked("e/f");
        assert_eq!(t.path(f), Some("e/f"));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_restored_table_keeps_numbers_counts_and_the_synthetic_counter() {
        let mut t = Inodes::restore("vol", [(1, "ignored", 5), (40, "vol/a", 2), (SYNTHETIC_BASE + 7, "vol/b", 1)]);
        assert_eq!((t.path(1), t.path(40)), (Some("vol"), Some("vol/a")));
        t.forget(40, 1);
        assert_eq!(t.path(40), Some("vol/a"));
        t.forget(40, 1);
        assert_eq!(t.path(40), None);
        assert_eq!(t.remember("vol/b", 0), SYNTHETIC_BASE + 7);
        assert_eq!(t.remember("vol/c", 0), SYNTHETIC_BASE + 8);
    }
}
