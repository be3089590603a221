//! Validation of a restored tree: every entry of the point under the prefixes re-read from the
//! target where the restore put it (its placement replayed over the same listing) and compared
//! by size and keyed content hash, symlinks by target, pipes and folders by kind; files in the
//! target that the point lacks counted as extra. Reads only, never following a link: a crash
//! leaves nothing, and a rerun validates from scratch.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use keepsake_common::api::{FileAtPoint, FileKind, ValidationReport};
use keepsake_common::ids::ChunkIdKey;
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::wire_path_bytes;
use keepsake_common::prefix::walk_list;
use uuid::Uuid;

use super::{io_at, RecoveryError};
use crate::client::ApiClient;
use crate::restore::names::{beside_path, local_rel_path, os_bytes, NameRules};
use crate::restore::target::{file_meta, Dir, Kind, Target};
use crate::restore::{PlaceError, Placement, RestoreSource, BESIDE_SUFFIX};

/// At most this many problems are listed in a validation's details (all are counted).
pub const MAX_PROBLEMS_LISTED: usize = 200;

/// Counters of a running validation.
#[derive(Debug, Default)]
pub struct ValidateProgress {
    /// Entries checked.
    pub files: AtomicU64,
    /// Bytes re-read.
    pub bytes: AtomicU64,
}

