//! The commit of a job: the staged delta becomes file versions and a recovery point, in one
//! transaction, or nothing changes.
//!
//! Before anything is written the commit checks that every announced part is staged, that the
//! digest of what was staged equals the digest the agent computed over what it sent, and that
//! the committing machine holds a trusted copy of every blob the delta references (one it
//! uploaded or adopted; see `crate::packs`) — otherwise it answers with the missing IDs. A retry
//! of a committed job returns the same result without changing anything.
//!
//! On a crash the transaction rolls back: the job stays running with its staged parts, and the
//! agent's retry (or the lease sweep) finishes it.

use chrono::{DateTime, Utc};
use keepsake_common::api::{CommitRequest, Committed};
use keepsake_common::ids::{BlobId, DeltaDigest};
use uuid::Uuid;

use super::{job_of, stage::staged_digest, CatalogError, JobRow, NO_CONTENT};
use crate::db::{self, Actor, Db};

/// Most missing blob IDs listed in one commit refusal.
pub const MAX_MISSING_LISTED: i64 = 10_000;

/// The result of a commit attempt.
pub enum CommitOutcome {
    Committed(Committed),
    /// Blobs the delta references that the committing machine holds no trusted copy of (upload
    /// them and commit again).
    Missing {
        missing: Vec<BlobId>,
        truncated: bool,
    },
}

/// The entries that take effect: the last one per path across all parts.
const EFF: &str = "eff AS (SELECT DISTINCT ON (path) * FROM job_delta_entries \
                   WHERE backup_job_id = $1 ORDER BY path, part DESC, ordinal DESC)";

/// One entry per distinct file content of the delta (the first in sending order).
const REP: &str = "rep AS (SELECT DISTINCT ON (content_hash) content_hash, size, chunk_count, part, ordinal \
                   FROM eff WHERE op = 'upsert' AND entry_kind = 'file' ORDER BY content_hash, part, ordinal)";

/// Commits `job`: see the module documentation. The steps, in one transaction:
/// 1. [`lock_running_job`]: a retry of a committed job answers the same result;
/// 2. [`check_parts`]: every announced part is staged and the staged digest is what was sent;
/// 3. [`missing_blobs`]: the machine holds a trusted copy of every referenced blob;
/// 4. [`next_seq`]: the source's next sequence number (serialising commits per source);
/// 5. [`record_contents`]: new file contents and their chunk lists, per machine;
/// 6. [`apply_versions`]: live versions closed, new versions inserted;
/// 7. [`tally`]: what changed and the live totals;
/// 8. [`complete`]: the job, its manifest, checksum, recovery point and log; staging removed.
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
    let j = match lock_running_job(&tx, job, agent).await? {
        Locked::AlreadyCommitted(c) => return Ok(CommitOutcome::Committed(c)),
        Locked::Running(j) => j,
    };
    let digest = check_parts(&tx, job, req).await?;
    if let Some(missing) = missing_blobs(&tx, job, agent).await? {
        return Ok(missing);
    }
    let seq = next_seq(&tx, job, j.source_id).await?;
    record_contents(&tx, org, agent, job).await?;
    apply_versions(&tx, &j, job, agent, seq).await?;
    let totals = tally(&tx, j.source_id, seq).await?;
    let ids = Ids { org, agent, job };
    let point = complete(&tx, ids, &j, req, seq, &digest, &totals).await?;
    tx.commit().await?;
    Ok(CommitOutcome::Committed(Committed {
        job_id: job,
        seq,
        recovery_point_id: point,
        files_added: totals.added,
        files_changed: totals.changed,
        files_deleted: totals.deleted,
        file_count: totals.file_count,
        total_bytes: totals.total_bytes,
    }))
}

type Tx<'a> = tokio_postgres::Transaction<'a>;

#[derive(Clone, Copy)]
struct Ids {
    org: Uuid,
    agent: Uuid,
    job: Uuid,
}

enum Locked {
    AlreadyCommitted(Committed),
    Running(JobRow),
}

/// Step 1: the job, locked when it is running; a completed job answers its earlier result.
async fn lock_running_job(tx: &Tx<'_>, job: Uuid, agent: Uuid) -> Result<Locked, CatalogError> {
    // An agent may lock only its in-flight jobs, so look first, then lock.
    let j = job_of(tx, job, agent, false).await?;
    if j.status == "completed" {
        // A retry after the answer was lost: same result, nothing changes.
        return Ok(Locked::AlreadyCommitted(committed_result(tx, job).await?));
    }
    let j = if j.status == "running" {
        job_of(tx, job, agent, true).await?
    } else {
        j
    };
    if j.status == "completed" {
        return Ok(Locked::AlreadyCommitted(committed_result(tx, job).await?));
    }
    if j.status != "running" {
        return Err(CatalogError::Conflict(format!(
            "job {job} is {}; only a running job can be committed",
            j.status
        )));
    }
    Ok(Locked::Running(j))
}

