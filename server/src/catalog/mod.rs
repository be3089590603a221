//! The server's file catalog: staging of job deltas, the commit that turns a delta into file
//! versions and a recovery point, and the state of a source at a recovery point.
//!
//! A delta arrives in numbered parts, each a complete `keepsake_common::delta` stream. Parts are
//! parsed as they stream and written to the staging tables (`job_delta_entries`,
//! `job_delta_chunks`); a part is immutable once stored, so a retried upload is a no-op. The commit
//! checks that every referenced blob is in the index, then, in one transaction: advances the
//! source's sequence, records new contents and their chunk lists, closes the versions the delta
//! replaces or deletes, adds the new versions, and writes the manifest, checksum, recovery point
//! and log rows. Neither side holds a delta whole in memory.

use std::io::BufReader;

use chrono::{DateTime, Utc};
use futures::{pin_mut, TryStreamExt};
use keepsake_common::api::{CommitRequest, Committed, FileAtPoint, FileKind};
use keepsake_common::delta::{ChunkRef, DeltaReader, Entry};
use keepsake_common::ids::{BlobId, ContentHash};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::db::{self, Actor, Db, DbError};

/// Content hash that stands for "no content" (links and directories).
pub const NO_CONTENT: [u8; 32] = [0u8; 32];
/// Rows per staging insert.
const BATCH: usize = 1_000;
/// Most missing blob IDs listed in one commit refusal.
pub const MAX_MISSING_LISTED: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid delta: {0}")]
    BadDelta(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for CatalogError {
    fn from(e: tokio_postgres::Error) -> Self {
        CatalogError::Db(DbError::from(e))
    }
}

/// One staged entry, flattened for batch inserts.
struct StagedEntry {
    op: &'static str,
    path: String,
    raw_path: Option<Vec<u8>>,
    kind: &'static str,
    symlink_target: Option<String>,
    size: Option<i64>,
    mtime: Option<DateTime<Utc>>,
    mode: Option<i32>,
    content_hash: Option<[u8; 32]>,
    chunks: Vec<ChunkRef>,
}

fn mtime_of(ns: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

fn stage_entry(e: Entry) -> Result<StagedEntry, String> {
    e.validate()?;
    Ok(match e {
        Entry::Upsert {
            path,
            raw_path,
            size,
            mtime_ns,
            mode,
            content_hash,
            chunks,
        } => {
            let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            if total != size {
                return Err(format!(
                    "{path}: chunk lengths add up to {total} bytes but the file has {size}"
                ));
            }
            if size > i64::MAX as u64 {
                return Err(format!("{path}: size out of range"));
            }
            if chunks.len() > i32::MAX as usize {
                return Err(format!("{path}: too many chunks"));
            }
            StagedEntry {
                op: "upsert",
                path,
                raw_path,
                kind: "file",
                symlink_target: None,
                size: Some(size as i64),
                mtime: mtime_of(mtime_ns),
                mode: Some(mode as i32),
                content_hash: Some(*content_hash.as_bytes()),
                chunks,
            }
        }
        Entry::Delete { path, raw_path } => StagedEntry {
            op: "delete",
            path,
            raw_path,
            kind: "file",
            symlink_target: None,
            size: None,
            mtime: None,
            mode: None,
            content_hash: None,
            chunks: Vec::new(),
        },
        Entry::Symlink {
            path,
            raw_path,
            target,
            mtime_ns,
            ..
        } => StagedEntry {
            op: "upsert",
            path,
            raw_path,
            kind: "symlink",
            symlink_target: Some(target),
            size: Some(0),
            mtime: mtime_of(mtime_ns),
            mode: None,
            content_hash: Some(NO_CONTENT),
            chunks: Vec::new(),
        },
        Entry::Dir {
            path,
            raw_path,
            mtime_ns,
            mode,
        } => StagedEntry {
            op: "upsert",
            path,
            raw_path,
            kind: "directory",
            symlink_target: None,
            size: Some(0),
            mtime: mtime_of(mtime_ns),
            mode: Some(mode as i32),
            content_hash: Some(NO_CONTENT),
            chunks: Vec::new(),
        },
    })
}

/// The job a request refers to, as seen by its agent.
pub struct JobRow {
    pub source_id: Uuid,
    pub status: String,
    pub seq: Option<i64>,
    pub parent_seq: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub job_type: String,
    pub wedding_critical: bool,
    pub strategy_id: Option<Uuid>,
}

async fn job_of(
    tx: &tokio_postgres::Transaction<'_>,
    job: Uuid,
    agent: Uuid,
    lock: bool,
) -> Result<JobRow, CatalogError> {
    let sql = format!(
        "SELECT source_id, status::text, seq, parent_seq, started_at, job_type::text, \
                wedding_critical_priority, strategy_id \
         FROM backup_jobs WHERE id = $1 AND agent_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = tx
        .query_opt(&sql, &[&job, &agent])
        .await?
        .ok_or_else(|| CatalogError::NotFound(format!("no job {job} of this machine")))?;
    Ok(JobRow {
        source_id: row
            .get::<_, Option<Uuid>>(0)
            .ok_or_else(|| CatalogError::Conflict("the job has no source".into()))?,
        status: row.get(1),
        seq: row.get(2),
        parent_seq: row.get(3),
        started_at: row.get(4),
        job_type: row.get(5),
        wedding_critical: row.get(6),
        strategy_id: row.get(7),
    })
}

/// Stages delta part `part` of `job` from `body`. Returns (entries, newly stored).
pub async fn stage_part<R>(
    db: &Db,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
    part: u32,
    body: R,
) -> Result<(u64, bool), CatalogError>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let actor = Actor::Agent { org, agent };
    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &actor).await?;
    let j = job_of(&tx, job, agent, false).await?;
    if j.status != "running" {
        return Err(CatalogError::Conflict(format!(
            "job {job} is {}; parts can only be added to a running job",
            j.status
        )));
    }
    let part_i = part as i32;
    if let Some(row) = tx
        .query_opt(
            "SELECT count(*) FROM job_delta_entries WHERE backup_job_id = $1 AND part = $2 HAVING count(*) > 0",
            &[&job, &part_i],
        )
        .await?
    {
        // A retry of a part that was stored: nothing changes.
        return Ok((row.get::<_, i64>(0) as u64, false));
    }

    // Parse on a blocking thread (the delta reader is std::io) and insert in batches here.
    let (tx_batches, mut rx_batches) = mpsc::channel::<Result<Vec<StagedEntry>, String>>(4);
    let expected_source = j.source_id.to_string();
    let parser = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(body);
        let reader = match DeltaReader::new(BufReader::with_capacity(256 * 1024, bridge)) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx_batches.blocking_send(Err(e.to_string()));
                return;
            }
        };
        if reader.header().source != expected_source {
            let _ = tx_batches.blocking_send(Err(format!(
                "the delta is for source `{}`, but the job belongs to source {expected_source}",
                reader.header().source
            )));
            return;
        }
        let mut batch = Vec::with_capacity(BATCH);
        for entry in reader {
            let staged = entry.map_err(|e| e.to_string()).and_then(stage_entry);
            match staged {
                Ok(s) => {
                    batch.push(s);
                    if batch.len() == BATCH
                        && tx_batches
                            .blocking_send(Ok(std::mem::take(&mut batch)))
                            .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx_batches.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx_batches.blocking_send(Ok(batch));
        }
    });

    let mut ordinal: i32 = 0;
    let mut count: u64 = 0;
    while let Some(batch) = rx_batches.recv().await {
        let batch = batch.map_err(CatalogError::BadDelta)?;
        insert_batch(&tx, org, agent, job, part_i, &mut ordinal, &batch).await?;
        count += batch.len() as u64;
    }
    parser
        .await
        .map_err(|e| CatalogError::BadDelta(format!("delta parser failed: {e}")))?;
    if count == 0 {
        return Err(CatalogError::BadDelta(
            "a delta part must hold at least one entry".into(),
        ));
    }
    tx.commit().await.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            CatalogError::Conflict(format!("part {part} was stored concurrently"))
        } else {
            CatalogError::Db(e.into())
        }
    })?;
    Ok((count, true))
}

