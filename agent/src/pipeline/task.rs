//! What goes into the pipeline and what comes out, per file: a [`FileTask`] (where the file is and
//! what the scan saw), a [`FileResult`] (the content hash and chunk list of a file read
//! completely and consistently) or a [`FileError`]. Plain data.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::path::{Path, PathBuf};

use keepsake_common::delta::{ChunkRef, Entry as DeltaEntry};
use keepsake_common::ids::ContentHash;
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::{os_path_to_wire, PathError};
use serde::Serialize;

use crate::catalog::{BlobRef, CommitEntry, Priority};
use crate::detect::scan::Entry;
use crate::relpath::RelPath;

/// One file to back up: where it is and what the scan saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTask {
    /// Path relative to the source root (the delta's and the catalog's name for it).
    pub rel: RelPath,
    /// Where to read it.
    pub path: PathBuf,
    /// Size the scan saw.
    pub size: u64,
    /// mtime the scan saw (ns).
    pub mtime_ns: i64,
    /// ctime the scan saw (ns).
    pub ctime_ns: i64,
    /// Inode the scan saw.
    pub inode: u64,
    /// Mode the scan saw.
    pub mode: u32,
    /// (device, inode) when the scan saw more than one name for the inode (a hard link).
    pub hard_link: Option<(u64, u64)>,
    /// Work order: critical files are read first.
    pub priority: Priority,
}

impl FileTask {
    /// The task for a scanned regular file under `root`.
    pub fn from_entry(root: &Path, e: &Entry, priority: Priority) -> FileTask {
        FileTask {
            rel: e.rel.clone(),
            path: e.rel.under(root),
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            inode: e.inode,
            mode: e.mode,
            hard_link: (e.nlink > 1).then_some((e.device, e.inode)),
            priority,
        }
    }
}

/// A file read completely and consistently.
///
/// The metadata is what `fstat` said while the content was read (identical before and after),
/// which may be newer than what the scan saw: `Catalog::record_commit` then keeps the row
/// pending, so the next scan looks at it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileResult {
    /// Path relative to the source root.
    pub rel: RelPath,
    /// Size in bytes (the sum of the chunk lengths).
    pub size: u64,
    /// mtime (ns).
    pub mtime_ns: i64,
    /// ctime (ns).
    pub ctime_ns: i64,
    /// Inode.
    pub inode: u64,
    /// Unix mode (type and permission bits).
    pub mode: u32,
    /// (device, inode) of a file with more than one name (see [`FileTask::hard_link`]).
    pub hard_link: Option<(u64, u64)>,
    /// Keyed hash of the whole content.
    pub content_hash: ContentHash,
    /// The chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// Attempts it took (1 unless the file changed while being read).
    pub attempts: u32,
}

impl FileResult {
    /// The catalog key (the relative path's bytes).
    pub fn key(&self) -> Vec<u8> {
        self.rel.as_bytes().to_vec()
    }

    /// The blob list in the catalog's form.
    pub fn blob_refs(&self) -> Vec<BlobRef> {
        self.chunks
            .iter()
            .map(|c| BlobRef {
                id: c.id.0,
                len: u64::from(c.len),
            })
            .collect()
    }

    /// The delta's upsert entry (the path in wire form; non-UTF-8 names carry `raw_path`); its
    /// hard-link group is computed with `key`, and its MAC is set when the delta is written.
    pub fn delta_entry(&self, key: &EntryMacKey) -> Result<DeltaEntry, PathError> {
        let (path, raw_path) = os_path_to_wire(&self.rel.to_path())?;
        Ok(DeltaEntry::Upsert {
            path,
            raw_path,
            size: self.size,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            content_hash: self.content_hash,
            chunks: self.chunks.clone(),
            link: self.hard_link.map(|(dev, ino)| key.link_group(dev, ino)),
            mac: None,
        })
    }

    /// What `Catalog::record_commit` needs once the delta holding this result is committed.
    pub fn commit_entry(&self) -> CommitEntry {
        CommitEntry::Version {
            key: self.key(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            content_hash: Some(self.content_hash.0),
            blobs: self.blob_refs(),
        }
    }
}

/// The catalog entries of committed results (see [`FileResult::commit_entry`]). For a whole
/// job, stream them from the [`CommitJournal`] instead of collecting results.
pub fn catalog_entries(results: &[FileResult]) -> Vec<CommitEntry> {
    results.iter().map(FileResult::commit_entry).collect()
}

/// Why a file was not backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileErrorKind {
    /// Deleted before or while it was read.
    Vanished,
    /// Permission denied.
    Unreadable,
    /// No longer a regular file (replaced by a folder, a link, a fifo…).
    NotAFile,
    /// Kept changing over every attempt: requeue it for later.
    Changing,
    /// Another I/O error (e.g. a failing disk).
    Io,
    /// The pipeline stopped (cancelled or a fatal error) before the file was done.
    Aborted,
}

/// A file that could not be backed up (never fatal for the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileError {
    /// Path relative to the source root.
    pub rel: RelPath,
    /// What went wrong.
    pub kind: FileErrorKind,
    /// Details for people.
    pub message: String,
    /// The OS error number, if any.
    pub os_error: Option<i32>,
    /// Attempts made.
    pub attempts: u32,
}

/// The outcome of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Read and chunked.
    Done(FileResult),
    /// Not backed up.
    Failed(FileError),
}

impl FileOutcome {
    /// The file's relative path.
    pub fn rel(&self) -> &RelPath {
        match self {
            FileOutcome::Done(r) => &r.rel,
            FileOutcome::Failed(e) => &e.rel,
        }
    }
}
