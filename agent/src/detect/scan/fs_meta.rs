//! The scanner's view of the file system: the type of an entry as `lstat` reports it, an open
//! folder to `fstatat` its entries by name without following links, and the entry made of one
//! `lstat`. Read-only.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::fs;
use std::io;
use std::path::Path;

use super::{Entry, EntryKind, SkipReason};
use crate::detect::Stat;
use crate::entry::ns;
use crate::relpath::{os_bytes, RelPath};

/// The type of an entry as `lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Dir,
    File,
    Symlink,
    Special(SkipReason),
}

impl FileKind {
    pub(super) fn of(ft: &fs::FileType) -> FileKind {
        if ft.is_dir() {
            return FileKind::Dir;
        }
        if ft.is_file() {
            return FileKind::File;
        }
        if ft.is_symlink() {
            return FileKind::Symlink;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                return FileKind::Special(SkipReason::Fifo);
            }
            if ft.is_socket() {
                return FileKind::Special(SkipReason::Socket);
            }
            if ft.is_char_device() {
                return FileKind::Special(SkipReason::CharDevice);
            }
            if ft.is_block_device() {
                return FileKind::Special(SkipReason::BlockDevice);
            }
        }
        FileKind::Special(SkipReason::Other)
    }

    pub(super) fn is_dir(self) -> bool {
        self == FileKind::Dir
    }
    pub(super) fn is_file(self) -> bool {
        self == FileKind::File
    }
    pub(super) fn is_symlink(self) -> bool {
        self == FileKind::Symlink
    }
    pub(super) fn special(self) -> Option<SkipReason> {
        match self {
            FileKind::Special(r) => Some(r),
            _ => None,
        }
    }
}

/// An open folder, for `fstatat` of its entries by name.
#[cfg(unix)]
#[derive(Debug)]
pub(super) struct DirHandle(std::os::fd::OwnedFd);

#[cfg(unix)]
impl DirHandle {
    pub(super) fn open(path: &Path) -> Option<DirHandle> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let c = std::ffi::CString::new(os_bytes(path.as_os_str()).into_owned()).ok()?;
        #[cfg(target_os = "linux")]
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        #[cfg(not(target_os = "linux"))]
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
        Some(DirHandle(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    pub(super) fn lstat_at(&self, name: &std::ffi::OsStr) -> io::Result<(FileKind, Stat)> {
        use std::os::fd::AsRawFd;
        let c = std::ffi::CString::new(os_bytes(name).into_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"))?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, valid NUL-terminated name, `st` is writable.
        let rc = unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let kind = match (st.st_mode as libc::mode_t) & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFREG => FileKind::File,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Special(SkipReason::Fifo),
            libc::S_IFSOCK => FileKind::Special(SkipReason::Socket),
            libc::S_IFCHR => FileKind::Special(SkipReason::CharDevice),
            libc::S_IFBLK => FileKind::Special(SkipReason::BlockDevice),
            _ => FileKind::Special(SkipReason::Other),
        };
        let meta = Stat {
            is_file: kind == FileKind::File,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
            inode: st.st_ino as u64,
            device: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            mode: st.st_mode as u32,
        };
        Ok((kind, meta))
    }
}

#[cfg(not(unix))]
#[derive(Debug)]
pub(super) struct DirHandle;

#[cfg(not(unix))]
impl DirHandle {
    pub(super) fn open(_path: &Path) -> Option<DirHandle> {
        None
    }
    pub(super) fn lstat_at(&self, _name: &std::ffi::OsStr) -> io::Result<(FileKind, Stat)> {
        Err(io::Error::other("not supported"))
    }
}

/// The change-detection metadata of one `lstat`.
/// The entry the scanner reports for `stat` at `rel`.
pub(super) fn entry_of(
    stat: Stat,
    rel: RelPath,
    kind: EntryKind,
    symlink_target: Option<Vec<u8>>,
) -> Entry {
    Entry {
        rel,
        kind,
        size: stat.size,
        mtime_ns: stat.mtime_ns,
        ctime_ns: stat.ctime_ns,
        inode: stat.inode,
        device: stat.device,
        nlink: stat.nlink,
        mode: stat.mode,
        symlink_target,
    }
}