async fn insert_batch(
    tx: &tokio_postgres::Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
    part: i32,
    ordinal: &mut i32,
    batch: &[StagedEntry],
) -> Result<(), CatalogError> {
    let mut ords = Vec::with_capacity(batch.len());
    let mut ops = Vec::with_capacity(batch.len());
    let mut paths = Vec::with_capacity(batch.len());
    let mut raws: Vec<Option<&[u8]>> = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut targets = Vec::with_capacity(batch.len());
    let mut sizes = Vec::with_capacity(batch.len());
    let mut mtimes = Vec::with_capacity(batch.len());
    let mut modes = Vec::with_capacity(batch.len());
    let mut hashes: Vec<Option<&[u8]>> = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let (mut c_ord, mut c_seq, mut c_id, mut c_off, mut c_len) = (
        Vec::new(),
        Vec::new(),
        Vec::<&[u8]>::new(),
        Vec::new(),
        Vec::new(),
    );
    for e in batch {
        let o = *ordinal;
        *ordinal += 1;
        ords.push(o);
        ops.push(e.op);
        paths.push(e.path.as_str());
        raws.push(e.raw_path.as_deref());
        kinds.push(e.kind);
        targets.push(e.symlink_target.as_deref());
        sizes.push(e.size);
        mtimes.push(e.mtime);
        modes.push(e.mode);
        hashes.push(e.content_hash.as_ref().map(|h| h.as_slice()));
        counts.push(e.chunks.len() as i32);
        let mut off: i64 = 0;
        for (i, c) in e.chunks.iter().enumerate() {
            c_ord.push(o);
            c_seq.push(i as i32);
            c_id.push(c.id.as_bytes().as_slice());
            c_off.push(off);
            c_len.push(c.len as i32);
            off += i64::from(c.len);
        }
    }
    let params: [&(dyn ToSql + Sync); 16] = [
        &org,
        &job,
        &agent,
        &part,
        &ords,
        &ops,
        &paths,
        &raws,
        &kinds,
        &targets,
        &sizes,
        &mtimes,
        &modes,
        &hashes,
        &counts,
        &(batch.len() as i32),
    ];
    tx.execute(
        "INSERT INTO job_delta_entries (organization_id, backup_job_id, agent_id, part, ordinal, op, path, raw_path, \
             entry_kind, symlink_target, size, mtime, mode, content_hash, chunk_count) \
         SELECT $1, $2, $3, $4, u.* FROM unnest($5::int[], $6::text[], $7::text[], $8::bytea[], $9::text[], \
             $10::text[], $11::bigint[], $12::timestamptz[], $13::int[], $14::bytea[], $15::int[]) AS u \
         WHERE $16 > 0",
        &params,
    )
    .await?;
    for start in (0..c_ord.len()).step_by(50_000) {
        let end = (start + 50_000).min(c_ord.len());
        tx.execute(
            "INSERT INTO job_delta_chunks (organization_id, backup_job_id, agent_id, part, ordinal, seq, blob_id, file_offset, plain_length) \
             SELECT $1, $2, $3, $4, u.* FROM unnest($5::int[], $6::int[], $7::bytea[], $8::bigint[], $9::int[]) AS u",
            &[
                &org,
                &job,
                &agent,
                &part,
                &&c_ord[start..end],
                &&c_seq[start..end],
                &&c_id[start..end],
                &&c_off[start..end],
                &&c_len[start..end],
            ],
        )
        .await?;
    }
    Ok(())
}

