//! Recording a backup job the server committed: each path's new version (state, content hash,
//! blob list in `file_blobs`, removal from `queue`) or its committed deletion.
//!
//! Crash behaviour: [`Catalog::record_commit`] is one `BEGIN IMMEDIATE` transaction, so a
//! crash leaves either none or all of a job's entries recorded; until it commits, the rows keep
//! their previous state and stay queued. A version only marks a row `committed` if the
//! metadata it was read with is still the metadata last seen; otherwise the row stays `pending`
//! and queued. Rows in state `deleted` are not revived by a version, and a committed deletion
//! removes only a row still in state `deleted` (its blob list and queue entry go with it by
//! `ON DELETE CASCADE`).

use rusqlite::{params, TransactionBehavior};

use super::{encode_blob_list, BlobRef, Catalog, Result, SourceId};

/// What a backup commit recorded for one path.
#[derive(Debug, Clone)]
pub enum CommitEntry {
    /// A version of the file was committed. The metadata is what the pipeline saw when it
    /// read the file: if the catalog has seen newer metadata since, the row stays pending.
    Version {
        /// Catalog key.
        key: Vec<u8>,
        /// Metadata read with the content.
        size: u64,
        /// mtime read with the content.
        mtime_ns: i64,
        /// ctime read with the content.
        ctime_ns: i64,
        /// inode read with the content.
        inode: u64,
        /// Content hash (opaque).
        content_hash: Option<[u8; 32]>,
        /// Ordered blobs.
        blobs: Vec<BlobRef>,
    },
    /// The deletion of the path was committed.
    Deletion {
        /// Catalog key.
        key: Vec<u8>,
    },
}

impl Catalog {
    /// Records what a backup job committed on the server under sequence `seq`.
    pub fn record_commit(
        &mut self,
        source: SourceId,
        seq: i64,
        entries: &[CommitEntry],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut set_version = tx.prepare_cached(
                "UPDATE files SET committed_seq = ?3, content_hash = ?4, error = NULL,
                     state = CASE WHEN size = ?5 AND mtime_ns = ?6 AND ctime_ns = ?7 AND inode = ?8
                                  THEN 'committed' ELSE 'pending' END
                 WHERE source_id = ?1 AND path = ?2 AND state != 'deleted'",
            )?;
            let mut set_blobs = tx.prepare_cached(
                "INSERT INTO file_blobs (source_id, path, blobs) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source_id, path) DO UPDATE SET blobs = excluded.blobs",
            )?;
            let mut state_of =
                tx.prepare_cached("SELECT state FROM files WHERE source_id = ?1 AND path = ?2")?;
            let mut unqueue =
                tx.prepare_cached("DELETE FROM queue WHERE source_id = ?1 AND path = ?2")?;
            let mut drop_deleted = tx.prepare_cached(
                "DELETE FROM files WHERE source_id = ?1 AND path = ?2 AND state = 'deleted'",
            )?;
            for e in entries {
                match e {
                    CommitEntry::Version {
                        key,
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                        content_hash,
                        blobs,
                    } => {
                        let n = set_version.execute(params![
                            source,
                            key,
                            seq,
                            content_hash.as_ref().map(|h| h.as_slice()),
                            *size as i64,
                            mtime_ns,
                            ctime_ns,
                            *inode as i64,
                        ])?;
                        if n == 0 {
                            continue;
                        }
                        set_blobs.execute(params![source, key, encode_blob_list(blobs)])?;
                        let state: String =
                            state_of.query_row(params![source, key], |r| r.get(0))?;
                        if state == "committed" {
                            unqueue.execute(params![source, key])?;
                        }
                    }
                    CommitEntry::Deletion { key } => {
                        drop_deleted.execute(params![source, key])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}
