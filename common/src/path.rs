//! Relative paths on the wire.
//!
//! A wire path is relative to the backup source root, '/'-separated, with no empty, `.` or `..`
//! component, no leading or trailing '/', no NUL, no backslash, and no drive letter (`C:`) at the
//! start. [`validate_rel_path`] enforces this on the server (every path of a delta) and on restore
//! (before anything is joined to the restore root).
//!
//! Names that are not valid UTF-8 (possible on Linux and NAS file systems) keep their exact bytes:
//! the wire `path` holds a display form in which each "escaped" byte `b` is the private-use
//! character `U+F700 + b`, and `raw_path` holds the exact bytes. Escaped are: bytes of invalid
//! UTF-8 sequences, every byte of a character that is itself in `U+F700..=U+F7FF`, a backslash, and
//! the ':' of a leading drive-letter-like component. Because of that last two rules the display
//! form is injective — it alone determines the bytes — so the server can key files by `path`.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::path::{Path, PathBuf};

/// First code point of the escape range (`U+F700 + byte`).
pub const ESCAPE_BASE: u32 = 0xF700;
/// Longest wire path accepted, in bytes of its UTF-8 display form.
pub const MAX_PATH_LEN: usize = 16 * 1024;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path too long ({0} bytes, limit {MAX_PATH_LEN})")]
    TooLong(usize),
    #[error("absolute path {0:?}: paths must be relative to the source root")]
    Absolute(String),
    #[error("path {0:?} has an empty component (double or trailing '/')")]
    EmptyComponent(String),
    #[error("path {0:?} has a '.' or '..' component (directory traversal)")]
    Traversal(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    #[error("path {0:?} starts with a drive letter")]
    DriveLetter(String),
    #[error("raw_path does not match the display path {0:?}")]
    RawMismatch(String),
    #[error("path {0:?} cannot be represented on this operating system")]
    Unrepresentable(String),
    #[error("path {0:?} has a prefix or root component")]
    NotRelative(String),
}

fn is_escape(c: char) -> bool {
    (ESCAPE_BASE..=ESCAPE_BASE + 0xFF).contains(&(c as u32))
}

fn has_drive_letter(first_component: &[u8]) -> bool {
    first_component.len() >= 2
        && first_component[0].is_ascii_alphabetic()
        && first_component[1] == b':'
}

/// Checks the wire path rules. Escape characters (`U+F700..=U+F7FF`) are allowed.
pub fn validate_rel_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.len()));
    }
    let own = || path.to_string();
    if path.starts_with('/') {
        return Err(PathError::Absolute(own()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(own()));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash(own()));
    }
    if has_drive_letter(path.as_bytes()) {
        return Err(PathError::DriveLetter(own()));
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err(PathError::EmptyComponent(own())),
            "." | ".." => return Err(PathError::Traversal(own())),
            _ => {}
        }
    }
    Ok(())
}

/// The exact bytes a display path stands for (escape characters become their byte).
pub fn wire_path_bytes(path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut utf8 = [0u8; 4];
    for c in path.chars() {
        if is_escape(c) {
            out.push((c as u32 - ESCAPE_BASE) as u8);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
    out
}

/// Display form of raw bytes; `true` when any byte had to be escaped.
pub fn bytes_to_wire(bytes: &[u8]) -> (String, bool) {
    let mut s = String::with_capacity(bytes.len());
    let mut escaped = false;
    let push_escaped = |s: &mut String, b: u8| {
        // U+F700..=U+F7FF are all valid scalar values.
        s.push(char::from_u32(ESCAPE_BASE + u32::from(b)).unwrap_or(char::REPLACEMENT_CHARACTER));
    };
    let drive_colon = if has_drive_letter(bytes) {
        Some(1)
    } else {
        None
    };
    let mut i = 0;
    while i < bytes.len() {
        match std::str::from_utf8(&bytes[i..]) {
            Ok(valid) => {
                escape_valid(valid, i, drive_colon, &mut s, &mut escaped, push_escaped);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                // The prefix is valid UTF-8 by construction.
                let valid = std::str::from_utf8(&bytes[i..i + good]).unwrap_or_default();
                escape_valid(valid, i, drive_colon, &mut s, &mut escaped, push_escaped);
                let bad = e.error_len().unwrap_or(bytes.len() - i - good);
                for &b in &bytes[i + good..i + good + bad] {
                    push_escaped(&mut s, b);
                }
                escaped = true;
                i += good + bad;
            }
        }
    }
    (s, escaped)
}

fn escape_valid(
    valid: &str,
    base: usize,
    drive_colon: Option<usize>,
    s: &mut String,
    escaped: &mut bool,
    push_escaped: impl Fn(&mut String, u8),
) {
    for (off, c) in valid.char_indices() {
        let pos = base + off;
        if is_escape(c) || c == '\\' || (c == ':' && drive_colon == Some(pos)) {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                push_escaped(s, b);
            }
            *escaped = true;
        } else {
            s.push(c);
        }
    }
}

/// Converts a relative OS path to its wire form: `(display path, raw bytes when escaped)`.
///
/// On Unix the path's bytes are used as they are; elsewhere the path must be Unicode and its
/// separators become '/'. The result passes [`validate_rel_path`] or this returns the error.
pub fn os_path_to_wire(p: &Path) -> Result<(String, Option<Vec<u8>>), PathError> {
    let bytes = os_bytes(p)?;
    let (display, escaped) = bytes_to_wire(&bytes);
    validate_rel_path(&display)?;
    Ok((display, escaped.then_some(bytes)))
}

#[cfg(unix)]
fn os_bytes(p: &Path) -> Result<Vec<u8>, PathError> {
    use std::os::unix::ffi::OsStrExt;
    Ok(p.as_os_str().as_bytes().to_vec())
}

#[cfg(not(unix))]
fn os_bytes(p: &Path) -> Result<Vec<u8>, PathError> {
    let s = p
        .to_str()
        .ok_or_else(|| PathError::Unrepresentable(p.to_string_lossy().into_owned()))?;
    if p.components().any(|c| {
        matches!(
            c,
            std::path::Component::Prefix(_) | std::path::Component::RootDir
        )
    }) {
        return Err(PathError::Absolute(s.to_string()));
    }
    Ok(s.replace('\\', "/").into_bytes())
}

/// Checks `path` and its optional `raw_path` together: the path is valid and the raw bytes are
/// exactly what the display form stands for.
pub fn validate_wire_pair(path: &str, raw: Option<&[u8]>) -> Result<(), PathError> {
    validate_rel_path(path)?;
    if let Some(raw) = raw {
        if wire_path_bytes(path) != raw {
            return Err(PathError::RawMismatch(path.to_string()));
        }
    }
    Ok(())
}

/// Converts a wire path back to a relative OS path (to join to a restore root). Validates first.
pub fn wire_to_os_path(path: &str, raw: Option<&[u8]>) -> Result<PathBuf, PathError> {
    validate_wire_pair(path, raw)?;
    let bytes = match raw {
        Some(r) => r.to_vec(),
        None => wire_path_bytes(path),
    };
    let out = bytes_to_os(path, bytes)?;
    // Defence in depth: the result must be a plain relative path.
    if out
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(PathError::NotRelative(path.to_string()));
    }
    Ok(out)
}

