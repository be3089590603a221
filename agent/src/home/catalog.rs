//! The home hands out the catalog: the one place that knows where `catalog.db` and its writer
//! lock live, so every caller opens the catalog the same way.
//!
//! * [`Home::catalog`] opens a connection for reading (SQLite in WAL mode lets readers run next
//!   to the writer);
//! * [`Home::catalog_writer`] takes the writer lock first and then opens the catalog; the lock
//!   is held as long as the returned [`CatalogWriter`] lives;
//! * [`Home::catalog_opener`] gives a cheap handle that opens further connections later, on
//!   another thread (the upload sink records confirmed blobs through its own connection while
//!   the backup writes with the writer's).
//!
//! Crash behaviour: nothing here holds state of its own. The writer lock is an `flock` that the
//! kernel releases when the process dies, and every catalog write is one SQLite transaction (see
//! `crate::catalog`), so a crash leaves the catalog as of its last committed transaction.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use super::{Home, HomeError, CATALOG_FILE, LOCK_FILE};
use crate::catalog::{Catalog, CatalogError, WriterLock};

/// The catalog opened by the one process allowed to write it (dropping it releases the lock).
#[derive(Debug)]
pub struct CatalogWriter {
    catalog: Catalog,
    _lock: WriterLock,
}

impl Deref for CatalogWriter {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        &self.catalog
    }
}

impl DerefMut for CatalogWriter {
    fn deref_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }
}

/// Opens connections to a home's catalog (for a thread that needs its own).
#[derive(Debug, Clone)]
pub struct CatalogOpener {
    path: PathBuf,
}

impl CatalogOpener {
    /// Opens a new connection.
    pub fn open(&self) -> Result<Catalog, CatalogError> {
        Catalog::open(&self.path)
    }
}

impl Home {
    /// Opens the catalog for reading (it is created, empty, when missing).
    pub fn catalog(&self) -> Result<Catalog, CatalogError> {
        self.ensure_for_catalog()?;
        Catalog::open(&self.path(CATALOG_FILE))
    }

    /// Opens the catalog for reading only when it exists (`None` before the first backup).
    pub fn existing_catalog(&self) -> Result<Option<Catalog>, CatalogError> {
        if self.path(CATALOG_FILE).is_file() {
            self.catalog().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Takes the writer lock without waiting ([`CatalogError::Locked`] when another process
    /// holds it), then opens the catalog.
    pub fn catalog_writer(&self) -> Result<CatalogWriter, CatalogError> {
        self.ensure_for_catalog()?;
        let lock = WriterLock::acquire(&self.path(LOCK_FILE))?;
        let catalog = self.catalog()?;
        Ok(CatalogWriter {
            catalog,
            _lock: lock,
        })
    }

    /// [`Home::ensure_dir`] with the catalog's error type.
    fn ensure_for_catalog(&self) -> Result<(), CatalogError> {
        self.ensure_dir().map_err(|e| match e {
            HomeError::Io { path, source } => CatalogError::Io {
                path: path.display().to_string(),
                source,
            },
            other => CatalogError::Io {
                path: self.dir().display().to_string(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// A handle that opens further connections to this home's catalog.
    pub fn catalog_opener(&self) -> CatalogOpener {
        CatalogOpener {
            path: self.path(CATALOG_FILE),
        }
    }
}
