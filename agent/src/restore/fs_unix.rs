//! Unix primitives of the restore target: a folder held open as a descriptor, and the
//! descriptor-relative calls made on it (`openat`, `mkdirat`, `renameat`, `mknodat`,
//! `symlinkat`, `linkat`, `utimensat`, ...). None of them follows a symbolic link: a name is
//! always looked up in an already opened folder, with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`.
//!
//! Holds no state of its own beyond open descriptors: nothing to recover after a crash.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::{Kind, Meta};

/// A folder of the target, open without following links.
pub(crate) struct Dir {
    fd: OwnedFd,
    /// False for an `O_PATH` descriptor (a folder we may traverse but not list or sync).
    readable: bool,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn meta_of(st: &rfs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        _ => Kind::Other,
    };
    Meta {
        kind,
        size: st.st_size as u64,
        mode: (st.st_mode as u32) & 0o7777,
        mtime_ns: i128::from(st.st_mtime as i64) * 1_000_000_000
            + i128::from(st.st_mtime_nsec as i64),
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    }
}

fn timestamps(mtime_ns: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    }
}

impl Dir {
    /// Opens the target's root folder (the path itself may go through links: it is the user's).
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = rfs::open(
            path,
            OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        Ok(Dir { fd, readable: true })
    }

    /// Another descriptor of the same folder.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            readable: self.readable,
        })
    }

    /// Opens the sub-folder `name`; a symlink or anything but a folder is an error
    /// (`ENOTDIR`/`ELOOP`).
    pub fn open_child(&self, name: &OsStr) -> io::Result<Dir> {
        match rfs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Dir { fd, readable: true }),
            // A folder we may cross but not list (mode --x): traverse it with O_PATH.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Err(Errno::ACCESS) => {
                let fd = rfs::openat(
                    &self.fd,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                Ok(Dir {
                    fd,
                    readable: false,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the folder `name`; `false` when something already has that name.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<bool> {
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode as _)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// What `name` is (the link itself for a symlink); `None` when nothing has that name.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta_of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the new file `name` (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) for writing.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Opens `name` for reading without following a link and without blocking on a FIFO.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Renames `from` (in this folder) to `to` in `to_dir`, replacing a non-folder there.
    pub fn rename(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rfs::renameat(&self.fd, from, &to_dir.fd, to)?)
    }

    /// Removes the non-folder `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(rfs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Creates the named pipe `name` (the umask applies; set the mode afterwards).
    pub fn mkfifo(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        #[cfg(not(any(target_os = "macos", target_os = "ios")))]
        {
            Ok(rfs::mknodat(
                &self.fd,
                name,
                FileType::Fifo,
                Mode::from_raw_mode(mode as _),
                0,
            )?)
        }
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        {
            use std::os::fd::AsRawFd;
            let c = CString::new(name.as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))?;
            // SAFETY: a valid descriptor and a NUL-terminated string that outlives the call.
            let rc = unsafe { libc::mkfifoat(self.fd.as_raw_fd(), c.as_ptr(), mode as _) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// Creates the symlink `name` pointing at `target` (taken as bytes, never resolved).
    pub fn symlink(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        let t = CString::new(target)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a link target"))?;
        Ok(rfs::symlinkat(t.as_c_str(), &self.fd, name)?)
    }

    /// The target of the symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> io::Result<Vec<u8>> {
        Ok(rfs::readlinkat(&self.fd, name, Vec::new())?.into_bytes())
    }

    /// Makes `name` a hard link of `src` in `src_dir` (a symlink `src` is linked, not followed).
    pub fn hard_link(&self, src_dir: &Dir, src: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rfs::linkat(
            &src_dir.fd,
            src,
            &self.fd,
            name,
            AtFlags::empty(),
        )?)
    }

    /// Sets the modification time of `name` itself (a symlink is not followed).
    pub fn set_mtime_nofollow(&self, name: &OsStr, mtime_ns: i64) -> io::Result<()> {
        Ok(rfs::utimensat(
            &self.fd,
            name,
            &timestamps(mtime_ns),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets this folder's mode and modification time (on the descriptor).
    pub fn set_mode_times(&self, mode: Option<u32>, mtime_ns: Option<i64>) -> io::Result<()> {
        if !self.readable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the folder cannot be opened (no read permission)",
            ));
        }
        if let Some(m) = mode {
            rfs::fchmod(&self.fd, Mode::from_raw_mode(m as _))?;
        }
        if let Some(t) = mtime_ns {
            rfs::futimens(&self.fd, &timestamps(t))?;
        }
        Ok(())
    }

    /// Flushes this folder's entries to disk (file systems that cannot are not an error).
    pub fn sync(&self) -> io::Result<()> {
        if !self.readable {
            return Ok(());
        }
        match rfs::fsync(&self.fd) {
            Ok(()) | Err(Errno::INVAL) | Err(Errno::BADF) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Flushes the whole file system that holds this folder.
    pub fn sync_fs(&self) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            Ok(rfs::syncfs(&self.fd)?)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            self.sync()
        }
    }

    /// Calls `each` with the name of every entry of this folder (not `.` and `..`).
    pub fn for_each_name(&self, mut each: impl FnMut(&OsStr)) -> io::Result<()> {
        if !self.readable {
            return Ok(());
        }
        let mut dir = rfs::Dir::read_from(&self.fd)?;
        while let Some(e) = dir.read() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                each(OsStr::from_bytes(name));
            }
        }
        Ok(())
    }
}

/// Sets the mode and modification time of an open file (on its descriptor).
pub(crate) fn set_file_meta(
    file: &File,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> io::Result<()> {
    if let Some(m) = mode {
        rfs::fchmod(file, Mode::from_raw_mode(m as _))?;
    }
    if let Some(t) = mtime_ns {
        rfs::futimens(file, &timestamps(t))?;
    }
    Ok(())
}

/// What an open file is.
pub(crate) fn file_meta(file: &File) -> io::Result<Meta> {
    Ok(meta_of(&rfs::fstat(file)?))
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

/// Whether this process runs as root (may keep set-user-ID, set-group-ID and sticky bits).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
