//! What the scanner reports: entries with their change-detection metadata, exclusions, skipped
//! entries and their reasons, issues, counters, options and errors — plain data, no state.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

use crate::exclude::MatchedRule;
use crate::relpath::RelPath;

pub use crate::entry::{catalog_key, Entry, EntryKind};

/// A path left out by an exclusion rule.
#[derive(Debug, Clone, Serialize)]
pub struct ExcludedEntry {
    /// Relative path.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// Whether it is a folder (whose content was not walked).
    pub is_dir: bool,
    /// Size of a file (0 for folders: their content is not walked).
    pub size: u64,
    /// The rule that excluded it.
    pub rule: MatchedRule,
}

/// Why an entry was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Named pipe (recorded as an entry, not skipped, unless symlinks are followed into one).
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Another kind the platform reports.
    Other,
    /// A folder on another file system (not entered unless configured).
    MountPoint,
}

impl SkipReason {
    /// Why such an entry is not backed up, in words.
    pub fn explain(self) -> &'static str {
        match self {
            SkipReason::Fifo => "a named pipe reached through a followed symlink: not opened",
            SkipReason::Socket => {
                "a Unix socket: it exists only while a program runs and holds no data"
            }
            SkipReason::CharDevice => {
                "a character device: a window on hardware, not a file to keep"
            }
            SkipReason::BlockDevice => {
                "a block device: a whole disk or partition, not a file to keep"
            }
            SkipReason::Other => "a kind of file this system reports but Keepsake cannot keep",
            SkipReason::MountPoint => {
                "another file system mounted here (not entered unless configured)"
            }
        }
    }
}

/// An entry that is neither backed up nor excluded by a rule.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedEntry {
    /// Relative path.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// Why.
    pub reason: SkipReason,
    /// The reason in words.
    pub detail: &'static str,
}

/// What went wrong with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// A folder could not be listed (its content is unknown).
    ReadDir,
    /// `lstat` failed.
    Stat,
    /// A symlink's target could not be read.
    ReadLink,
    /// The file cannot be opened for reading (found by probing).
    Unreadable,
    /// The entry changed type between listing and `lstat`.
    ChangedDuringScan,
    /// An ignore file or marker could not be read, or has an invalid pattern.
    Rules,
}

impl IssueKind {
    /// Whether the issue leaves the state of the path (and, for a folder, its subtree)
    /// unknown, so the catalog must not treat what it had there as deleted.
    pub fn hides_entries(self) -> bool {
        matches!(
            self,
            IssueKind::ReadDir
                | IssueKind::Stat
                | IssueKind::ReadLink
                | IssueKind::ChangedDuringScan
        )
    }
}

/// A non-fatal scan error.
#[derive(Debug, Clone, Serialize)]
pub struct ScanIssue {
    /// The path concerned.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// What failed.
    pub kind: IssueKind,
    /// The error text (including the OS error).
    pub message: String,
    /// The raw OS error number, if any.
    pub os_error: Option<i32>,
}

impl ScanIssue {
    pub(super) fn from_io(rel: RelPath, kind: IssueKind, e: &io::Error) -> ScanIssue {
        ScanIssue {
            rel,
            kind,
            message: e.to_string(),
            os_error: e.raw_os_error(),
        }
    }
}

/// One thing the scanner reports.
#[derive(Debug, Clone)]
pub enum ScanEvent {
    /// A file, folder or symlink to back up.
    Entry(Entry),
    /// Left out by a rule.
    Excluded(ExcludedEntry),
    /// A special file or mount point, not backed up.
    Skipped(SkippedEntry),
    /// An error (never fatal).
    Issue(ScanIssue),
}

/// Count and bytes for one exclusion rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTally {
    /// Entries excluded (a folder counts once; its content is not walked).
    pub count: u64,
    /// Bytes of excluded files.
    pub bytes: u64,
}

/// Scan counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Regular files yielded.
    pub files: u64,
    /// Folders yielded (not counting the root).
    pub dirs: u64,
    /// Symlinks yielded.
    pub symlinks: u64,
    /// Named pipes yielded.
    #[serde(default)]
    pub fifos: u64,
    /// Bytes of the regular files yielded.
    pub bytes: u64,
    /// Entries excluded by rules.
    pub excluded: u64,
    /// Bytes of excluded files.
    pub excluded_bytes: u64,
    /// Exclusions per rule ([`MatchedRule::label`]).
    pub excluded_by_rule: BTreeMap<String, RuleTally>,
    /// Special files and mount points skipped.
    pub skipped: u64,
    /// Errors.
    pub issues: u64,
}

impl ScanStats {
    /// Adds `other` into `self` (used to continue a resumed scan's counters).
    pub fn merge(&mut self, other: &ScanStats) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.fifos += other.fifos;
        self.bytes += other.bytes;
        self.excluded += other.excluded;
        self.excluded_bytes += other.excluded_bytes;
        for (k, v) in &other.excluded_by_rule {
            let t = self.excluded_by_rule.entry(k.clone()).or_default();
            t.count += v.count;
            t.bytes += v.bytes;
        }
        self.skipped += other.skipped;
        self.issues += other.issues;
    }
}

/// Scanner options.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Descend into folders on other file systems (default: no, they are reported).
    pub cross_filesystems: bool,
    /// Follow symlinks instead of recording them (default: no). Loops are reported as errors.
    pub follow_symlinks: bool,
    /// Open every regular file once to report unreadable files (default: no; the planner
    /// probes only the files that need backing up).
    pub probe_readable: bool,
    /// Resume after this catalog key: entries with keys up to it are not yielded and folders
    /// entirely before it are not walked.
    pub resume_after: Option<Vec<u8>>,
}

/// The scan cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root cannot be examined.
    #[error("cannot scan {path}: {source}")]
    Root {
        /// The root.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The root is not a folder.
    #[error("cannot scan {path}: not a folder")]
    NotADirectory {
        /// The root.
        path: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_roundtrip() {
        for k in [
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Fifo,
        ] {
            assert_eq!(EntryKind::from_code(k.code()), Some(k));
        }
        assert_eq!(EntryKind::from_code(9), None);
    }

    #[test]
    fn keys_of_dirs_end_in_slash() {
        let r = RelPath::from_bytes(b"a/b".to_vec()).unwrap();
        assert_eq!(catalog_key(&r, true), b"a/b/".to_vec());
        assert_eq!(catalog_key(&r, false), b"a/b".to_vec());
    }
}
