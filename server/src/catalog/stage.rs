//! Staging of a job's delta parts: each part is parsed as it streams (every entry validated,
//! MACs required) and inserted into `job_delta_entries` / `job_delta_chunks` in batches; a part is
//! immutable once stored, so a retried upload changes nothing. Also the digest of what was
//! staged, recomputed at commit time.
//!
//! The body is first read to the end into an anonymous temporary file (at most
//! `MAX_DELTA_PART_BODY` bytes), and only then is a database connection taken: a client that
//! sends slowly holds a file, never one of the pool's connections.
//!
//! On a crash: the temporary file has no name and disappears with the process; a part is
//! stored in one transaction, so it is either all there or absent (and the
//! agent sends it again).

use std::io::BufReader;

use chrono::{DateTime, Utc};
use futures::{pin_mut, TryStreamExt};
use keepsake_common::api::MAX_DELTA_PART_BODY;
use keepsake_common::delta::{ChunkRef, DeltaDigester, DeltaReader, Entry};
use keepsake_common::ids::{BlobId, ContentHash, DeltaDigest, EntryMac};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{job_of, CatalogError, NO_CONTENT};
use crate::db::{self, Actor, Db};

/// Rows per staging insert.
const BATCH: usize = 1_000;

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
    mtime_ns: Option<i64>,
    mac: Option<[u8; 32]>,
    link: Option<i64>,
}

/// A staged link, folder or named pipe (no content).
fn no_content(
    kind: &'static str,
    path: String,
    raw_path: Option<Vec<u8>>,
    mtime_ns: i64,
    mode: Option<u32>,
    mac: Option<[u8; 32]>,
) -> StagedEntry {
    StagedEntry {
        op: "upsert",
        path,
        raw_path,
        kind,
        symlink_target: None,
        size: Some(0),
        mtime: mtime_of(mtime_ns),
        mode: mode.map(|m| m as i32),
        content_hash: Some(NO_CONTENT),
        chunks: Vec::new(),
        mtime_ns: Some(mtime_ns),
        mac,
        link: None,
    }
}

