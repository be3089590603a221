//! What a file-system entry is to the agent, whoever looks at it: its kind, its catalog key and
//! the one stat fingerprint ([`Stat`]). The scanner (`crate::detect::scan`) makes [`Entry`]s,
//! the catalog records and compares them, the plan merges the two, and the pipeline's reader
//! checks a file's [`Stat`] before and after reading it. Plain data that depends on nothing
//! else in the agent, so every layer can use it.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

mod stat;

use serde::{Deserialize, Serialize};

use crate::relpath::RelPath;
pub(crate) use stat::ns;
pub use stat::Stat;

/// What kind of entry the catalog records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Folder.
    Dir,
    /// Symbolic link (recorded with its target, not followed).
    Symlink,
    /// Named pipe (recorded with its mode; it has no content and is never opened).
    Fifo,
}

impl EntryKind {
    /// Stable integer code used in the catalog.
    pub fn code(self) -> i64 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::Fifo => 3,
        }
    }

    /// Inverse of [`EntryKind::code`].
    pub fn from_code(code: i64) -> Option<EntryKind> {
        match code {
            0 => Some(EntryKind::File),
            1 => Some(EntryKind::Dir),
            2 => Some(EntryKind::Symlink),
            3 => Some(EntryKind::Fifo),
            _ => None,
        }
    }
}

/// The catalog key of a path: its bytes, plus a trailing `/` for a folder. Keys of everything
/// the scanner yields increase strictly in byte order.
pub fn catalog_key(rel: &RelPath, is_dir: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(rel.as_bytes().len() + 1);
    k.extend_from_slice(rel.as_bytes());
    if is_dir {
        k.push(b'/');
    }
    k
}

/// One file, folder or symlink the scanner saw, with the metadata used to detect changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the source root (raw bytes).
    pub rel: RelPath,
    /// File, folder or symlink.
    pub kind: EntryKind,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time (Unix `ctime`), nanoseconds since the epoch; 0 where unknown.
    pub ctime_ns: i64,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// Device number.
    pub device: u64,
    /// Number of names of the inode (hard links); 1 where the platform has none.
    pub nlink: u64,
    /// Unix mode bits including the file type.
    pub mode: u32,
    /// A symlink's target, raw bytes.
    pub symlink_target: Option<Vec<u8>>,
}

impl Entry {
    /// Its stat fingerprint.
    pub fn stat(&self) -> Stat {
        Stat {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            device: self.device,
            nlink: self.nlink,
            mode: self.mode,
            is_file: self.kind == EntryKind::File,
        }
    }

    /// The catalog key (see [`catalog_key`]).
    pub fn key(&self) -> Vec<u8> {
        catalog_key(&self.rel, self.kind == EntryKind::Dir)
    }
}
