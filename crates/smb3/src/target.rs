//! Where to connect: the `//HOST[:PORT]/SHARE[/PATH]` target, the one
//! `host:port` formatter and share-relative path joining.
//!
//! This is plain string handling with no protocol state, kept apart from
//! `client` so that the connection (which prints addresses) and the tree
//! (which joins paths) depend on it without depending on the `Client` built
//! on top of them.

use super::error::{Error, Result};

/// Where a share lives: `//HOST[:PORT]/SHARE[/PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareTarget {
    pub host: String,
    pub port: u16,
    pub share: String,
    /// Path inside the share, `/`-separated, no leading or trailing slash; empty for the root.
    pub path: String,
}

pub const DEFAULT_PORT: u16 = 445;
pub const NETBIOS_PORT: u16 = 139;

impl ShareTarget {
    /// Parses `//HOST[:PORT]/SHARE[/PATH]` (also `\\HOST\SHARE\PATH` and `smb://`).
    pub fn parse(s: &str) -> Result<ShareTarget> {
        let bad = |why: &str| Error::InvalidTarget { target: s.to_string(), why: why.to_string() };
        let norm = s.trim().replace('\\', "/");
        // The scheme is case-insensitive (RFC 3986 3.1): `SMB://` too.
        let scheme = norm.get(..6).filter(|p| p.eq_ignore_ascii_case("smb://"));
        let rest = scheme
            .map(|_| &norm[6..])
            .or_else(|| norm.strip_prefix("//"))
            .ok_or_else(|| bad("expected //HOST[:PORT]/SHARE[/PATH]"))?;
        let (hostport, after) = rest.split_once('/').ok_or_else(|| bad("missing share name"))?;
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("invalid host or port"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let mut parts = after.split('/').filter(|p| !p.is_empty());
        let share = parts.next().ok_or_else(|| bad("missing share name"))?.to_string();
        let path: Vec<&str> = parts.collect();
        if path.contains(&"..") {
            return Err(bad("'..' is not allowed in the path"));
        }
        if path.iter().chain(std::iter::once(&share.as_str())).any(|p| p.chars().any(|c| c.is_control())) {
            return Err(bad("control characters are not allowed"));
        }
        Ok(ShareTarget { host, port: port.unwrap_or(DEFAULT_PORT), share, path: path.join("/") })
    }

    /// The target with `sub` appended to its path.
    pub fn join(&self, sub: &str) -> ShareTarget {
        let mut t = self.clone();
        t.path = join_path(&self.path, sub);
        t
    }
}

impl std::fmt::Display for ShareTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = (self.port != DEFAULT_PORT).then_some(self.port);
        write!(f, "//{}", HostPort(&self.host, port))?;
        write!(f, "/{}", self.share)?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// Formats `host[:port]` the one way this crate (and its users) write it:
/// an IPv6 address in brackets, the port only when given.
/// `HostPort("::1", Some(445))` prints `[::1]:445`.
#[derive(Clone, Copy, Debug)]
pub struct HostPort<'a>(pub &'a str, pub Option<u16>);

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HostPort(host, port) = *self;
        if host.contains(':') && !host.starts_with('[') {
            write!(f, "[{host}]")?;
        } else {
            f.write_str(host)?;
        }
        match port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok().filter(|p| *p != 0)?),
            None if rest.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok().filter(|p| *p != 0)?))),
        None => Some((s.to_string(), None)),
    }
}

/// Joins `/`-separated share paths, dropping empty components.
pub fn join_path(base: &str, sub: &str) -> String {
    base.split('/').chain(sub.split(['/', '\\'])).filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = ShareTarget::parse("//srv:4450/share/a/b").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.share.as_str(), t.path.as_str()), ("srv", 4450, "share", "a/b"));
        assert_eq!(t.to_string(), "//srv:4450/share/a/b");
        assert_eq!(ShareTarget::parse("SMB://srv/s").unwrap().to_string(), "//srv/s");
        let t = ShareTarget::parse(r"\\srv\share\x").unwrap();
        assert_eq!((t.port, t.path.as_str()), (445, "x"));
        let t = ShareTarget::parse("//[::1]:139/s").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 139));
        assert_eq!(t.to_string(), "//[::1]:139/s");
        for bad in
            ["", "srv/share", "//srv", "//srv/", "//:1/s", "//srv:0/s", "//srv:x/s", "//srv/s/../x", "//srv/s\u{1}"]
        {
            assert!(ShareTarget::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_host_and_port() {
        assert_eq!(HostPort("srv", Some(445)).to_string(), "srv:445");
        assert_eq!(HostPort("srv", None).to_string(), "srv");
        assert_eq!(HostPort("::1", Some(139)).to_string(), "[::1]:139");
        assert_eq!(HostPort("fe80::1", None).to_string(), "[fe80::1]");
        assert_eq!(HostPort("[::1]", Some(1)).to_string(), "[::1]:1");
    }

    #[test]
    fn joins_paths() {
        assert_eq!(join_path("a/b", "c\\d/"), "a/b/c/d");
        assert_eq!(join_path("", "/x/./y"), "x/y");
    }
}