pub(super) fn path_key(rel: &Path) -> u128 {
    let h = blake3::hash(&os_bytes(rel.as_os_str()));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// Where the restore writes a copy beside a different local file (the one naming rule both
/// use).
pub(super) fn beside(rel: &Path) -> PathBuf {
    beside_path(rel)
}

pub(super) enum Check {
    Ok(u64),
    Missing(String),
    Mismatch(String),
}

/// Re-reads `name` in `dir` (never following a symlink) and compares size and keyed content
/// hash.
pub(super) fn check_file(
    dir: &Dir,
    name: &OsStr,
    f: &FileAtPoint,
    key: &ChunkIdKey,
    progress: &ValidateProgress,
) -> Check {
    let meta = match dir.stat(name) {
        Ok(Some(m)) => m,
        Ok(None) => return Check::Missing("not found".into()),
        Err(e) => return Check::Missing(e.to_string()),
    };
    if meta.kind != Kind::File {
        return Check::Mismatch("not a regular file".into());
    }
    if meta.size != f.size {
        return Check::Mismatch(format!("{} bytes instead of {}", meta.size, f.size));
    }
    let Some(expected) = f.content_hash else {
        return Check::Mismatch("the point has no content hash for it".into());
    };
    let mut file = match open_nofollow(dir, name) {
        Ok(f) => f,
        Err(e) => return Check::Mismatch(format!("cannot read: {e}")),
    };
    let counted = |n| {
        progress.bytes.fetch_add(n, Ordering::Relaxed);
    };
    let (total, hash) = match crate::restore::files::content_hash_of(&mut file, key, counted) {
        Ok(x) => x,
        Err(e) => return Check::Mismatch(format!("read failed: {e}")),
    };
    if total != f.size {
        return Check::Mismatch(format!("read {total} bytes instead of {}", f.size));
    }
    if hash != expected {
        return Check::Mismatch("content differs from the backup (content hash)".into());
    }
    Check::Ok(total)
}

/// Opens `name` in `dir` for reading: a symlink is refused, a named pipe does not block, and
/// what was opened must be a regular file.
fn open_nofollow(dir: &Dir, name: &OsStr) -> io::Result<fs::File> {
    let file = dir.open_read(name)?;
    if file_meta(&file)?.kind != Kind::File {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The folders of the target, reached without following links; the last one is kept open.
struct Walker {
    target: Option<Target>,
    last: Option<(PathBuf, Dir)>,
}

impl Walker {
    /// The folder of `rel` and its name, or why not.
    fn parent_of<'a>(&mut self, rel: &'a Path) -> Result<(&Dir, &'a OsStr), Check> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Check::Missing("not a file path".into()));
        };
        if !matches!(&self.last, Some((p, _)) if p == parent) {
            self.last = None;
            let dir = self.folder(parent, rel)?;
            self.last = Some((parent.to_path_buf(), dir));
        }
        match &self.last {
            Some((_, d)) => Ok((d, name)),
            None => Err(Check::Missing("not found".into())),
        }
    }

    /// The folder `rel` itself.
    fn folder(&self, rel: &Path, entry: &Path) -> Result<Dir, Check> {
        let Some(t) = &self.target else {
            return Err(Check::Missing("the target folder does not exist".into()));
        };
        t.folder(rel, None, entry, &mut 0).map_err(|e| {
            if e.is_not_found() {
                Check::Missing(e.to_string())
            } else {
                Check::Mismatch(e.to_string())
            }
        })
    }
}

struct Problems {
    list: Vec<serde_json::Value>,
    total: u64,
}

impl Problems {
    fn add(&mut self, path: &str, problem: &str, detail: &str) {
        self.total += 1;
        if self.list.len() < MAX_PROBLEMS_LISTED {
            self.list.push(serde_json::json!({
                "path": path, "problem": problem, "detail": detail,
            }));
        }
    }

    fn count(&mut self, report: &mut ValidationReport, path: &str, c: Check) {
        match c {
            Check::Ok(n) => report.bytes_checked += n,
            Check::Missing(m) => {
                report.missing += 1;
                self.add(path, "missing", &m);
            }
            Check::Mismatch(m) => {
                report.mismatches += 1;
                self.add(path, "mismatch", &m);
            }
        }
    }
}

/// Checks a restored tree: every entry of `point` under `prefixes` must be in `target` where
/// the restore put it, with the point's size and keyed content hash (re-read from disk,
/// streamed), symlinks with their target, named pipes as pipes, folders as folders. Files in the
/// target under the prefixes that the point does not have are counted as `extra` (they do not
/// fail the validation). Memory: 16 bytes per expected path for the extra check, plus one read
/// buffer. The target's letter-case handling is probed (see [`validate_from`]).
pub fn validate(
    client: &ApiClient,
    key: &ChunkIdKey,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
    progress: &ValidateProgress,
) -> Result<ValidationReport, RecoveryError> {
    validate_from(client, key, point, prefixes, target, rules, None, progress)
}

/// [`validate`] with the listing read from `source`, and the target's letter-case handling
/// given (`case_insensitive`; `None`: probed). Where the restore put each entry is found by
/// replaying its placement ([`Placement`]) over the same listing, prefix by prefix and in the
/// same order: safe names under `rules`, names given to case collisions, copies beside a
/// different local file. Entries whose metadata MAC does not verify were refused by the restore
/// and count as missing. Folders are reached without following links: a symlink in a parent is
/// a mismatch, never followed.
#[allow(clippy::too_many_arguments)]
pub fn validate_from(
    source: &dyn RestoreSource,
    key: &ChunkIdKey,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
    case_insensitive: Option<bool>,
    progress: &ValidateProgress,
) -> Result<ValidationReport, RecoveryError> {
    let prefixes = walk_list(prefixes);
    let opened = match Target::open(target, false) {
        Ok(t) => Some(t),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(RecoveryError::Other(e.to_string())),
    };
    let root = match &opened {
        Some(_) => Some(fs::canonicalize(target).map_err(io_at(target))?),
        None => None,
    };
    let case_insensitive = match (case_insensitive, &opened) {
        (Some(v), _) => v,
        (None, Some(t)) => t.probe_case_insensitive().unwrap_or(false),
        (None, None) => false,
    };
    let mut walker = Walker {
        target: opened,
        last: None,
    };
    let mut report = ValidationReport::default();
    let mut problems = Problems {
        list: Vec::new(),
        total: 0,
    };
    let mut expected: HashSet<u128> = HashSet::new();
    let mut found_beside = 0u64;
    for prefix in &prefixes {
        // A fresh placement per prefix, as the restore makes one per prefix.
        let mut placement = Placement::new(rules, case_insensitive, EntryMacKey::derive(key))
            .map_err(|e| RecoveryError::Other(e.to_string()))?;
        let mut after: Option<String> = None;
        loop {
            let (files, more) = source.files_page(point, prefix, after.as_deref(), 1000, false)?;
            after = files.last().map(|f| f.path.clone());
            for f in files {
                let rel = match placement.place(&f) {
                    Ok(p) => p.rel,
                    Err(e) => {
                        report.missing += 1;
                        let detail = match e {
                            PlaceError::Refused { .. } => e.to_string(),
                            e => format!("cannot be restored here: {e}"),
                        };
                        problems.add(&f.path, "missing", &detail);
                        continue;
                    }
                };
                expected.insert(path_key(&rel));
                if f.kind != FileKind::Directory {
                    report.files_checked += 1;
                    progress.files.fetch_add(1, Ordering::Relaxed);
                }
                let check = match f.kind {
                    FileKind::Directory => match walker.folder(&rel, &rel) {
                        Ok(_) => Check::Ok(0),
                        Err(c) => c,
                    },
                    FileKind::Symlink => check_symlink(&mut walker, &rel, &f),
                    FileKind::Fifo | FileKind::File => {
                        let alt = beside(&rel);
                        expected.insert(path_key(&alt));
                        match walker.parent_of(&rel) {
                            Err(c) => c,
                            Ok((dir, name)) => {
                                let alt_name = alt.file_name().unwrap_or_default().to_os_string();
                                let (first, second) = if f.kind == FileKind::Fifo {
                                    (check_fifo(dir, name), check_fifo(dir, &alt_name))
                                } else {
                                    match check_file(dir, name, &f, key, progress) {
                                        Check::Ok(n) => {
                                            (Check::Ok(n), Check::Missing(String::new()))
                                        }
                                        first => {
                                            (first, check_file(dir, &alt_name, &f, key, progress))
                                        }
                                    }
                                };
                                match (first, second) {
                                    (Check::Ok(n), _) => Check::Ok(n),
                                    // The restore keeps a different local entry and writes beside it.
                                    (_, Check::Ok(n)) => {
                                        found_beside += 1;
                                        Check::Ok(n)
                                    }
                                    (_, Check::Mismatch(m)) => {
                                        Check::Mismatch(format!("{BESIDE_SUFFIX} copy: {m}"))
                                    }
                                    (first, _) => first,
                                }
                            }
                        }
                    }
                };
                problems.count(&mut report, &f.path, check);
            }
            if !more || after.is_none() {
                break;
            }
        }
    }
    // Extra: files (and symlinks) in the target under the prefixes that the point lacks.
    if let Some(root) = &root {
        for prefix in &prefixes {
            let start = if prefix.is_empty() {
                root.clone()
            } else {
                let Ok((rel, _)) = local_rel_path(prefix, None, rules) else {
                    continue;
                };
                // Never walk through a symlinked parent.
                let parent = rel.parent().unwrap_or(Path::new(""));
                if walker.folder(parent, &rel).is_err() {
                    continue;
                }
                root.join(rel)
            };
            if fs::symlink_metadata(&start).is_err() {
                continue;
            }
            let walk = walkdir::WalkDir::new(&start)
                .follow_links(false)
                .follow_root_links(false);
            for e in walk {
                let Ok(e) = e else { continue };
                if e.file_type().is_dir() {
                    continue;
                }
                let Ok(rel) = e.path().strip_prefix(root) else {
                    continue;
                };
                if !expected.contains(&path_key(rel)) {
                    report.extra += 1;
                    problems.add(
                        &rel.to_string_lossy(),
                        "extra",
                        "in the target but not in the recovery point",
                    );
                }
            }
        }
    }
    report.details = Some(serde_json::json!({
        "problems": problems.list,
        "problems_total": problems.total,
        "restored_beside": found_beside,
    }));
    Ok(report)
}

fn check_fifo(dir: &Dir, name: &OsStr) -> Check {
    match dir.stat(name) {
        Ok(Some(m)) if m.kind == Kind::Fifo => Check::Ok(0),
        Ok(Some(_)) => Check::Mismatch("not a named pipe".into()),
        Ok(None) => Check::Missing("not found".into()),
        Err(e) => Check::Missing(e.to_string()),
    }
}

fn check_symlink(walker: &mut Walker, rel: &Path, f: &FileAtPoint) -> Check {
    let want = f
        .symlink_target
        .as_deref()
        .map(wire_path_bytes)
        .unwrap_or_default();
    let (dir, name) = match walker.parent_of(rel) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match dir.stat(name) {
        Ok(Some(m)) if m.kind == Kind::Symlink => match dir.readlink(name) {
            Ok(t) if t == want => Check::Ok(0),
            Ok(t) => Check::Mismatch(format!(
                "symlink to {} instead of {}",
                String::from_utf8_lossy(&t),
                String::from_utf8_lossy(&want)
            )),
            Err(e) => Check::Mismatch(format!("cannot read the link: {e}")),
        },
        Ok(Some(_)) => Check::Mismatch("not a symlink".into()),
        Ok(None) => Check::Missing("not found".into()),
        Err(e) => Check::Missing(e.to_string()),
    }
}
