//! Portable primitives of the restore target for systems without the Unix descriptor-relative
//! calls (Windows). Same interface as the Unix version; each call checks what it touches with
//! `symlink_metadata` first and never follows a link on purpose, but the checks and the calls are
//! separate steps (path based), so a concurrent change of the target between them is not
//! excluded as it is on Unix. Named pipes are not supported.
//!
//! Holds no state beyond paths: nothing to recover after a crash.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{Kind, Meta};

/// A folder of the target, by path.
pub(crate) struct Dir {
    path: PathBuf,
}

fn meta_of(m: &fs::Metadata) -> Meta {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Meta {
        kind,
        size: m.len(),
        mode: if m.permissions().readonly() {
            0o444
        } else {
            0o644
        },
        mtime_ns,
        dev: 0,
        ino: 0,
    }
}

fn system_time(mtime_ns: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_nanos(mtime_ns.unsigned_abs());
    if mtime_ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

fn not_supported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} are not supported on this system"),
    )
}

impl Dir {
    /// Opens the target's root folder.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        if !fs::metadata(path)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
        }
        Ok(Dir {
            path: path.to_path_buf(),
        })
    }

    /// Another handle of the same folder.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            path: self.path.clone(),
        })
    }

    /// Opens the sub-folder `name`; a link or anything but a folder is an error.
    pub fn open_child(&self, name: &OsStr) -> io::Result<Dir> {
        let p = self.path.join(name);
        let m = fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() || !m.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
        }
        Ok(Dir { path: p })
    }

    /// Creates the folder `name`; `false` when something already has that name.
    pub fn mkdir(&self, name: &OsStr, _mode: u32) -> io::Result<bool> {
        match fs::create_dir(self.path.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What `name` is (the link itself for a link); `None` when nothing has that name.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match fs::symlink_metadata(self.path.join(name)) {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the new file `name` for writing (fails if anything has that name).
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path.join(name))
    }

    /// Opens `name` for reading (refusing a link).
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let p = self.path.join(name);
        if fs::symlink_metadata(&p)?.file_type().is_symlink() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a link"));
        }
        File::open(p)
    }

    /// Renames `from` (in this folder) to `to` in `to_dir`, replacing a file there.
    pub fn rename(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        fs::rename(self.path.join(from), to_dir.path.join(to))
    }

    /// Removes the non-folder `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    /// Named pipes are not supported here.
    pub fn mkfifo(&self, _name: &OsStr, _mode: u32) -> io::Result<()> {
        Err(not_supported("named pipes"))
    }

    /// Creates the symlink `name` pointing at `target`.
    pub fn symlink(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        let t = String::from_utf8_lossy(target).into_owned();
        #[cfg(windows)]
        {
            std::os::windows::fs::symlink_file(t, self.path.join(name))
        }
        #[cfg(not(windows))]
        {
            let _ = (t, name);
            Err(not_supported("symlinks"))
        }
    }

    /// The target of the symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> io::Result<Vec<u8>> {
        Ok(fs::read_link(self.path.join(name))?
            .to_string_lossy()
            .into_owned()
            .into_bytes())
    }

    /// Makes `name` a hard link of `src` in `src_dir`.
    pub fn hard_link(&self, src_dir: &Dir, src: &OsStr, name: &OsStr) -> io::Result<()> {
        fs::hard_link(src_dir.path.join(src), self.path.join(name))
    }

    /// Link times are not set here.
    pub fn set_mtime_nofollow(&self, _name: &OsStr, _mtime_ns: i64) -> io::Result<()> {
        Ok(())
    }

    /// Sets this folder's modification time (modes do not apply).
    pub fn set_mode_times(&self, _mode: Option<u32>, mtime_ns: Option<i64>) -> io::Result<()> {
        if let Some(t) = mtime_ns {
            let f = File::open(&self.path)?;
            f.set_modified(system_time(t))?;
        }
        Ok(())
    }

    /// Nothing to flush for a path.
    pub fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    /// Nothing to flush for a path.
    pub fn sync_fs(&self) -> io::Result<()> {
        Ok(())
    }

    /// Calls `each` with the name of every entry of this folder.
    pub fn for_each_name(&self, mut each: impl FnMut(&OsStr)) -> io::Result<()> {
        for e in fs::read_dir(&self.path)? {
            each(&e?.file_name());
        }
        Ok(())
    }
}

/// Sets the read-only flag and the modification time of an open file.
pub(crate) fn set_file_meta(
    file: &File,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> io::Result<()> {
    if let Some(t) = mtime_ns {
        file.set_modified(system_time(t))?;
    }
    if let Some(m) = mode {
        let mut p = file.metadata()?.permissions();
        p.set_readonly(m & 0o222 == 0);
        file.set_permissions(p)?;
    }
    Ok(())
}

/// What an open file is.
pub(crate) fn file_meta(file: &File) -> io::Result<Meta> {
    Ok(meta_of(&file.metadata()?))
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}

/// Special bits are never kept here.
pub(crate) fn is_root() -> bool {
    false
}
