//! What a restore involves, before anything is written: the point's listing under the job's
//! prefixes, read page by page ([`for_each_entry`]), added up into a [`RestorePlan`] (with the
//! bytes still to write, files already complete in the target left out), and the space check
//! against the target's file system. Reads only: nothing here writes, so a crash leaves nothing.

use std::fs;
use std::io;
use std::path::Path;

use keepsake_common::api::{FileAtPoint, FileKind};
use serde::Serialize;
use uuid::Uuid;

use super::RecoveryError;
use crate::client::ApiClient;
use crate::restore::names::{local_rel_path, NameRules};

/// Calls `each` for every entry of `point` under `prefixes` (page by page: bounded memory).
pub fn for_each_entry(
    client: &ApiClient,
    point: Uuid,
    prefixes: &[String],
    chunks: bool,
    mut each: impl FnMut(FileAtPoint) -> Result<(), RecoveryError>,
) -> Result<(), RecoveryError> {
    for prefix in prefixes {
        let mut after: Option<String> = None;
        loop {
            let (files, more) = client.files_page(point, prefix, after.as_deref(), 1000, chunks)?;
            after = files.last().map(|f| f.path.clone());
            for f in files {
                each(f)?;
            }
            if !more || after.is_none() {
                break;
            }
        }
    }
    Ok(())
}

/// What a restore of some prefixes of a point involves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestorePlan {
    /// Files and symlinks.
    pub files: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Folders.
    pub dirs: u64,
    /// Bytes still to write: files not already complete (same size) in the target.
    pub bytes_needed: u64,
}

/// Lists what restoring `prefixes` of `point` into `target` involves (nothing is written).
pub fn plan_restore(
    client: &ApiClient,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
) -> Result<RestorePlan, RecoveryError> {
    let mut plan = RestorePlan::default();
    let target_exists = target.is_dir();
    for_each_entry(client, point, prefixes, false, |f| {
        match f.kind {
            FileKind::Directory => plan.dirs += 1,
            FileKind::Symlink | FileKind::Fifo => plan.files += 1,
            FileKind::File => {
                plan.files += 1;
                plan.bytes += f.size;
                let present = target_exists
                    && local_rel_path(&f.path, f.raw_path.as_deref(), rules)
                        .ok()
                        .and_then(|(rel, _)| fs::symlink_metadata(target.join(rel)).ok())
                        .is_some_and(|m| m.is_file() && m.len() == f.size);
                if !present {
                    plan.bytes_needed += f.size;
                }
            }
        }
        Ok(())
    })?;
    Ok(plan)
}

/// Free bytes for an unprivileged user on the file system that holds `path` (or, when it does
/// not exist yet, its nearest existing parent). In test builds,
/// [`crate::test_hooks::FREE_BYTES_ENV`] overrides it (the space check is otherwise impossible to
/// exercise without filling a disk).
pub fn free_space(path: &Path) -> io::Result<u64> {
    if let Some(v) = crate::test_hooks::free_bytes() {
        return Ok(v);
    }
    let mut p = path;
    loop {
        if p.exists() {
            return fs4::available_space(p);
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return fs4::available_space(Path::new(".")),
        }
    }
}

/// The outcome of a space check.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceCheck {
    /// Bytes the restore will write.
    pub needed: u64,
    /// Headroom kept on top (file-system overhead: blocks, folders).
    pub margin: u64,
    /// Free bytes on the target's file system.
    pub free: u64,
    /// Whether it fits.
    pub ok: bool,
}

/// Whether `needed` bytes (plus a margin of 1 % and 1 MiB) fit on `target`'s file system.
pub fn check_space(target: &Path, needed: u64) -> io::Result<SpaceCheck> {
    let free = free_space(target)?;
    let margin = needed / 100 + 1024 * 1024;
    Ok(SpaceCheck {
        needed,
        margin,
        free,
        ok: needed.saturating_add(margin) <= free,
    })
}