pub(super) fn mtime_of(ns: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

fn stage_entry(e: Entry) -> Result<StagedEntry, String> {
    e.validate_sealed()?;
    let mac = e.mac().map(|m| *m.as_bytes());
    Ok(match e {
        Entry::Upsert {
            path,
            raw_path,
            size,
            mtime_ns,
            mode,
            content_hash,
            chunks,
            link,
            ..
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
                mtime_ns: Some(mtime_ns),
                mac,
                // Stored bit for bit in a signed column.
                link: link.map(|l| l as i64),
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
            mtime_ns: None,
            mac: None,
            link: None,
        },
        Entry::Symlink {
            path,
            raw_path,
            target,
            mtime_ns,
            ..
        } => StagedEntry {
            symlink_target: Some(target),
            ..no_content("symlink", path, raw_path, mtime_ns, None, mac)
        },
        Entry::Dir {
            path,
            raw_path,
            mtime_ns,
            mode,
            ..
        } => no_content("directory", path, raw_path, mtime_ns, Some(mode), mac),
        Entry::Fifo {
            path,
            raw_path,
            mtime_ns,
            mode,
            ..
        } => no_content("fifo", path, raw_path, mtime_ns, Some(mode), mac),
    })
}

/// Reads `body` to its end into an anonymous temporary file and returns it rewound.
async fn spool<R: AsyncRead + Unpin>(mut body: R) -> Result<tokio::fs::File, CatalogError> {
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| CatalogError::Spool(e.to_string()))?
        .map_err(|e| CatalogError::Spool(e.to_string()))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut limited = (&mut body).take(MAX_DELTA_PART_BODY + 1);
    let n = tokio::io::copy(&mut limited, &mut file)
        .await
        .map_err(|e| CatalogError::BadDelta(format!("reading the part: {e}")))?;
    if n > MAX_DELTA_PART_BODY {
        return Err(CatalogError::BadDelta(format!(
            "the part is larger than {MAX_DELTA_PART_BODY} bytes"
        )));
    }
    file.flush()
        .await
        .map_err(|e| CatalogError::Spool(e.to_string()))?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(|e| CatalogError::Spool(e.to_string()))?;
    Ok(file)
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
    let body = spool(body).await?;
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
    super::touch(&tx, job).await?;
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
    let mut mtime_ns = Vec::with_capacity(batch.len());
    let mut macs: Vec<Option<&[u8]>> = Vec::with_capacity(batch.len());
    let mut links = Vec::with_capacity(batch.len());
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
        mtime_ns.push(e.mtime_ns);
        macs.push(e.mac.as_ref().map(|m| m.as_slice()));
        links.push(e.link);
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
    let params: [&(dyn ToSql + Sync); 19] = [
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
        &mtime_ns,
        &macs,
        &links,
    ];
    tx.execute(
        "INSERT INTO job_delta_entries (organization_id, backup_job_id, agent_id, part, ordinal, op, path, raw_path, \
             entry_kind, symlink_target, size, mtime, mode, content_hash, chunk_count, mtime_ns, entry_mac, link_group) \
         SELECT $1, $2, $3, $4, u.* FROM unnest($5::int[], $6::text[], $7::text[], $8::bytea[], $9::text[], \
             $10::text[], $11::bigint[], $12::timestamptz[], $13::int[], $14::bytea[], $15::int[], \
             $17::bigint[], $18::bytea[], $19::bigint[]) AS u \
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

/// Recomputes the [`DeltaDigester`] digest of `job`'s staged entries, in the order they were
/// sent (part, then position in the part), from the staging tables — what the server will
/// commit — for comparison with the digest the agent computed over what it sent.
pub(super) async fn staged_digest(
    tx: &tokio_postgres::Transaction<'_>,
    job: Uuid,
) -> Result<DeltaDigest, CatalogError> {
    let stream = tx
        .query_raw(
            "SELECT e.op, e.path, e.entry_kind, e.symlink_target, e.size, e.mtime_ns, e.mode, e.content_hash, \
                    e.entry_mac, e.link_group, ch.ids, ch.lens \
             FROM job_delta_entries e \
             LEFT JOIN LATERAL (SELECT array_agg(c.blob_id ORDER BY c.seq) AS ids, \
                                       array_agg(c.plain_length ORDER BY c.seq) AS lens \
                                FROM job_delta_chunks c \
                                WHERE c.backup_job_id = e.backup_job_id AND c.part = e.part AND c.ordinal = e.ordinal) ch \
                    ON e.entry_kind = 'file' AND e.op = 'upsert' \
             WHERE e.backup_job_id = $1 ORDER BY e.part, e.ordinal",
            [&job as &(dyn ToSql + Sync)],
        )
        .await?;
    pin_mut!(stream);
    let mut d = DeltaDigester::new();
    let bad = |what: &str| CatalogError::Conflict(format!("a staged entry has an invalid {what}"));
    while let Some(row) = stream.try_next().await? {
        let op: &str = row.get(0);
        let path: String = row.get(1);
        let kind: &str = row.get(2);
        let mtime_ns: i64 = row.get::<_, Option<i64>>(5).unwrap_or_default();
        let mode = row.get::<_, Option<i32>>(6).unwrap_or_default() as u32;
        let mac = match row.get::<_, Option<Vec<u8>>>(8) {
            Some(m) => Some(EntryMac(<[u8; 32]>::try_from(m).map_err(|_| bad("MAC"))?)),
            None => None,
        };
        let entry = match (op, kind) {
            ("delete", _) => Entry::Delete {
                path,
                raw_path: None,
            },
            (_, "symlink") => Entry::Symlink {
                path,
                raw_path: None,
                target: row.get::<_, Option<String>>(3).unwrap_or_default(),
                raw_target: None,
                mtime_ns,
                mac,
            },
            (_, "directory") => Entry::Dir {
                path,
                raw_path: None,
                mtime_ns,
                mode,
                mac,
            },
            (_, "fifo") => Entry::Fifo {
                path,
                raw_path: None,
                mtime_ns,
                mode,
                mac,
            },
            _ => {
                let hash = row.get::<_, Option<Vec<u8>>>(7).unwrap_or_default();
                let ids: Vec<Vec<u8>> = row.get::<_, Option<Vec<Vec<u8>>>>(10).unwrap_or_default();
                let lens: Vec<i32> = row.get::<_, Option<Vec<i32>>>(11).unwrap_or_default();
                let mut chunks = Vec::with_capacity(ids.len());
                for (id, len) in ids.into_iter().zip(lens) {
                    chunks.push(ChunkRef {
                        id: BlobId(<[u8; 32]>::try_from(id).map_err(|_| bad("blob ID"))?),
                        len: len as u32,
                    });
                }
                Entry::Upsert {
                    path,
                    raw_path: None,
                    size: row.get::<_, Option<i64>>(4).unwrap_or_default() as u64,
                    mtime_ns,
                    mode,
                    content_hash: ContentHash(
                        <[u8; 32]>::try_from(hash).map_err(|_| bad("content hash"))?,
                    ),
                    chunks,
                    link: row.get::<_, Option<i64>>(9).map(|l| l as u64),
                    mac,
                }
            }
        };
        d.add(&entry);
    }
    Ok(d.finish())
}