/// The result of a commit attempt.
pub enum CommitOutcome {
    Committed(Committed),
    /// Blobs the delta references that the server does not hold (upload them and commit again).
    Missing {
        missing: Vec<BlobId>,
        truncated: bool,
    },
}

/// The entries that take effect: the last one per path across all parts.
const EFF: &str = "eff AS (SELECT DISTINCT ON (path) * FROM job_delta_entries \
                   WHERE backup_job_id = $1 ORDER BY path, part DESC, ordinal DESC)";

/// Commits `job`: see the module documentation.
pub async fn commit(
    db: &Db,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
    req: &CommitRequest,
) -> Result<CommitOutcome, CatalogError> {
    let actor = Actor::Agent { org, agent };
    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &actor).await?;
    // An agent may lock only its in-flight jobs, so look first, then lock.
    let j = job_of(&tx, job, agent, false).await?;
    if j.status == "completed" {
        // A retry after the answer was lost: same result, nothing changes.
        return Ok(CommitOutcome::Committed(committed_result(&tx, job).await?));
    }
    let j = if j.status == "running" {
        job_of(&tx, job, agent, true).await?
    } else {
        j
    };
    if j.status == "completed" {
        return Ok(CommitOutcome::Committed(committed_result(&tx, job).await?));
    }
    if j.status != "running" {
        return Err(CatalogError::Conflict(format!(
            "job {job} is {}; only a running job can be committed",
            j.status
        )));
    }
    let parts = tx
        .query_one(
            "SELECT count(DISTINCT part), coalesce(max(part), -1) FROM job_delta_entries WHERE backup_job_id = $1",
            &[&job],
        )
        .await?;
    let (n_parts, max_part): (i64, i32) = (parts.get(0), parts.get(1));
    if n_parts != i64::from(req.parts) || max_part != req.parts as i32 - 1 {
        return Err(CatalogError::Conflict(format!(
            "the commit announces {} part(s) but {} are stored (highest {}); send the missing parts",
            req.parts, n_parts, max_part
        )));
    }
    let missing_rows = tx
        .query(
            "SELECT DISTINCT c.blob_id FROM job_delta_chunks c \
             WHERE c.backup_job_id = $1 \
               AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.organization_id = c.organization_id AND b.blob_id = c.blob_id) \
             LIMIT $2",
            &[&job, &(MAX_MISSING_LISTED + 1)],
        )
        .await?;
    if !missing_rows.is_empty() {
        let truncated = missing_rows.len() as i64 > MAX_MISSING_LISTED;
        let missing = missing_rows
            .iter()
            .take(MAX_MISSING_LISTED as usize)
            .filter_map(|r| {
                <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0))
                    .ok()
                    .map(BlobId)
            })
            .collect();
        return Ok(CommitOutcome::Missing { missing, truncated });
    }

    // The source's next sequence number (the row lock serialises commits per source).
    let seq: i64 = tx
        .query_one(
            "UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1, updated_at = now() \
             WHERE id = $1 RETURNING last_committed_seq",
            &[&j.source_id],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE backup_jobs SET seq = $2 WHERE id = $1",
        &[&job, &seq],
    )
    .await?;

    let src = j.source_id;
    tx.execute(
        "INSERT INTO file_contents (organization_id, content_hash, size, chunk_count, created_by_agent_id) \
         VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
        &[&org, &NO_CONTENT.as_slice(), &agent],
    )
    .await?;
    // New contents and their chunk lists (a content already known keeps its list). Both inserts
    // see the snapshot from before the statement, so "not in file_contents yet" selects the new
    // contents for both; a concurrent commit of the same content makes both inserts no-ops.
    // (Not a join of `rep` with the RETURNING rows: CTE scans have no statistics, and the
    // planner's nested loop over two 100,000-row CTEs took minutes.)
    tx.execute(
        &format!(
            "WITH {EFF}, \
             rep AS (SELECT DISTINCT ON (content_hash) content_hash, size, chunk_count, part, ordinal \
                     FROM eff WHERE op = 'upsert' AND entry_kind = 'file' ORDER BY content_hash, part, ordinal), \
             fresh AS (SELECT r.* FROM rep r WHERE NOT EXISTS \
                       (SELECT 1 FROM file_contents fc WHERE fc.organization_id = $2 AND fc.content_hash = r.content_hash)), \
             ins AS (INSERT INTO file_contents (organization_id, content_hash, size, chunk_count, created_by_agent_id) \
                     SELECT $2, content_hash, size, chunk_count, $3 FROM fresh \
                     ON CONFLICT DO NOTHING) \
             INSERT INTO content_chunks (organization_id, content_hash, seq, blob_id, file_offset, plain_length) \
             SELECT $2, r.content_hash, c.seq, c.blob_id, c.file_offset, c.plain_length \
             FROM fresh r \
             JOIN job_delta_chunks c ON c.backup_job_id = $1 AND c.part = r.part AND c.ordinal = r.ordinal \
             ON CONFLICT DO NOTHING"
        ),
        &[&job, &org, &agent],
    )
    .await?;
    // Close the live versions the delta replaces or deletes.
    tx.execute(
        &format!(
            "WITH {EFF} \
             UPDATE backup_files f SET valid_to_seq = $3, valid_to = now(), closed_by_job_id = $1 \
             FROM eff e \
             WHERE f.source_id = $2 AND f.valid_to_seq IS NULL AND f.path = e.path \
               AND (e.op = 'delete' \
                    OR f.entry_kind <> e.entry_kind \
                    OR f.content_hash <> e.content_hash \
                    OR f.size <> e.size \
                    OR f.mtime IS DISTINCT FROM e.mtime \
                    OR f.mode IS DISTINCT FROM e.mode \
                    OR f.symlink_target IS DISTINCT FROM e.symlink_target \
                    OR f.raw_path IS DISTINCT FROM e.raw_path)"
        ),
        &[&job, &src, &seq],
    )
    .await?;
    // A deleted directory takes everything under it.
    tx.execute(
        &format!(
            "WITH {EFF} \
             UPDATE backup_files f SET valid_to_seq = $3, valid_to = now(), closed_by_job_id = $1 \
             FROM eff e \
             WHERE e.op = 'delete' AND f.source_id = $2 AND f.valid_to_seq IS NULL \
               AND f.path >= e.path || '/' AND f.path < e.path || '0'"
        ),
        &[&job, &src, &seq],
    )
    .await?;
    if j.job_type == "full" {
        // A full delta is the complete state: whatever it does not mention is gone.
        tx.execute(
            &format!(
                "WITH {EFF} \
                 UPDATE backup_files f SET valid_to_seq = $3, valid_to = now(), closed_by_job_id = $1 \
                 WHERE f.source_id = $2 AND f.valid_to_seq IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM eff e WHERE e.path = f.path AND e.op = 'upsert')"
            ),
            &[&job, &src, &seq],
        )
        .await?;
    }
    // The new versions (an upsert identical to the live version adds nothing: that version is
    // still live, so the insert conflicts on the one-live-version index). Not a NOT EXISTS
    // anti-join: probing the index this statement is filling made a 100,000-file commit
    // quadratic (every probe visibility-checked the rows inserted before it).
    tx.execute(
        &format!(
            "WITH {EFF} \
             INSERT INTO backup_files (organization_id, agent_id, source_id, path, raw_path, entry_kind, symlink_target, \
                 size, mtime, mode, content_hash, chunk_count, valid_from_seq, created_by_job_id) \
             SELECT e.organization_id, $3, $2, e.path, e.raw_path, e.entry_kind, e.symlink_target, \
                 e.size, e.mtime, e.mode, e.content_hash, e.chunk_count, $4, $1 \
             FROM eff e \
             WHERE e.op = 'upsert' \
             ON CONFLICT (source_id, path) WHERE valid_to_seq IS NULL DO NOTHING"
        ),
        &[&job, &src, &agent, &seq],
    )
    .await?;

    // What changed, and the live totals (previous manifest plus this delta: O(delta), not O(tree)).
    let c = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE i.path IS NOT NULL AND c.path IS NULL), \
                    count(*) FILTER (WHERE i.path IS NOT NULL AND c.path IS NOT NULL), \
                    count(*) FILTER (WHERE i.path IS NULL AND c.path IS NOT NULL), \
                    coalesce(sum(i.size) FILTER (WHERE i.entry_kind = 'file'), 0)::bigint \
                      - coalesce(sum(c.size) FILTER (WHERE c.entry_kind = 'file'), 0)::bigint, \
                    count(*) FILTER (WHERE i.entry_kind = 'file') - count(*) FILTER (WHERE c.entry_kind = 'file') \
             FROM (SELECT path, size, entry_kind FROM backup_files WHERE source_id = $1 AND valid_from_seq = $2) i \
             FULL JOIN (SELECT path, size, entry_kind FROM backup_files WHERE source_id = $1 AND valid_to_seq = $2) c \
             USING (path)",
            &[&src, &seq],
        )
        .await?;
    let (added, changed, deleted, d_bytes, d_files): (i64, i64, i64, i64, i64) =
        (c.get(0), c.get(1), c.get(2), c.get(3), c.get(4));
    let prev = tx
        .query_opt(
            "SELECT file_count, total_bytes FROM backup_manifests WHERE source_id = $1 AND seq = $2",
            &[&src, &(seq - 1)],
        )
        .await?;
    let (prev_files, prev_bytes): (i64, i64) = prev.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0));
    let file_count = (prev_files + d_files).max(0);
    let total_bytes = (prev_bytes + d_bytes).max(0);

    let digest = manifest_digest(&tx, job).await?;
    let entries: i64 = tx
        .query_one(
            "SELECT count(*) FROM job_delta_entries WHERE backup_job_id = $1",
            &[&job],
        )
        .await?
        .get(0);
    let bytes_new: i64 = tx
        .query_one(
            "SELECT coalesce(sum(b.cipher_length), 0)::bigint FROM blobs b JOIN packs p ON p.id = b.pack_id \
             WHERE p.uploaded_by_agent_id = $1 AND p.created_at >= $2",
            &[&agent, &j.started_at.unwrap_or_else(Utc::now)],
        )
        .await?
        .get(0);
    let files_failed = req.files_failed.min(i32::MAX as u32) as i32;
    let processed = entries.min(i64::from(i32::MAX)) as i32;
    let success = if processed + files_failed == 0 {
        100.0
    } else {
        100.0 * f64::from(processed) / f64::from(processed + files_failed)
    };
    tx.execute(
        "UPDATE backup_jobs SET status = 'completed', completed_at = now(), \
             duration_seconds = greatest(0, extract(epoch FROM now() - coalesce(started_at, now())))::int, \
             files_processed = $2, files_failed = $3, files_added = $4, files_changed = $5, files_deleted = $6, \
             bytes_processed = $7, bytes_sent = $8, bytes_new = $9, \
             success_rate = round($10::float8::numeric, 2), checksum_verification_passed = true, \
             backup_manifest = jsonb_build_object('seq', $11::bigint, 'file_count', $12::bigint, 'total_bytes', $13::bigint), \
             heartbeat_at = now() \
         WHERE id = $1",
        &[
            &job,
            &processed,
            &files_failed,
            &(added as i32),
            &(changed as i32),
            &(deleted as i32),
            &(req.bytes_read.min(i64::MAX as u64) as i64),
            &(req.bytes_sent.min(i64::MAX as u64) as i64),
            &bytes_new,
            &success,
            &seq,
            &file_count,
            &total_bytes,
        ],
    )
    .await?;
    let manifest: Uuid = tx
        .query_one(
            "INSERT INTO backup_manifests (organization_id, backup_job_id, agent_id, source_id, seq, parent_seq, \
                 file_count, total_bytes, files_added, files_changed, files_deleted, bytes_new, manifest_digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            &[
                &org,
                &job,
                &agent,
                &src,
                &seq,
                &(seq - 1),
                &file_count,
                &total_bytes,
                &added,
                &changed,
                &deleted,
                &bytes_new,
                &digest.as_slice(),
            ],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO backup_checksums (organization_id, subject_kind, subject_ref, manifest_id, backup_job_id, agent_id, \
             algorithm, expected_digest, actual_digest, status, verified_at) \
         VALUES ($1, 'manifest', $2, $6, $3, $4, 'blake3', $5, $5, 'verified', now())",
        &[&org, &manifest.to_string(), &job, &agent, &digest.as_slice(), &manifest],
    )
    .await?;
    let retention: DateTime<Utc> = match j.strategy_id {
        Some(s) => tx
            .query_opt(
                "SELECT now() + retention_period FROM backup_strategies WHERE id = $1",
                &[&s],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        None => DateTime::<Utc>::MAX_UTC,
    };
    let point: Uuid = tx
        .query_one(
            "INSERT INTO recovery_points (backup_job_id, organization_id, agent_id, source_id, seq, point_in_time, \
                 recovery_type, data_integrity_verified, backup_size_bytes, file_count, retention_expires_at, \
                 is_wedding_critical, metadata) \
             VALUES ($1, $2, $3, $4, $5, now(), $6::text::recovery_type_enum, true, $7, $8, \
                     CASE WHEN $9 >= '9999-01-01'::timestamptz THEN 'infinity'::timestamptz ELSE $9 END, $10, \
                     jsonb_build_object('files_added', $11::bigint, 'files_changed', $12::bigint, 'files_deleted', $13::bigint)) \
             RETURNING id",
            &[
                &job,
                &org,
                &agent,
                &src,
                &seq,
                &(if j.job_type == "full" {
                    "full_recovery"
                } else {
                    "point_in_time_recovery"
                }),
                &total_bytes,
                &(file_count.min(i64::from(i32::MAX)) as i32),
                &retention,
                &j.wedding_critical,
                &added,
                &changed,
                &deleted,
            ],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO backup_logs (organization_id, backup_job_id, agent_id, log_level, component, message, details) \
         VALUES ($1, $2, $3, 'info', 'commit', $4, jsonb_build_object('seq', $5::bigint, 'recovery_point', $6::text))",
        &[
            &org,
            &job,
            &agent,
            &format!(
                "committed seq {seq}: {added} added, {changed} changed, {deleted} deleted; {file_count} files live"
            ),
            &seq,
            &point.to_string(),
        ],
    )
    .await?;
    // Staging rows are not history: the server's own actor removes them.
    db::set_identity(&tx, &Actor::System { org }).await?;
    tx.execute(
        "DELETE FROM job_delta_entries WHERE backup_job_id = $1",
        &[&job],
    )
    .await?;
    tx.commit().await?;
    Ok(CommitOutcome::Committed(Committed {
        job_id: job,
        seq,
        recovery_point_id: point,
        files_added: added,
        files_changed: changed,
        files_deleted: deleted,
        file_count,
        total_bytes,
    }))
}