/// Step 2: every announced part is staged, and what was staged is what the agent sent.
async fn check_parts(
    tx: &Tx<'_>,
    job: Uuid,
    req: &CommitRequest,
) -> Result<DeltaDigest, CatalogError> {
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
    super::touch(tx, job).await?;
    // What was staged is what the agent sent, or nothing is committed.
    let digest = staged_digest(tx, job).await?;
    if let Some(sent) = req.delta_digest {
        if sent != digest {
            return Err(CatalogError::Conflict(format!(
                "the staged delta does not match what the agent sent (digest {digest} instead of {sent}); \
                 nothing was committed: send the parts again in a new job"
            )));
        }
    }
    Ok(digest)
}

/// Step 3: the blobs the delta references that this machine holds no trusted copy of.
async fn missing_blobs(
    tx: &Tx<'_>,
    job: Uuid,
    agent: Uuid,
) -> Result<Option<CommitOutcome>, CatalogError> {
    let missing_rows = tx
        .query(
            "SELECT DISTINCT c.blob_id FROM job_delta_chunks c \
             WHERE c.backup_job_id = $1 \
               AND NOT EXISTS (SELECT 1 FROM blob_copies bc WHERE bc.organization_id = c.organization_id \
                               AND bc.blob_id = c.blob_id AND bc.uploaded_by_agent_id = $3) \
               AND NOT EXISTS (SELECT 1 FROM blob_adoptions a WHERE a.organization_id = c.organization_id \
                               AND a.agent_id = $3 AND a.blob_id = c.blob_id) \
             LIMIT $2",
            &[&job, &(MAX_MISSING_LISTED + 1), &agent],
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
        return Ok(Some(CommitOutcome::Missing { missing, truncated }));
    }
    Ok(None)
}

/// Step 4: the source's next sequence number (the row lock serialises commits per source).
async fn next_seq(tx: &Tx<'_>, job: Uuid, source: Uuid) -> Result<i64, CatalogError> {
    let seq: i64 = tx
        .query_one(
            "UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1, updated_at = now() \
             WHERE id = $1 RETURNING last_committed_seq",
            &[&source],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE backup_jobs SET seq = $2 WHERE id = $1",
        &[&job, &seq],
    )
    .await?;
    Ok(seq)
}

/// Step 5: this machine's new file contents and their chunk lists.
async fn record_contents(
    tx: &Tx<'_>,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT INTO file_contents (organization_id, content_hash, agent_id, size, chunk_count) \
         VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING",
        &[&org, &NO_CONTENT.as_slice(), &agent],
    )
    .await?;
    // This machine's new contents, then the chunk lists of exactly the content rows this job
    // created: a content the machine already has keeps its list, and two concurrent first
    // commits of one content cannot mix lists (the second waits on the row's key, then inserts
    // neither row nor list). Another machine's list is never used for this machine's files.
    tx.execute(
        &format!(
            "WITH {EFF}, {REP} \
             INSERT INTO file_contents (organization_id, content_hash, agent_id, size, chunk_count, created_by_job_id) \
             SELECT $2, content_hash, $3, size, chunk_count, $1 FROM rep \
             ON CONFLICT DO NOTHING"
        ),
        &[&job, &org, &agent],
    )
    .await?;
    tx.execute(
        &format!(
            "WITH {EFF}, {REP} \
             INSERT INTO content_chunks (organization_id, content_hash, agent_id, seq, blob_id, file_offset, plain_length) \
             SELECT $2, r.content_hash, $3, c.seq, c.blob_id, c.file_offset, c.plain_length \
             FROM file_contents fc \
             JOIN rep r ON r.content_hash = fc.content_hash \
             JOIN job_delta_chunks c ON c.backup_job_id = $1 AND c.part = r.part AND c.ordinal = r.ordinal \
             WHERE fc.created_by_job_id = $1 AND fc.organization_id = $2 AND fc.agent_id = $3"
        ),
        &[&job, &org, &agent],
    )
    .await?;
    Ok(())
}

