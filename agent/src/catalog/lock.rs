//! The writer lock: a lock file next to the catalog so that only one process updates it at a
//! time (no table; the catalog's own transactions already serialise single writes).
//!
//! Crash behaviour: on Unix the lock is an `flock` on the open file, which the kernel releases
//! when the file is closed or the process dies, so a crash never leaves a stale lock; the
//! file itself stays (it is opened without truncating and never removed) and is harmless. On
//! other platforms the file is only created and opened; no lock is taken.

use std::path::{Path, PathBuf};

use super::{CatalogError, Result};

/// An exclusive lock on the catalog for one writer process (a catalog-updating scan, later
/// the daemon). Released when dropped or when the process dies.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock file `path` without waiting.
    pub fn acquire(path: &Path) -> Result<WriterLock> {
        let io_err = |e| CatalogError::Io {
            path: path.display().to_string(),
            source: e,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(CatalogError::Locked(path.display().to_string()));
                }
                return Err(io_err(e));
            }
        }
        Ok(WriterLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
