//! The state of a source at a recovery point: the live file versions under a path prefix, in
//! path order, page by page (keyset pagination), with each file's chunk list from the machine
//! that committed it, and each entry's MAC so the reader can check it. Read-only.
//!
//! Crash behaviour: read-only, so a crash changes nothing.

use keepsake_common::api::{FileAtPoint, FileKind};
use keepsake_common::delta::ChunkRef;
use keepsake_common::ids::{BlobId, ContentHash, EntryMac};
use uuid::Uuid;

use super::CatalogError;

/// The bounds of a path prefix: `p` itself and everything under `p/`.
fn prefix_condition(prefix: &str) -> Option<(String, String, String)> {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        return None;
    }
    Some((p.to_string(), format!("{p}/"), format!("{p}0")))
}

/// The files live at (`source`, `seq`) under `prefix`, in path order after `after`, at most
/// `limit` of them (keyset pagination: the caller passes the last path it got as `after`).
#[allow(clippy::too_many_arguments)]
pub async fn files_at(
    tx: &tokio_postgres::Transaction<'_>,
    source: Uuid,
    seq: i64,
    prefix: &str,
    after: Option<&str>,
    limit: i64,
    with_chunks: bool,
) -> Result<Vec<FileAtPoint>, CatalogError> {
    let (exact, lo, hi) = prefix_condition(prefix).unwrap_or_default();
    let has_prefix = !exact.is_empty();
    let after = after.unwrap_or("");
    let rows = tx
        .query(
            "SELECT f.path, f.raw_path, f.entry_kind, f.size, \
                    (extract(epoch FROM f.mtime) * 1000000)::bigint, f.mode, f.symlink_target, f.content_hash, \
                    CASE WHEN $7 AND f.entry_kind = 'file' THEN \
                        (SELECT array_agg(c.blob_id ORDER BY c.seq) FROM content_chunks c \
                          WHERE c.organization_id = f.organization_id AND c.content_hash = f.content_hash \
                            AND c.agent_id = f.agent_id) END, \
                    CASE WHEN $7 AND f.entry_kind = 'file' THEN \
                        (SELECT array_agg(c.plain_length ORDER BY c.seq) FROM content_chunks c \
                          WHERE c.organization_id = f.organization_id AND c.content_hash = f.content_hash \
                            AND c.agent_id = f.agent_id) END, \
                    f.entry_mac, f.link_group \
             FROM backup_files f \
             WHERE f.source_id = $1 AND f.valid_from_seq <= $2 AND (f.valid_to_seq IS NULL OR f.valid_to_seq > $2) \
               AND (NOT $3 OR f.path = $4 OR (f.path >= $5 AND f.path < $6)) \
               AND f.path > $8 \
             ORDER BY f.path LIMIT $9",
            &[
                &source,
                &seq,
                &has_prefix,
                &exact,
                &lo,
                &hi,
                &with_chunks,
                &after,
                &limit,
            ],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: &str = r.get(2);
        let kind = match kind {
            "symlink" => FileKind::Symlink,
            "directory" => FileKind::Directory,
            "fifo" => FileKind::Fifo,
            _ => FileKind::File,
        };
        let hash: Vec<u8> = r.get(7);
        let ids: Option<Vec<Vec<u8>>> = r.get(8);
        let lens: Option<Vec<i32>> = r.get(9);
        let chunks = match (ids, lens) {
            (Some(ids), Some(lens)) => ids
                .into_iter()
                .zip(lens)
                .filter_map(|(id, len)| {
                    <[u8; 32]>::try_from(id).ok().map(|id| ChunkRef {
                        id: BlobId(id),
                        len: len as u32,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        out.push(FileAtPoint {
            path: r.get(0),
            raw_path: r.get(1),
            kind,
            size: r.get::<_, i64>(3) as u64,
            mtime_ns: r.get::<_, Option<i64>>(4).map(|us| us.saturating_mul(1000)),
            mode: r.get::<_, Option<i32>>(5).map(|m| m as u32),
            symlink_target: r.get(6),
            content_hash: (kind == FileKind::File)
                .then(|| <[u8; 32]>::try_from(hash).ok().map(ContentHash))
                .flatten(),
            chunks,
            link: r.get::<_, Option<i64>>(11).map(|l| l as u64),
            mac: r
                .get::<_, Option<Vec<u8>>>(10)
                .and_then(|m| <[u8; 32]>::try_from(m).ok())
                .map(EntryMac),
        });
    }
    Ok(out)
}