/// BLAKE3 over the effective entries in path order: a digest of what the commit applied.
async fn manifest_digest(
    tx: &tokio_postgres::Transaction<'_>,
    job: Uuid,
) -> Result<[u8; 32], CatalogError> {
    let stream = tx
        .query_raw(
            &format!(
                "WITH {EFF} SELECT op, path, coalesce(content_hash, ''::bytea), coalesce(size, -1), \
                 coalesce(extract(epoch FROM mtime)::float8, 0), coalesce(mode, -1), entry_kind \
                 FROM eff ORDER BY path"
            ),
            [&job as &(dyn ToSql + Sync)],
        )
        .await?;
    pin_mut!(stream);
    let mut h = blake3::Hasher::new();
    while let Some(row) = stream.try_next().await? {
        let op: &str = row.get(0);
        let path: &str = row.get(1);
        let hash: &[u8] = row.get(2);
        h.update(op.as_bytes());
        h.update(&[0]);
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(hash);
        h.update(&row.get::<_, i64>(3).to_le_bytes());
        h.update(&row.get::<_, f64>(4).to_le_bytes());
        h.update(&row.get::<_, i32>(5).to_le_bytes());
        h.update(row.get::<_, &str>(6).as_bytes());
    }
    Ok(*h.finalize().as_bytes())
}

