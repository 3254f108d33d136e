//! Relative paths inside an SMB share (a volume's subdirectory, a share's
//! base path), validated once so nothing deeper can be steered outside the
//! share.

use std::fmt;

/// Longest name of one path component that SMB servers accept (MS-FSCC 2.1.5.2).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a path inside a share was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {path:?} is absolute; it must be relative to the share")]
    Absolute { path: String },
    #[error("path {path:?} has an empty component (doubled separator)")]
    EmptyComponent { path: String },
    #[error("path {path:?} has a {component:?} component; only plain names are allowed")]
    DotComponent { path: String, component: String },
    #[error("path {path:?} contains control character {found:?}")]
    ControlCharacter { path: String, found: char },
    #[error("path {path:?} contains {found:?}, which SMB servers do not allow in names")]
    ReservedCharacter { path: String, found: char },
    #[error("path component {component:?} is {len} bytes; the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong { component: String, len: usize },
}

/// A relative path inside a share: plain components, no `.` or `..`, no
/// control characters, no characters Windows servers reserve (`<>:"|?*`),
/// each at most 255 bytes. `/` and `\` both separate components; the
/// canonical form joins them with `/`. May be empty (the share root) only
/// when built with [`SharePath::root`] or [`SharePath::parse_or_root`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SharePath {
    components: Vec<String>,
}

impl SharePath {
    /// The share root.
    pub fn root() -> Self {
        SharePath::default()
    }

    /// Parses a non-empty relative path. One trailing separator is tolerated.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let parsed = Self::parse_or_root(path)?;
        if parsed.is_root() {
            return Err(PathError::Empty);
        }
        Ok(parsed)
    }

    /// Like [`SharePath::parse`], but an empty string is the share root.
    pub fn parse_or_root(path: &str) -> Result<Self, PathError> {
        if path.is_empty() {
            return Ok(Self::root());
        }
        if path.starts_with(['/', '\\']) {
            return Err(PathError::Absolute { path: path.to_string() });
        }
        if let Some(found) = path.chars().find(|c| c.is_control()) {
            return Err(PathError::ControlCharacter { path: path.to_string(), found });
        }
        if let Some(found) = path.chars().find(|c| matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*')) {
            return Err(PathError::ReservedCharacter { path: path.to_string(), found });
        }
        let trimmed = path.strip_suffix(['/', '\\']).unwrap_or(path);
        let mut components = Vec::new();
        for component in trimmed.split(['/', '\\']) {
            match component {
                "" => return Err(PathError::EmptyComponent { path: path.to_string() }),
                "." | ".." => {
                    return Err(PathError::DotComponent { path: path.to_string(), component: component.to_string() })
                }
                _ if component.len() > MAX_COMPONENT_LEN => {
                    return Err(PathError::ComponentTooLong { component: component.to_string(), len: component.len() })
                }
                _ => components.push(component.to_string()),
            }
        }
        Ok(SharePath { components })
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &SharePath) -> SharePath {
        SharePath { components: self.components.iter().chain(&other.components).cloned().collect() }
    }
}

/// Components joined with `/`; the root prints as the empty string.
impl fmt::Display for SharePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, component) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(component)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_normalise_to_slash() {
        let p = SharePath::parse(r"team\data/pvc-1").unwrap();
        assert_eq!(p.components(), ["team", "data", "pvc-1"]);
        assert_eq!(p.to_string(), "team/data/pvc-1");
        assert_eq!(SharePath::parse("a/").unwrap().to_string(), "a");
        assert_eq!(SharePath::parse("données/日本").unwrap().to_string(), "données/日本");
        assert_eq!(SharePath::parse("..a/b..").unwrap().to_string(), "..a/b..");
    }

    #[test]
    fn root_only_when_asked() {
        assert_eq!(SharePath::parse(""), Err(PathError::Empty));
        assert!(SharePath::parse_or_root("").unwrap().is_root());
        assert_eq!(SharePath::root().to_string(), "");
        let joined = SharePath::parse("base").unwrap().join(&SharePath::parse("x/y").unwrap());
        assert_eq!(joined.to_string(), "base/x/y");
    }

    /// An input and a check of the error it must produce.
    type RefusalCase = (&'static str, fn(&PathError) -> bool);

    #[test]
    fn hostile_paths_are_refused() {
        let cases: &[RefusalCase] = &[
            ("/etc", |e| matches!(e, PathError::Absolute { .. })),
            (r"\srv", |e| matches!(e, PathError::Absolute { .. })),
            ("a/../b", |e| matches!(e, PathError::DotComponent { .. })),
            ("..", |e| matches!(e, PathError::DotComponent { .. })),
            (r"a\..\..\b", |e| matches!(e, PathError::DotComponent { .. })),
            ("./a", |e| matches!(e, PathError::DotComponent { .. })),
            ("a//b", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("a//", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("a\0b", |e| matches!(e, PathError::ControlCharacter { found: '\0', .. })),
            ("a\nb", |e| matches!(e, PathError::ControlCharacter { .. })),
            ("a\u{7f}", |e| matches!(e, PathError::ControlCharacter { .. })),
            ("file:stream", |e| matches!(e, PathError::ReservedCharacter { found: ':', .. })),
            ("a|b", |e| matches!(e, PathError::ReservedCharacter { found: '|', .. })),
            ("a*", |e| matches!(e, PathError::ReservedCharacter { .. })),
        ];
        for (input, is_expected) in cases {
            let err = SharePath::parse(input).unwrap_err();
            assert!(is_expected(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn component_length_limit_is_in_bytes() {
        assert!(SharePath::parse(&"a".repeat(255)).is_ok());
        assert!(matches!(
            SharePath::parse(&format!("ok/{}", "a".repeat(256))),
            Err(PathError::ComponentTooLong { len: 256, .. })
        ));
        // 128 two-byte characters: 256 bytes.
        assert!(matches!(SharePath::parse(&"é".repeat(128)), Err(PathError::ComponentTooLong { len: 256, .. })));
    }
}
