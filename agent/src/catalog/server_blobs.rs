//! The `server_blobs` table (blobs the server confirmed holding, stamped with its
//! garbage-collection epoch) and that epoch, kept in `agent_state` under `server_gc_epoch`.
//!
//! Crash behaviour: recording and forgetting a set of blobs are one `BEGIN IMMEDIATE`
//! transaction each; changing the epoch and pruning old confirmations are single statements
//! (each its own transaction). A crash therefore leaves each of them whole or not at all. A
//! confirmation counts only under the current epoch, so after an epoch change a blob
//! confirmed before it is reported unknown by [`Catalog::unknown_blobs`] until confirmed again.

use rusqlite::{params, TransactionBehavior};

use super::{now_ms, BlobId, BlobRef, Catalog, CatalogError, Result};

impl Catalog {
    /// The server's garbage-collection epoch this catalog trusts.
    pub fn server_epoch(&self) -> Result<i64> {
        let v: String = self.conn.query_row(
            "SELECT value FROM agent_state WHERE key = 'server_gc_epoch'",
            [],
            |r| r.get(0),
        )?;
        v.parse()
            .map_err(|_| CatalogError::Corrupt(format!("server_gc_epoch {v:?}")))
    }

    /// Moves to a new server epoch: every blob confirmed under another epoch stops counting
    /// as present (the server may have collected it).
    pub fn set_server_epoch(&mut self, epoch: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET value = ?1 WHERE key = 'server_gc_epoch'",
            [epoch.to_string()],
        )?;
        Ok(())
    }

    /// Records blobs the server confirmed holding, stamped with the current epoch.
    pub fn record_server_blobs(&mut self, blobs: &[BlobRef]) -> Result<()> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let epoch: String = tx.query_row(
            "SELECT value FROM agent_state WHERE key = 'server_gc_epoch'",
            [],
            |r| r.get(0),
        )?;
        let epoch: i64 = epoch
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("server_gc_epoch {epoch:?}")))?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO server_blobs (blob_id, plaintext_len, server_epoch, confirmed_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (blob_id) DO UPDATE SET server_epoch = excluded.server_epoch,
                     confirmed_at = excluded.confirmed_at, plaintext_len = excluded.plaintext_len",
            )?;
            for b in blobs {
                st.execute(params![b.id.as_slice(), b.len as i64, epoch, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the server is known to hold `id` under the current epoch.
    pub fn server_has_blob(&self, id: &BlobId) -> Result<bool> {
        let mut st = self.conn.prepare_cached(
            "SELECT 1 FROM server_blobs WHERE blob_id = ?1
               AND server_epoch = (SELECT CAST(value AS INTEGER) FROM agent_state WHERE key = 'server_gc_epoch')",
        )?;
        Ok(st.exists([id.as_slice()])?)
    }

    /// The ids among `ids` not known to be on the server under the current epoch.
    pub fn unknown_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        for id in ids {
            if !self.server_has_blob(id)? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Deletes blob confirmations from old epochs; returns how many.
    pub fn prune_stale_blobs(&mut self) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM server_blobs WHERE server_epoch !=
               (SELECT CAST(value AS INTEGER) FROM agent_state WHERE key = 'server_gc_epoch')",
            [],
        )?;
        Ok(n as u64)
    }

    /// Forgets that the server holds `ids` (it reported them missing: e.g. collected by the
    /// server's garbage collector), so they are uploaded again.
    pub fn forget_server_blobs(&mut self, ids: &[BlobId]) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached("DELETE FROM server_blobs WHERE blob_id = ?1")?;
            for id in ids {
                n += st.execute([id.as_slice()])? as u64;
            }
        }
        tx.commit()?;
        Ok(n)
    }
}