/// The result of a job committed earlier.
async fn committed_result(
    tx: &tokio_postgres::Transaction<'_>,
    job: Uuid,
) -> Result<Committed, CatalogError> {
    let row = tx
        .query_one(
            "SELECT m.seq, p.id, m.files_added, m.files_changed, m.files_deleted, m.file_count, m.total_bytes \
             FROM backup_manifests m JOIN recovery_points p ON p.backup_job_id = m.backup_job_id \
             WHERE m.backup_job_id = $1",
            &[&job],
        )
        .await?;
    Ok(Committed {
        job_id: job,
        seq: row.get(0),
        recovery_point_id: row.get(1),
        files_added: row.get(2),
        files_changed: row.get(3),
        files_deleted: row.get(4),
        file_count: row.get(5),
        total_bytes: row.get(6),
    })
}

/// Marks a running job failed (the agent gave up); its staged parts are discarded.
pub async fn fail(
    db: &Db,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
    error: &str,
) -> Result<(), CatalogError> {
    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &Actor::Agent { org, agent }).await?;
    let j = job_of(&tx, job, agent, false).await?;
    if j.status != "running" {
        return Err(CatalogError::Conflict(format!("job {job} is {}", j.status)));
    }
    let msg: String = error.chars().take(2000).collect();
    tx.execute(
        "UPDATE backup_jobs SET status = 'failed', completed_at = now(), error_message = $2 WHERE id = $1",
        &[&job, &msg],
    )
    .await?;
    tx.execute(
        "INSERT INTO backup_logs (organization_id, backup_job_id, agent_id, log_level, component, message) \
         VALUES ($1, $2, $3, 'error', 'agent', $4)",
        &[&org, &job, &agent, &msg],
    )
    .await?;
    db::set_identity(&tx, &Actor::System { org }).await?;
    tx.execute(
        "DELETE FROM job_delta_entries WHERE backup_job_id = $1",
        &[&job],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

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
                          WHERE c.organization_id = f.organization_id AND c.content_hash = f.content_hash) END, \
                    CASE WHEN $7 AND f.entry_kind = 'file' THEN \
                        (SELECT array_agg(c.plain_length ORDER BY c.seq) FROM content_chunks c \
                          WHERE c.organization_id = f.organization_id AND c.content_hash = f.content_hash) END \
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
        });
    }
    Ok(out)
}
