//! The `sources` table: the watched roots, their labels and the server's id for each.
//!
//! Crash behaviour: each write here is a single statement (its own SQLite transaction), so a
//! crash leaves the row either before or after it. Creating a source is an
//! `INSERT … ON CONFLICT DO NOTHING` followed by a lookup, so a repeated or concurrent
//! [`Catalog::ensure_source`] ends with one row. A source's `last_completed_generation` is
//! written by the scan-completing transaction (see `scans`).

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_ms, Catalog, CatalogError, Result, SourceId};
use crate::relpath::{bytes_to_path, os_bytes};

/// A watched root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Catalog id.
    pub id: SourceId,
    /// Root path (canonical).
    pub root: PathBuf,
    /// Label for people.
    pub label: Option<String>,
    /// The server's id for this source, once registered.
    pub server_source_id: Option<String>,
    /// Generation of the last completed scan.
    pub last_completed_generation: Option<i64>,
}

fn path_bytes(p: &Path) -> Vec<u8> {
    os_bytes(p.as_os_str()).into_owned()
}

impl Catalog {
    fn source_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Source> {
        let root: Vec<u8> = row.get(1)?;
        Ok(Source {
            id: row.get(0)?,
            root: bytes_to_path(&root).into_owned(),
            label: row.get(2)?,
            server_source_id: row.get(3)?,
            last_completed_generation: row.get(4)?,
        })
    }

    /// The source whose root is exactly `root`.
    pub fn source_by_root(&self, root: &Path) -> Result<Option<Source>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, root, label, server_source_id, last_completed_generation FROM sources WHERE root = ?1",
        )?;
        Ok(st
            .query_row([path_bytes(root)], Self::source_from_row)
            .optional()?)
    }

    /// All sources.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, root, label, server_source_id, last_completed_generation FROM sources ORDER BY id",
        )?;
        let rows = st.query_map([], Self::source_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The source for `root`, created if needed.
    pub fn ensure_source(&mut self, root: &Path, label: Option<&str>) -> Result<Source> {
        if let Some(s) = self.source_by_root(root)? {
            return Ok(s);
        }
        self.conn.execute(
            "INSERT INTO sources (root, root_display, label, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (root) DO NOTHING",
            params![
                path_bytes(root),
                root.display().to_string(),
                label,
                now_ms()
            ],
        )?;
        self.source_by_root(root)?
            .ok_or_else(|| CatalogError::Corrupt("source vanished after insert".to_string()))
    }

    /// Records the server's id for a source.
    pub fn set_server_source_id(&mut self, source: SourceId, server_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sources SET server_source_id = ?2 WHERE id = ?1",
            params![source, server_id],
        )?;
        Ok(())
    }
}