/// Step 6: close the live versions the delta replaces or deletes, insert the new ones.
async fn apply_versions(
    tx: &Tx<'_>,
    j: &JobRow,
    job: Uuid,
    agent: Uuid,
    seq: i64,
) -> Result<(), CatalogError> {
    let src = j.source_id;
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
                    OR f.raw_path IS DISTINCT FROM e.raw_path \
                    OR f.link_group IS DISTINCT FROM e.link_group \
                    OR f.entry_mac IS DISTINCT FROM e.entry_mac)"
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
                 size, mtime, mode, content_hash, chunk_count, valid_from_seq, created_by_job_id, entry_mac, link_group) \
             SELECT e.organization_id, $3, $2, e.path, e.raw_path, e.entry_kind, e.symlink_target, \
                 e.size, e.mtime, e.mode, e.content_hash, e.chunk_count, $4, $1, e.entry_mac, e.link_group \
             FROM eff e \
             WHERE e.op = 'upsert' \
             ON CONFLICT (source_id, path) WHERE valid_to_seq IS NULL DO NOTHING"
        ),
        &[&job, &src, &agent, &seq],
    )
    .await?;
    Ok(())
}

/// What a commit changed and the live totals after it.
struct Totals {
    added: i64,
    changed: i64,
    deleted: i64,
    file_count: i64,
    total_bytes: i64,
}

/// Step 7: what changed, and the live totals (previous manifest plus this delta: O(delta), not
/// O(tree)).
async fn tally(tx: &Tx<'_>, src: Uuid, seq: i64) -> Result<Totals, CatalogError> {
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
    Ok(Totals {
        added,
        changed,
        deleted,
        file_count,
        total_bytes,
    })
}

/// Step 8: the job completed with its counters, the manifest, the checksum record, the recovery
/// point and the log line; the staging rows removed. Returns the recovery point.
async fn complete(
    tx: &Tx<'_>,
    ids: Ids,
    j: &JobRow,
    req: &CommitRequest,
    seq: i64,
    digest: &DeltaDigest,
    totals: &Totals,
) -> Result<Uuid, CatalogError> {
    let Ids { org, agent, job } = ids;
    let src = j.source_id;
    let Totals {
        added,
        changed,
        deleted,
        file_count,
        total_bytes,
    } = *totals;
    let entries: i64 = tx
        .query_one(
            "SELECT count(*) FROM job_delta_entries WHERE backup_job_id = $1",
            &[&job],
        )
        .await?
        .get(0);
    let bytes_new: i64 = tx
        .query_one(
            "SELECT coalesce(sum(c.cipher_length), 0)::bigint FROM blob_copies c JOIN packs p ON p.id = c.pack_id \
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
             success_rate = round($10::float8::numeric, 2), checksum_verification_passed = $14, \
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
            // Set only when the agent's digest was compared with the staged one (and matched).
            &req.delta_digest.map(|_| true),
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
                &digest.as_bytes().as_slice(),
            ],
        )
        .await?
        .get(0);
    if let Some(sent) = req.delta_digest {
        // Expected: what the agent computed over what it sent; actual: what the server recomputed
        // from what it staged (equal, or the commit was refused above).
        tx.execute(
            "INSERT INTO backup_checksums (organization_id, subject_kind, subject_ref, manifest_id, backup_job_id, agent_id, \
                 algorithm, expected_digest, actual_digest, status, verified_at) \
             VALUES ($1, 'manifest', $2, $7, $3, $4, 'blake3', $5, $6, 'verified', now())",
            &[
                &org,
                &manifest.to_string(),
                &job,
                &agent,
                &sent.as_bytes().as_slice(),
                &digest.as_bytes().as_slice(),
                &manifest,
            ],
        )
        .await?;
    }
    // The job's strategy (every job has one, the organisation's default when none was chosen)
    // decides how long the point is kept.
    let retention: DateTime<Utc> = tx
        .query_opt(
            "SELECT now() + retention_period FROM backup_strategies WHERE id = $1",
            &[&j.strategy_id],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let point: Uuid = tx
        .query_one(
            "INSERT INTO recovery_points (backup_job_id, organization_id, agent_id, source_id, seq, point_in_time, \
                 recovery_type, data_integrity_verified, backup_size_bytes, file_count, retention_expires_at, \
                 is_wedding_critical, metadata) \
             VALUES ($1, $2, $3, $4, $5, now(), $6::text::recovery_type_enum, false, $7, $8, \
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
    db::set_identity(tx, &Actor::System { org }).await?;
    tx.execute(
        "DELETE FROM job_delta_entries WHERE backup_job_id = $1",
        &[&job],
    )
    .await?;
    Ok(point)
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
