//! Paths relative to a source root, kept as the raw bytes the OS gave us.
//!
//! File names on Unix are arbitrary bytes (anything but `/` and NUL); a camera card formatted
//! on another system can easily hold names that are not valid UTF-8. The agent therefore never
//! converts a path to a `String` except for display: [`RelPath`] stores the bytes, with `/` as
//! the separator on every platform, no leading or trailing separator and no `.`/`..`
//! components. The empty path is the source root itself.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::borrow::Cow;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why a byte string or path is not a valid [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    /// The path is absolute or has a drive prefix.
    #[error("path {0:?} is absolute; a path relative to the source root is expected")]
    Absolute(String),
    /// The path contains `..`, which could escape the root.
    #[error("path {0:?} contains '..'")]
    ParentComponent(String),
    /// Empty component (`a//b`), leading/trailing `/`, `.` component or NUL byte.
    #[error("path {0:?} is not a normalised relative path")]
    NotNormal(String),
    /// The path is not below the given root.
    #[error("path {path:?} is not inside {root:?}")]
    NotUnderRoot {
        /// The path that was given.
        path: String,
        /// The root it should be inside.
        root: String,
    },
}

/// A normalised path relative to a source root, as raw OS bytes with `/` separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The source root itself (the empty path).
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Validates raw bytes (`/`-separated) as a relative path.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<RelPath, RelPathError> {
        if bytes.is_empty() {
            return Ok(RelPath(bytes));
        }
        let shown = || String::from_utf8_lossy(&bytes).into_owned();
        if bytes[0] == b'/' {
            return Err(RelPathError::Absolute(shown()));
        }
        if bytes.contains(&0) {
            return Err(RelPathError::NotNormal(shown()));
        }
        for comp in bytes.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => return Err(RelPathError::NotNormal(shown())),
                b".." => return Err(RelPathError::ParentComponent(shown())),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// Converts a relative [`Path`] (as typed by a user, e.g. `./a/b/../c` is rejected but
    /// `./a/b` is accepted) into a `RelPath`.
    pub fn from_path(path: &Path) -> Result<RelPath, RelPathError> {
        let mut out: Vec<u8> = Vec::new();
        for comp in path.components() {
            match comp {
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(RelPathError::ParentComponent(path.display().to_string()))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(RelPathError::Absolute(path.display().to_string()))
                }
                Component::Normal(name) => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(&os_bytes(name));
                }
            }
        }
        RelPath::from_bytes(out)
    }

    /// The path of `full` relative to `root` (both as the OS gave them; no canonicalisation).
    pub fn strip_root(root: &Path, full: &Path) -> Result<RelPath, RelPathError> {
        match full.strip_prefix(root) {
            Ok(rest) => RelPath::from_path(rest),
            Err(_) => Err(RelPathError::NotUnderRoot {
                path: full.display().to_string(),
                root: root.display().to_string(),
            }),
        }
    }

    /// The raw bytes (`/`-separated).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Consumes the path, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// True for the source root (the empty path).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }

    /// Appends one file name (which must not contain `/`).
    pub fn join_name(&self, name: &[u8]) -> RelPath {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath(v)
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent directory (`None` for the root).
    pub fn parent(&self) -> Option<RelPath> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Some(RelPath(self.0[..i].to_vec())),
            None => Some(RelPath::root()),
        }
    }

    /// The proper ancestors below the root, top-down: for `a/b/c` that is `a`, `a/b`.
    pub fn ancestors(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        for (i, b) in self.0.iter().enumerate() {
            if *b == b'/' {
                out.push(RelPath(self.0[..i].to_vec()));
            }
        }
        out
    }

    /// If `self` is strictly inside directory `dir`, the remainder after `dir/`.
    pub fn strip_dir(&self, dir: &RelPath) -> Option<&[u8]> {
        if dir.is_root() {
            return if self.is_root() { None } else { Some(&self.0) };
        }
        let rest = self.0.strip_prefix(dir.0.as_slice())?;
        match rest.split_first() {
            Some((b'/', tail)) if !tail.is_empty() => Some(tail),
            _ => None,
        }
    }

    /// A `Path` for this relative path (borrowed on Unix; lossy elsewhere for non-Unicode).
    pub fn to_path(&self) -> Cow<'_, Path> {
        bytes_to_path(&self.0)
    }

    /// `root` joined with this path.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.is_root() {
            root.to_path_buf()
        } else {
            root.join(self.to_path())
        }
    }

    /// Human-readable form: invalid UTF-8 is shown with U+FFFD replacement characters.
    pub fn display(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Whether the raw bytes are valid UTF-8 (so that [`RelPath::display`] is exact).
    pub fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.0).is_ok()
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&self.display())
        }
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

/// The bytes of an OS string (exact on Unix; the platform's encoding elsewhere).
pub fn os_bytes(s: &std::ffi::OsStr) -> Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(s.as_bytes())
    }
    #[cfg(not(unix))]
    {
        Cow::Borrowed(s.as_encoded_bytes())
    }
}

/// A path from raw bytes (exact on Unix; lossy for non-Unicode names elsewhere).
pub fn bytes_to_path(bytes: &[u8]) -> Cow<'_, Path> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(Path::new(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        match String::from_utf8_lossy(bytes) {
            Cow::Borrowed(s) => Cow::Borrowed(Path::new(s)),
            Cow::Owned(s) => Cow::Owned(PathBuf::from(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_bytes() {
        assert!(RelPath::from_bytes(b"a/b".to_vec()).is_ok());
        assert!(RelPath::from_bytes(b"".to_vec()).unwrap().is_root());
        assert!(RelPath::from_bytes(b"/a".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"a/".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"a//b".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"a/../b".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"a/./b".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"a\0b".to_vec()).is_err());
        assert!(RelPath::from_bytes(b"caf\xe9".to_vec()).is_ok());
    }

    #[test]
    fn from_path_normalises_curdir() {
        let p = RelPath::from_path(Path::new("./a/b/c.NEF")).unwrap();
        assert_eq!(p.as_bytes(), b"a/b/c.NEF");
        assert!(RelPath::from_path(Path::new("../x")).is_err());
        assert!(RelPath::from_path(Path::new("/x")).is_err());
    }

    #[test]
    fn navigation() {
        let p = RelPath::from_bytes(b"a/b/c".to_vec()).unwrap();
        assert_eq!(p.depth(), 3);
        assert_eq!(p.file_name(), b"c");
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        let anc: Vec<_> = p.ancestors().into_iter().map(|a| a.into_bytes()).collect();
        assert_eq!(anc, vec![b"a".to_vec(), b"a/b".to_vec()]);
        let ab = RelPath::from_bytes(b"a/b".to_vec()).unwrap();
        assert_eq!(p.strip_dir(&ab), Some(&b"c"[..]));
        assert_eq!(p.strip_dir(&RelPath::root()), Some(&b"a/b/c"[..]));
        let abc = RelPath::from_bytes(b"a/bc".to_vec()).unwrap();
        assert_eq!(abc.strip_dir(&ab), None);
        assert_eq!(ab.strip_dir(&ab), None);
        assert_eq!(RelPath::root().join_name(b"x").as_bytes(), b"x");
        assert_eq!(ab.join_name(b"x").as_bytes(), b"a/b/x");
        assert_eq!(
            RelPath::from_bytes(b"x".to_vec()).unwrap().parent(),
            Some(RelPath::root())
        );
    }
}
