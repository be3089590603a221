//! File names: those the target operating system can hold, the safe names given to those it
//! cannot, and the names derived from an original (the copy restored beside a different local
//! file, the name given to a path that differs from another only by letter case).
//!
//! The rules are plain data ([`NameRules`]), independent of the machine the code runs on, so the
//! Windows rules are tested everywhere; a restore uses [`NameRules::native`]. Every derived name
//! fits in [`MAX_NAME_BYTES`]: a long original is shortened at a character boundary and tagged
//! with a hash of the whole original, so two long names never map to one.
//!
//! Pure computation: no IO, nothing to recover after a crash.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use keepsake_common::path::{validate_wire_pair, wire_path_bytes, wire_to_os_path};

/// Which file-name rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRules {
    /// Any name without '/' and NUL (Linux, macOS, BSD; NAS file systems).
    Unix,
    /// Windows (NTFS, exFAT as Windows mounts them): no reserved device names, none of
    /// `<>:"|?*\` or control characters, no trailing dot or space.
    Windows,
}

impl NameRules {
    /// The rules of the operating system this runs on.
    pub fn native() -> NameRules {
        if cfg!(windows) {
            NameRules::Windows
        } else {
            NameRules::Unix
        }
    }
}

/// Device names Windows reserves in every folder, with or without an extension.
const WINDOWS_RESERVED: &[&str] = &[
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
];

/// Characters Windows refuses in a name (besides control characters).
const WINDOWS_FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*', '\\', '/'];

fn forbidden_char(c: char, rules: NameRules) -> bool {
    match rules {
        NameRules::Unix => c == '/' || c == '\0',
        NameRules::Windows => (c as u32) < 0x20 || WINDOWS_FORBIDDEN.contains(&c),
    }
}

fn windows_reserved(name: &str) -> bool {
    // "CON", "con.txt", "Con .jpg" and "CON.tar.gz" all name the console device.
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    WINDOWS_RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
}

/// Why `name` cannot be a file name under `rules`; `None` when it can.
pub fn name_problem(name: &str, rules: NameRules) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Some("is empty or a '.'/'..' component");
    }
    if name.chars().any(|c| forbidden_char(c, rules)) {
        return Some(match rules {
            NameRules::Unix => "contains '/' or NUL",
            NameRules::Windows => {
                "contains a character Windows does not allow (<>:\"|?*\\ or a control character)"
            }
        });
    }
    if rules == NameRules::Windows {
        if name.ends_with('.') || name.ends_with(' ') {
            return Some("ends with a dot or a space (Windows drops them)");
        }
        if windows_reserved(name) {
            return Some("is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9)");
        }
    }
    None
}

/// The safe form of `shown` (a name as displayed), tagged with a short hash of the original
/// bytes so that different originals never end up under one name: forbidden characters
/// become '_', trailing dots and spaces become '_', and `~` plus six hex digits go before the
/// extension (`Anna?.jpg` → `Anna_~1f2e3d.jpg`, `CON.txt` → `CON~a1b2c3.txt`), so the file
/// still opens with its application.
fn tagged(shown: &str, original: &[u8], rules: NameRules) -> String {
    let mut out: String = shown
        .chars()
        .map(|c| if forbidden_char(c, rules) { '_' } else { c })
        .collect();
    let keep = out.trim_end_matches(['.', ' ']).len();
    let dropped = out.len() - keep;
    out.truncate(keep);
    out.extend(std::iter::repeat_n('_', dropped));
    if out.is_empty() {
        out.push('_');
    }
    let tag = blake3::hash(original).to_hex();
    let tag = &tag.as_str()[..6];
    let at = |dot: Option<usize>| match dot {
        Some(dot) if dot > 0 && dot + 1 < out.len() => {
            format!("{}~{tag}{}", &out[..dot], &out[dot..])
        }
        _ => format!("{out}~{tag}"),
    };
    let safe = at(out.rfind('.'));
    if rules == NameRules::Windows && windows_reserved(&safe) {
        // `nul.tar.gz`: Windows reads the name up to the first dot.
        return at(out.find('.'));
    }
    safe
}