#[cfg(unix)]
fn bytes_to_os(_path: &str, bytes: Vec<u8>) -> Result<PathBuf, PathError> {
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(not(unix))]
fn bytes_to_os(path: &str, bytes: Vec<u8>) -> Result<PathBuf, PathError> {
    let s = String::from_utf8(bytes).map_err(|_| PathError::Unrepresentable(path.to_string()))?;
    if s.contains('\\') || s.contains(':') {
        return Err(PathError::Unrepresentable(path.to_string()));
    }
    Ok(s.split('/').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        for ok in [
            "a",
            "a/b.jpg",
            "Smith Wedding/DCIM/IMG_0001.CR3",
            "a/.hidden",
            "a/..b",
            "ab:c",
            "a/c:d",
        ] {
            validate_rel_path(ok).unwrap();
        }
        assert!(matches!(validate_rel_path(""), Err(PathError::Empty)));
        assert!(matches!(
            validate_rel_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            validate_rel_path("a/../../x"),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            validate_rel_path(".."),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            validate_rel_path("./a"),
            Err(PathError::Traversal(_))
        ));
        assert!(matches!(
            validate_rel_path("a//b"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            validate_rel_path("a/"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(validate_rel_path("a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(
            validate_rel_path("a\\..\\b"),
            Err(PathError::Backslash(_))
        ));
        assert!(matches!(
            validate_rel_path("C:/Windows"),
            Err(PathError::DriveLetter(_))
        ));
        assert!(matches!(
            validate_rel_path("c:x"),
            Err(PathError::DriveLetter(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let raw: &[u8] = b"caf\xe9/\xff\xfe.jpg";
        let p = Path::new(std::ffi::OsStr::from_bytes(raw));
        let (display, rawp) = os_path_to_wire(p).unwrap();
        assert_eq!(rawp.as_deref(), Some(raw));
        assert_eq!(display, "caf\u{F7E9}/\u{F7FF}\u{F7FE}.jpg");
        assert_eq!(wire_to_os_path(&display, rawp.as_deref()).unwrap(), p);
        assert_eq!(wire_to_os_path(&display, None).unwrap(), p);
        // Injective: a valid name that contains an escape character is itself escaped.
        let tricky = "caf\u{F7E9}";
        let (d2, r2) = os_path_to_wire(Path::new(tricky)).unwrap();
        assert_ne!(d2, display.split('/').next().unwrap());
        assert_eq!(r2.as_deref(), Some(tricky.as_bytes()));
        // Backslash and drive letters in Unix names survive as escapes.
        let (d3, r3) = os_path_to_wire(Path::new("C:a\\b")).unwrap();
        validate_rel_path(&d3).unwrap();
        assert_eq!(r3.as_deref(), Some(&b"C:a\\b"[..]));
        assert_eq!(wire_to_os_path(&d3, None).unwrap(), Path::new("C:a\\b"));
        // Mismatched raw bytes are refused.
        assert!(matches!(
            wire_to_os_path("abc", Some(b"abd")),
            Err(PathError::RawMismatch(_))
        ));
        assert!(os_path_to_wire(Path::new("/abs")).is_err());
        assert!(os_path_to_wire(Path::new("a/../b")).is_err());
        assert_eq!(
            os_path_to_wire(Path::new("a/b")).unwrap(),
            ("a/b".to_string(), None)
        );
    }
}
