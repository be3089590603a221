//! The catalog's self-check: SQLite's `integrity_check` and `foreign_key_check`, then the
//! catalog's own invariants across `files`, `queue`, `scans` and `scan_missing`.
//!
//! Crash behaviour: read-only; it writes nothing. It is the tool to confirm that a crash
//! (or anything else) left the catalog consistent: problems are returned in a
//! [`VerifyReport`], not repaired.

use serde::Serialize;

use super::{Catalog, Result};

/// Result of [`Catalog::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Problems found (empty when the catalog is consistent).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Catalog {
    /// Checks the database (`PRAGMA integrity_check`, foreign keys) and the catalog's own
    /// invariants.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut problems = Vec::new();
        {
            let mut st = self.conn.prepare("PRAGMA integrity_check")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            for r in rows {
                let r = r?;
                if r != "ok" {
                    problems.push(format!("integrity_check: {r}"));
                }
            }
        }
        {
            let mut st = self.conn.prepare("PRAGMA foreign_key_check")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(2)?)))?;
            for r in rows {
                let (table, parent) = r?;
                problems.push(format!("foreign key violation: {table} -> {parent}"));
            }
        }
        let checks: &[(&str, &str)] = &[
            (
                "scan_missing rows of scans that are not running",
                "SELECT count(*) FROM scan_missing WHERE scan_id NOT IN (SELECT id FROM scans WHERE status = 'running')",
            ),
            (
                "committed or deleted rows without a committed version",
                "SELECT count(*) FROM files WHERE state IN ('committed', 'deleted') AND committed_seq IS NULL",
            ),
            (
                "folder keys without a trailing '/' or other keys with one",
                "SELECT count(*) FROM files WHERE (kind = 1) != (substr(path, length(path), 1) = x'2f')",
            ),
            (
                "queued deletions of rows not in state deleted",
                "SELECT count(*) FROM queue q JOIN files f USING (source_id, path)
                 WHERE q.reason = 'deleted' AND f.state != 'deleted'",
            ),
            (
                "rows needing backup that are not queued",
                "SELECT count(*) FROM files f WHERE f.state IN ('pending', 'deleted')
                 AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.source_id = f.source_id AND q.path = f.path)",
            ),
        ];
        for (what, sql) in checks {
            let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
            if n != 0 {
                problems.push(format!("{what}: {n}"));
            }
        }
        Ok(VerifyReport { problems })
    }
}