/// A name valid under `rules` for `name`; `None` when `name` is valid as it is. Pure: the
/// same name always maps to the same safe name, and the safe name is itself valid.
pub fn safe_name(name: &str, rules: NameRules) -> Option<String> {
    name_problem(name, rules)?;
    Some(tagged(name, name.as_bytes(), rules))
}

/// Where a wire path (`path`, with its exact bytes `raw` for non-UTF-8 names) is restored,
/// relative to the target, under `rules`; `true` when some component had to be renamed.
pub fn local_rel_path(
    path: &str,
    raw: Option<&[u8]>,
    rules: NameRules,
) -> Result<(PathBuf, bool), String> {
    match rules {
        // Every name the wire format allows (no NUL, no '/' inside a name, no '.'/'..') is
        // valid on Unix, byte for byte.
        NameRules::Unix => wire_to_os_path(path, raw)
            .map(|p| (p, false))
            .map_err(|e| e.to_string()),
        NameRules::Windows => {
            validate_wire_pair(path, raw).map_err(|e| e.to_string())?;
            let mut out = PathBuf::new();
            let mut renamed = false;
            for comp in path.split('/') {
                let bytes = wire_path_bytes(comp);
                let name = match std::str::from_utf8(&bytes) {
                    Ok(name) => match safe_name(name, rules) {
                        Some(safe) => {
                            renamed = true;
                            safe
                        }
                        None => name.to_string(),
                    },
                    // Windows names are Unicode: a non-UTF-8 name is shown with U+FFFD and
                    // tagged with its original bytes.
                    Err(_) => {
                        renamed = true;
                        tagged(&String::from_utf8_lossy(&bytes), &bytes, rules)
                    }
                };
                out.push(name);
            }
            Ok((out, renamed))
        }
    }
}

/// Longest file name (one path component), in bytes, that every supported file system holds.
pub const MAX_NAME_BYTES: usize = 255;
/// Suffix of the copy restored beside an existing, different local file.
pub const BESIDE_SUFFIX: &str = ".restored";
/// An extension longer than this (dot included) is treated as part of the stem.
const MAX_EXT_BYTES: usize = 16;

/// The bytes of a name or path (exact on Unix; the UTF-8 form elsewhere).
pub fn os_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(s.as_bytes())
    }
    #[cfg(not(unix))]
    {
        match s.to_string_lossy() {
            Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
            Cow::Owned(o) => Cow::Owned(o.into_bytes()),
        }
    }
}

/// The name or path whose bytes are `b` (inverse of [`os_bytes`]).
pub fn os_from_bytes(b: Vec<u8>) -> OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(b)
    }
    #[cfg(not(unix))]
    {
        OsString::from(String::from_utf8_lossy(&b).into_owned())
    }
}

