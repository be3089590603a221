//! The one stat fingerprint: what `lstat`/`fstat` says about a file, as far as change detection
//! goes. The scanner records it, the catalog compares it with what it saw last, and the reader
//! compares it before and after reading a file to refuse torn copies — all with
//! [`Stat::same_version`]. Plain data; nothing is stored here.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::fs;
#[cfg(not(unix))]
use std::io;

/// What the file system says about one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time (Unix `ctime`; creation time elsewhere), nanoseconds; 0 where unknown.
    pub ctime_ns: i64,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// Device number (0 where the platform has none).
    pub device: u64,
    /// Number of names of the inode (1 where the platform has none).
    pub nlink: u64,
    /// Unix mode bits including the file type (0 where the platform has none).
    pub mode: u32,
    /// Whether it is a regular file.
    pub is_file: bool,
}

/// Seconds and nanoseconds as nanoseconds since the epoch (saturating).
pub(crate) fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl Stat {
    /// The stat of `md`.
    #[cfg(unix)]
    pub fn of(md: &fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            inode: md.ino(),
            device: md.dev(),
            nlink: md.nlink(),
            mode: md.mode(),
            is_file: md.file_type().is_file(),
        }
    }

    /// The stat of `md`.
    #[cfg(not(unix))]
    pub fn of(md: &fs::Metadata) -> Stat {
        fn to_ns(t: io::Result<std::time::SystemTime>) -> i64 {
            match t {
                Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
                    Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
                },
                Err(_) => 0,
            }
        }
        Stat {
            size: md.len(),
            mtime_ns: to_ns(md.modified()),
            ctime_ns: to_ns(md.created()),
            inode: 0,
            device: 0,
            nlink: 1,
            mode: 0,
            is_file: md.file_type().is_file(),
        }
    }

    /// Whether `self` and `other` describe the same version of the content: same size, times,
    /// inode and file-ness. Anything that rewrites a file in place changes its ctime, so an
    /// equal fingerprint means the content was not touched in between.
    pub fn same_version(&self, other: &Stat) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.inode == other.inode
            && self.is_file == other.is_file
    }
}