/// A name derived from `original`: `insert` goes before the extension (when `keep_ext` and the
/// name has a short one), `append` at the very end. The one function behind every derived name
/// ([`beside_name`], [`case_name`]), so restore and validation always agree.
///
/// The result never exceeds [`MAX_NAME_BYTES`]: when `original` plus the additions would, the
/// stem is cut at a character boundary and `~` plus eight hex digits of the BLAKE3 of the whole
/// original name go after it (`<stem…>~1a2b3c4d<insert><.ext><append>`).
pub fn derived_name(original: &[u8], insert: &str, append: &str, keep_ext: bool) -> Vec<u8> {
    let dot = if keep_ext {
        original
            .iter()
            .rposition(|&b| b == b'.')
            .filter(|&d| d > 0 && original.len() - d <= MAX_EXT_BYTES)
    } else {
        None
    };
    let (stem, ext) = original.split_at(dot.unwrap_or(original.len()));
    let mut out = Vec::with_capacity(MAX_NAME_BYTES);
    if original.len() + insert.len() + append.len() <= MAX_NAME_BYTES {
        out.extend_from_slice(stem);
        out.extend_from_slice(insert.as_bytes());
        out.extend_from_slice(ext);
        out.extend_from_slice(append.as_bytes());
        return out;
    }
    let hash = blake3::hash(original).to_hex();
    let tag = format!("~{}", &hash.as_str()[..8]);
    let fixed = tag.len() + insert.len() + ext.len() + append.len();
    let mut keep = MAX_NAME_BYTES.saturating_sub(fixed).min(stem.len());
    // Never cut inside a UTF-8 sequence (continuation bytes are 0b10xx_xxxx).
    while keep > 0 && keep < stem.len() && stem[keep] & 0xC0 == 0x80 {
        keep -= 1;
    }
    out.extend_from_slice(&stem[..keep]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(ext);
    out.extend_from_slice(append.as_bytes());
    out
}

/// The name of the copy restored beside an existing, different `name` (`NAME.restored`).
pub fn beside_name(name: &OsStr) -> OsString {
    os_from_bytes(derived_name(&os_bytes(name), "", BESIDE_SUFFIX, true))
}

/// `rel` with its last component replaced by its [`beside_name`].
pub fn beside_path(rel: &Path) -> PathBuf {
    rel.with_file_name(beside_name(rel.file_name().unwrap_or_default()))
}

/// The case tag of an entry: six hex digits of the BLAKE3 of its exact path bytes, and of the
/// attempt number after the first attempt (used when a tagged name is taken too).
pub fn case_tag(path_bytes: &[u8], attempt: u32) -> String {
    let mut h = blake3::Hasher::new();
    h.update(path_bytes);
    if attempt > 0 {
        h.update(&attempt.to_le_bytes());
    }
    h.finalize().to_hex().as_str()[..6].to_string()
}

/// The name given to an entry whose path differs from an earlier one only by letter case, on a
/// target that does not tell them apart: `IMG.jpg` → `IMG~case-1a2b3c.jpg` (a folder keeps no
/// extension: `Photos.2019~case-1a2b3c`).
pub fn case_name(name: &OsStr, tag: &str, is_dir: bool) -> OsString {
    os_from_bytes(derived_name(
        &os_bytes(name),
        &format!("~case-{tag}"),
        "",
        !is_dir,
    ))
}

/// The case-folded form of a path's bytes: Unicode lowercase of every valid UTF-8 run, other
/// bytes as they are. Two paths a case-insensitive file system treats as one fold alike.
pub fn fold_case(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if valid.is_ascii() {
            out.extend(valid.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            out.extend_from_slice(valid.to_lowercase().as_bytes());
        }
        out.extend_from_slice(chunk.invalid());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use NameRules::{Unix, Windows};

    #[test]
    fn windows_reserved_device_names() {
        for n in [
            "CON",
            "con",
            "Con.txt",
            "PRN",
            "AUX.jpg",
            "NUL",
            "nul.tar.gz",
            "COM1",
            "com9.log",
            "LPT1",
            "lpt9",
            "CON .txt",
            "COM\u{b9}",
        ] {
            assert!(name_problem(n, Windows).is_some(), "{n}");
            let safe = safe_name(n, Windows).unwrap();
            assert!(name_problem(&safe, Windows).is_none(), "{n} -> {safe}");
        }
        for n in [
            "CONSOLE.txt",
            "COM10",
            "LPT0",
            "icon.png",
            "NULL",
            "AUXILIARY",
            "com",
        ] {
            assert_eq!(name_problem(n, Windows), None, "{n}");
            assert_eq!(safe_name(n, Windows), None, "{n}");
        }
        let s = safe_name("CON.txt", Windows).unwrap();
        assert!(s.starts_with("CON~") && s.ends_with(".txt"), "{s}");
    }

    #[test]
    fn windows_forbidden_characters_and_trailing_dots() {
        for n in [
            "a<b",
            "a>b",
            "Anna: ceremony",
            "say \"yes\"",
            "a|b",
            "what?.jpg",
            "star*.CR3",
            "back\\slash",
            "tab\there",
            "bell\u{7}",
            "ends.",
            "ends ",
            "dots...",
        ] {
            let safe = safe_name(n, Windows).unwrap_or_else(|| panic!("{n} must be mapped"));
            assert!(name_problem(&safe, Windows).is_none(), "{n} -> {safe}");
            assert!(
                !safe.contains(['<', '>', ':', '"', '|', '?', '*', '\\', '\t']),
                "{safe}"
            );
            assert!(!safe.ends_with('.') && !safe.ends_with(' '), "{safe}");
            // Deterministic.
            assert_eq!(safe_name(n, Windows).unwrap(), safe);
        }
        let s = safe_name("what?.jpg", Windows).unwrap();
        assert!(s.starts_with("what_~") && s.ends_with(".jpg"), "{s}");
        assert_eq!(s.len(), "what_~123456.jpg".len());
        // Different originals never share a safe name, even when '_' replaced different
        // characters.
        assert_ne!(
            safe_name("a?b", Windows).unwrap(),
            safe_name("a*b", Windows).unwrap()
        );
        // Names that are fine stay as they are (Unicode included).
        for n in [
            "IMG_0001.CR3",
            ".keepsakeignore",
            "Café Ceremony",
            "a_b",
            "x.y.z",
            "日本",
        ] {
            assert_eq!(safe_name(n, Windows), None, "{n}");
        }
    }

    #[test]
    fn unix_accepts_every_wire_name() {
        for n in [
            "CON",
            "nul.txt",
            "what?.jpg",
            "Anna: ceremony",
            "ends.",
            "ends ",
            "a|b",
            "tab\there",
        ] {
            assert_eq!(name_problem(n, Unix), None, "{n}");
            assert_eq!(safe_name(n, Unix), None, "{n}");
        }
        assert!(name_problem("a/b", Unix).is_some());
        assert!(name_problem("a\0b", Unix).is_some());
        assert_eq!(safe_name("a/b", Unix).unwrap().find('/'), None);
    }

    #[test]
    fn local_paths_map_each_component() {
        let (p, renamed) = local_rel_path("Weddings/CON/aux.txt", None, Windows).unwrap();
        assert!(renamed);
        let comps: Vec<String> = p.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        assert_eq!(comps.len(), 3);
        assert_eq!(comps[0], "Weddings");
        assert!(comps[1].starts_with("CON~"), "{comps:?}");
        assert!(comps[2].starts_with("aux~") && comps[2].ends_with(".txt"));
        let (p, renamed) = local_rel_path("DCIM/IMG_0001.CR3", None, Windows).unwrap();
        assert!(!renamed);
        assert_eq!(p, PathBuf::from("DCIM").join("IMG_0001.CR3"));
        // A non-UTF-8 name (shown with an escape, exact bytes in raw) gets a tagged name.
        let (shown, raw) = keepsake_common::path::bytes_to_wire(b"Caf\xe9");
        assert!(raw);
        let (p, renamed) = local_rel_path(&shown, Some(b"Caf\xe9"), Windows).unwrap();
        assert!(renamed);
        let name = p.to_string_lossy().into_owned();
        assert!(name.starts_with("Caf\u{fffd}~"), "{name}");
        let (p2, _) = local_rel_path(
            &keepsake_common::path::bytes_to_wire(b"Caf\xe8").0,
            Some(b"Caf\xe8"),
            Windows,
        )
        .unwrap();
        assert_ne!(p, p2);
        // Traversal is refused whatever the rules.
        for rules in [Unix, Windows] {
            assert!(local_rel_path("../x", None, rules).is_err());
            assert!(local_rel_path("a/../../x", None, rules).is_err());
        }
        // Unix keeps names byte for byte.
        let (p, renamed) = local_rel_path("Weddings/CON/what?.jpg", None, Unix).unwrap();
        assert!(!renamed);
        assert_eq!(p, PathBuf::from("Weddings/CON/what?.jpg"));
    }

    #[test]
    fn derived_names_fit_in_255_bytes() {
        // Short: plain suffix / infix.
        assert_eq!(
            beside_name(OsStr::new("IMG_0001.CR3")),
            OsString::from("IMG_0001.CR3.restored")
        );
        assert_eq!(
            beside_path(Path::new("a/b.jpg")),
            PathBuf::from("a/b.jpg.restored")
        );
        assert_eq!(
            case_name(OsStr::new("IMG.jpg"), "1a2b3c", false),
            OsString::from("IMG~case-1a2b3c.jpg")
        );
        assert_eq!(
            case_name(OsStr::new("Photos.2019"), "1a2b3c", true),
            OsString::from("Photos.2019~case-1a2b3c")
        );
        // 255-byte names: ASCII, multi-byte UTF-8 (cut at a character boundary), non-UTF-8.
        let ascii = format!("{}.jpg", "a".repeat(251));
        let utf8 = format!("{}.jpg", "é".repeat(125) + "x");
        let mut raw = vec![0xffu8; 250];
        raw.extend_from_slice(b".jpg\xfe");
        for original in [ascii.as_bytes().to_vec(), utf8.as_bytes().to_vec(), raw] {
            assert!(original.len() >= 251, "{}", original.len());
            let name = os_from_bytes(original.clone());
            for derived in [beside_name(&name), case_name(&name, "abcdef", false)] {
                let b = os_bytes(&derived).into_owned();
                assert!(b.len() <= MAX_NAME_BYTES, "{} bytes", b.len());
                assert_ne!(b, original);
                if std::str::from_utf8(&original).is_ok() {
                    assert!(std::str::from_utf8(&b).is_ok(), "cut inside a character");
                }
            }
            let b = os_bytes(&beside_name(&name)).into_owned();
            assert!(b.ends_with(BESIDE_SUFFIX.as_bytes()));
        }
        let b = os_bytes(&beside_name(OsStr::new(&ascii))).into_owned();
        assert!(b.ends_with(b".jpg.restored"), "the extension is kept");
        let c = os_bytes(&case_name(OsStr::new(&ascii), "abcdef", false)).into_owned();
        assert!(c.ends_with(b"~case-abcdef.jpg"));
        // Two long names with the same beginning never map to one.
        let a = format!("{}A.txt", "x".repeat(250));
        let b = format!("{}B.txt", "x".repeat(250));
        assert_ne!(beside_name(OsStr::new(&a)), beside_name(OsStr::new(&b)));
        assert_ne!(
            case_name(OsStr::new(&a), "t", false),
            case_name(OsStr::new(&b), "t", false)
        );
        // Deterministic.
        assert_eq!(beside_name(OsStr::new(&a)), beside_name(OsStr::new(&a)));
        // A name exactly at the limit once suffixed stays plain.
        let edge = "e".repeat(MAX_NAME_BYTES - BESIDE_SUFFIX.len());
        assert_eq!(
            beside_name(OsStr::new(&edge)),
            OsString::from(format!("{edge}{BESIDE_SUFFIX}"))
        );
    }

    #[test]
    fn case_folding_and_tags() {
        assert_eq!(fold_case(b"DCIM/IMG.JPG"), b"dcim/img.jpg".to_vec());
        assert_eq!(
            fold_case("Ärger/ÉTÉ".as_bytes()),
            "ärger/été".as_bytes().to_vec()
        );
        // Invalid bytes stay as they are (two different invalid names never fold alike).
        assert_eq!(fold_case(b"A\xff\xfeB"), b"a\xff\xfeb".to_vec());
        assert_ne!(fold_case(b"\xff"), fold_case(b"\xfe"));
        assert_eq!(case_tag(b"a/IMG.jpg", 0).len(), 6);
        assert_ne!(case_tag(b"a/IMG.jpg", 0), case_tag(b"a/img.JPG", 0));
        assert_ne!(case_tag(b"a/IMG.jpg", 0), case_tag(b"a/IMG.jpg", 1));
    }
}
