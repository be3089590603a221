//! Packs: many encrypted blobs in one object on a storage destination, indexed in PostgreSQL.
//!
//! An upload body (a framed blob stream, `keepsake_common::framing`) is verified blob by blob as
//! it streams — announced length, BLAKE3 of the ciphertext, trailer — and written unchanged as the
//! pack object, so a pack is self-describing. Only when the object is complete and durable is the
//! index (pack row, blob rows, one copy per blob) written, in one transaction. A body that fails
//! any check leaves nothing behind: the write is aborted and no row is written. A crash between
//! the object write and the index leaves an unindexed object (garbage for the collector, never a
//! dangling index row).
//!
//! Copies and trust: the server cannot check that a ciphertext holds the chunk its ID names, so a
//! blob may be stored once per uploading machine, and a machine trusts only the copies it uploaded
//! or adopted (read back and checked with its keys). A pack that adds no copy for its uploader is
//! deleted instead of kept twice. Reads try the reader's own copies first and refuse any copy
//! whose stored bytes no longer match their hash.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use keepsake_common::api::PackStored;
use keepsake_common::compress::Codec;
use keepsake_common::framing::{
    Frame, FrameHeader, FramingError, StreamHeader, StreamLimits, StreamValidator,
    FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use keepsake_common::ids::{BlobId, CipherHash};
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use crate::db::{self, Actor, Db, DbError};
use crate::destinations::{Destination, DestinationError};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("malformed blob stream: {0}")]
    Malformed(String),
    #[error("blob {0}: the ciphertext does not match its announced BLAKE3 hash")]
    HashMismatch(BlobId),
    #[error("the upload body ended early (connection lost or body truncated)")]
    Truncated,
    #[error(transparent)]
    Storage(#[from] DestinationError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<FramingError> for PackError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::CipherHashMismatch { id } => PackError::HashMismatch(id),
            other => PackError::Malformed(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for PackError {
    fn from(e: tokio_postgres::Error) -> Self {
        PackError::Db(DbError::from(e))
    }
}

/// Object key of a pack: one prefix per organisation, fanned out by the first byte of the id.
pub fn pack_key(org: Uuid, pack: Uuid) -> String {
    let s = pack.simple().to_string();
    format!("orgs/{org}/packs/{}/{s}.pack", &s[..2])
}

struct BlobEntry {
    id: BlobId,
    offset: u64,
    header: FrameHeader,
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), PackError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(PackError::Truncated),
        Err(e) => {
            tracing::debug!(error = %e, "upload body read failed");
            Err(PackError::Truncated)
        }
    }
}

/// Streams one upload body into a new pack on `dest` and indexes it for `agent` of `org`.
pub async fn ingest<R: AsyncRead + Unpin>(
    body: &mut R,
    db: &Db,
    dest: &Destination,
    destination_id: Uuid,
    org: Uuid,
    agent: Uuid,
    max_bytes: u64,
) -> Result<PackStored, PackError> {
    let pack_id = Uuid::new_v4();
    let key = pack_key(org, pack_id);
    let mut writer = dest.writer(&key).await?;
    let mut pack_hash = blake3::Hasher::new();
    let streamed = async {
        let mut hb = [0u8; STREAM_HEADER_LEN];
        read_exact(body, &mut hb).await?;
        StreamHeader::decode(&hb)?;
        writer.write(&hb).await?;
        pack_hash.update(&hb);
        let mut pos = STREAM_HEADER_LEN as u64;
        let mut validator = StreamValidator::new(StreamLimits {
            max_blobs: 1 << 20,
            max_total_cipher_len: max_bytes,
        });
        let mut entries: Vec<BlobEntry> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let mut fb = [0u8; FRAME_HEADER_LEN];
            read_exact(body, &mut fb).await?;
            match Frame::decode(&fb)? {
                Frame::Blob(h) => {
                    validator.observe(&h)?;
                    writer.write(&fb).await?;
                    pack_hash.update(&fb);
                    pos += FRAME_HEADER_LEN as u64;
                    let offset = pos;
                    let mut left = h.cipher_len as usize;
                    let mut blob_hash = blake3::Hasher::new();
                    while left > 0 {
                        let n = left.min(buf.len());
                        read_exact(body, &mut buf[..n]).await?;
                        blob_hash.update(&buf[..n]);
                        pack_hash.update(&buf[..n]);
                        writer.write(&buf[..n]).await?;
                        left -= n;
                    }
                    pos += u64::from(h.cipher_len);
                    if CipherHash(*blob_hash.finalize().as_bytes()) != h.cipher_hash {
                        return Err(PackError::HashMismatch(h.blob_id));
                    }
                    entries.push(BlobEntry {
                        id: h.blob_id,
                        offset,
                        header: h,
                    });
                }
                Frame::End(t) => {
                    validator.finish(&t)?;
                    writer.write(&fb).await?;
                    pack_hash.update(&fb);
                    pos += FRAME_HEADER_LEN as u64;
                    let mut extra = [0u8; 1];
                    match body.read(&mut extra).await {
                        Ok(0) => {}
                        Ok(_) => {
                            return Err(PackError::Malformed("data after the end frame".into()))
                        }
                        Err(_) => return Err(PackError::Truncated),
                    }
                    break;
                }
            }
        }
        if entries.is_empty() {
            return Err(PackError::Malformed(
                "a pack must hold at least one blob".into(),
            ));
        }
        Ok((entries, pos))
    }
    .await;
    let (entries, size) = match streamed {
        Ok(v) => v,
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, key, "could not abort a rejected pack upload");
            }
            return Err(e);
        }
    };
    // The object becomes visible (and, for local folders, durable) here, before it is indexed.
    writer.finish().await?;

    let digest = pack_hash.finalize();
    let indexed = index_pack(
        db,
        org,
        agent,
        pack_id,
        destination_id,
        &key,
        size,
        digest.as_bytes(),
        &entries,
    )
    .await;
    match indexed {
        Ok(0) => {
            // Every blob of the pack already had a copy this machine trusts: keep nothing.
            if let Err(e) = dest.delete(&key).await {
                tracing::warn!(error = %e, key, "could not delete a pack that added nothing");
            }
            Ok(PackStored {
                pack_id,
                blobs: entries.len() as u64,
                new_blobs: 0,
                bytes: size,
                kept: false,
            })
        }
        Ok(added) => Ok(PackStored {
            pack_id,
            blobs: entries.len() as u64,
            new_blobs: added,
            bytes: size,
            kept: true,
        }),
        Err(e) => {
            // Not indexed: the object is an orphan; remove it (the collector would otherwise).
            if let Err(d) = dest.delete(&key).await {
                tracing::warn!(error = %d, key, "could not delete an unindexed pack");
            }
            Err(e)
        }
    }
}

/// Indexes a stored pack for `agent`: the pack row, the blob rows, and one copy per blob the
/// machine holds no trusted copy of yet. Returns the copies added; with none, nothing is written.
#[allow(clippy::too_many_arguments)]
async fn index_pack(
    db: &Db,
    org: Uuid,
    agent: Uuid,
    pack_id: Uuid,
    destination_id: Uuid,
    key: &str,
    size: u64,
    digest: &[u8; 32],
    entries: &[BlobEntry],
) -> Result<u64, PackError> {
    let n = entries.len();
    let mut ids: Vec<&[u8]> = Vec::with_capacity(n);
    let mut offsets: Vec<i64> = Vec::with_capacity(n);
    let mut lens: Vec<i32> = Vec::with_capacity(n);
    let mut plains: Vec<i32> = Vec::with_capacity(n);
    let mut hashes: Vec<&[u8]> = Vec::with_capacity(n);
    let mut codecs: Vec<i16> = Vec::with_capacity(n);
    for e in entries {
        ids.push(e.id.as_bytes());
        offsets.push(e.offset as i64);
        lens.push(e.header.cipher_len as i32);
        plains.push(e.header.plain_len as i32);
        hashes.push(e.header.cipher_hash.as_bytes());
        codecs.push(i16::from(e.header.codec.as_u8()));
    }
    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &Actor::Agent { org, agent }).await?;
    tx.execute(
        "INSERT INTO packs (id, organization_id, destination_id, object_key, size_bytes, blob_count, pack_hash, uploaded_by_agent_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &pack_id,
            &org,
            &destination_id,
            &key,
            &(size as i64),
            &(n as i32),
            &digest.as_slice(),
            &agent,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO blobs (organization_id, blob_id) SELECT $1, id FROM unnest($2::bytea[]) AS u(id) \
         ON CONFLICT (organization_id, blob_id) DO NOTHING",
        &[&org, &ids],
    )
    .await?;
    let added = tx
        .execute(
            "INSERT INTO blob_copies (organization_id, blob_id, pack_id, pack_offset, cipher_length, plain_length, \
                 cipher_hash, codec, uploaded_by_agent_id) \
             SELECT DISTINCT ON (id) $1, id, $2, off, clen, plen, h, c, $9 \
             FROM unnest($3::bytea[], $4::bigint[], $5::int[], $6::int[], $7::bytea[], $8::smallint[]) \
                 AS u(id, off, clen, plen, h, c) \
             WHERE NOT EXISTS (SELECT 1 FROM blob_copies bc WHERE bc.organization_id = $1 AND bc.blob_id = u.id \
                                AND bc.uploaded_by_agent_id = $9) \
               AND NOT EXISTS (SELECT 1 FROM blob_adoptions a WHERE a.organization_id = $1 AND a.agent_id = $9 \
                                AND a.blob_id = u.id) \
             ORDER BY id, off \
             ON CONFLICT DO NOTHING",
            &[&org, &pack_id, &ids, &offsets, &lens, &plains, &hashes, &codecs, &agent],
        )
        .await?;
    if added == 0 {
        // Dropped without committing: no pack row, no blob rows.
        return Ok(0);
    }
    tx.commit().await?;
    Ok(added)
}

/// Which of `ids` `agent` holds a trusted copy of (one it uploaded or adopted). For each ID not
/// trusted, whether any copy exists (uploaded by another machine).
pub async fn trusted(
    tx: &tokio_postgres::Transaction<'_>,
    agent: Option<Uuid>,
    ids: &[BlobId],
) -> Result<(Vec<BlobId>, Vec<BlobId>), DbError> {
    let raw: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let rows = tx
        .query(
            "SELECT c.blob_id, bool_or(c.uploaded_by_agent_id = $2 \
                       OR EXISTS (SELECT 1 FROM blob_adoptions a WHERE a.organization_id = c.organization_id \
                                  AND a.agent_id = $2 AND a.blob_id = c.blob_id AND a.pack_id = c.pack_id)) \
             FROM blob_copies c WHERE c.blob_id = ANY($1) GROUP BY c.blob_id",
            &[&raw, &agent],
        )
        .await?;
    let mut trusted = Vec::new();
    let mut foreign = Vec::new();
    for r in rows {
        let Ok(id) = <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0)) else {
            continue;
        };
        // A user (no machine) trusts any copy: users do not upload.
        if agent.is_none() || r.get::<_, Option<bool>>(1).unwrap_or(false) {
            trusted.push(BlobId(id));
        } else {
            foreign.push(BlobId(id));
        }
    }
    Ok((trusted, foreign))
}

/// Protects `ids` from garbage collection for `grace` (blobs an agent was told it holds).
pub async fn protect(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[BlobId],
    grace: std::time::Duration,
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let raw: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let secs = format!("{} seconds", grace.as_secs());
    tx.execute(
        "SELECT public.protect_blobs($1, $2::text::interval)",
        &[&raw, &secs],
    )
    .await?;
    Ok(())
}

/// Records that `agent` read back and checked the copies named by (blob ID, ciphertext hash).
/// Returns how many adoptions were new (copies the machine uploaded itself are not counted).
pub async fn adopt(
    tx: &tokio_postgres::Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    copies: &[(BlobId, CipherHash)],
) -> Result<u64, DbError> {
    let ids: Vec<&[u8]> = copies.iter().map(|c| c.0.as_bytes().as_slice()).collect();
    let hashes: Vec<&[u8]> = copies.iter().map(|c| c.1.as_bytes().as_slice()).collect();
    Ok(tx
        .execute(
            "INSERT INTO blob_adoptions (organization_id, agent_id, blob_id, pack_id) \
             SELECT DISTINCT $1::uuid, $2::uuid, bc.blob_id, bc.pack_id \
             FROM unnest($3::bytea[], $4::bytea[]) AS u(id, h) \
             JOIN blob_copies bc ON bc.organization_id = $1 AND bc.blob_id = u.id AND bc.cipher_hash = u.h \
             WHERE bc.uploaded_by_agent_id IS DISTINCT FROM $2 \
             ON CONFLICT DO NOTHING",
            &[&org, &agent, &ids, &hashes],
        )
        .await?)
}

/// One stored copy of a blob.
#[derive(Debug, Clone)]
pub struct CopyLocation {
    pub header: FrameHeader,
    pub destination_id: Uuid,
    pub object_key: String,
    pub range: Range<u64>,
}

/// Where one blob lives: its copies, best first.
#[derive(Debug, Clone)]
pub struct BlobLocation {
    pub blob_id: BlobId,
    pub copies: Vec<CopyLocation>,
}

/// Looks up the copies of `ids` (in request order), leaving out copies whose ciphertext hash is in
/// `avoid`. Copies the reading machine uploaded come first, then those it adopted, then the
/// others, oldest first. Returns the IDs without any copy as the error value.
pub async fn locate(
    tx: &tokio_postgres::Transaction<'_>,
    agent: Option<Uuid>,
    ids: &[BlobId],
    avoid: &[CipherHash],
) -> Result<Result<Vec<BlobLocation>, Vec<BlobId>>, DbError> {
    let raw: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let avoid: Vec<&[u8]> = avoid.iter().map(|h| h.as_bytes().as_slice()).collect();
    let rows = tx
        .query(
            "SELECT c.blob_id, c.pack_offset, c.cipher_length, c.plain_length, c.cipher_hash, c.codec, \
                    p.destination_id, p.object_key \
             FROM blob_copies c JOIN packs p ON p.id = c.pack_id \
             WHERE c.blob_id = ANY($1) AND NOT (c.cipher_hash = ANY($2)) AND p.state = 'live' \
             ORDER BY c.blob_id, \
                      (c.uploaded_by_agent_id IS NOT DISTINCT FROM $3) DESC, \
                      EXISTS (SELECT 1 FROM blob_adoptions a WHERE a.organization_id = c.organization_id \
                              AND a.agent_id = $3 AND a.blob_id = c.blob_id AND a.pack_id = c.pack_id) DESC, \
                      c.created_at, c.pack_id",
            &[&raw, &avoid, &agent],
        )
        .await?;
    let mut found: std::collections::HashMap<[u8; 32], Vec<CopyLocation>> =
        std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        let id: Vec<u8> = r.get(0);
        let hash: Vec<u8> = r.get(4);
        let (Ok(id), Ok(hash)) = (<[u8; 32]>::try_from(id), <[u8; 32]>::try_from(hash)) else {
            continue;
        };
        let off: i64 = r.get(1);
        let clen: i32 = r.get(2);
        let codec = Codec::from_u8(r.get::<_, i16>(5) as u8).unwrap_or(Codec::Raw);
        found.entry(id).or_default().push(CopyLocation {
            header: FrameHeader {
                blob_id: BlobId(id),
                cipher_hash: CipherHash(hash),
                cipher_len: clen as u32,
                plain_len: r.get::<_, i32>(3) as u32,
                codec,
            },
            destination_id: r.get(6),
            object_key: r.get(7),
            range: off as u64..off as u64 + clen as u64,
        });
    }
    let missing: Vec<BlobId> = ids
        .iter()
        .filter(|i| !found.contains_key(i.as_bytes()))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Ok(Err(missing));
    }
    Ok(Ok(ids
        .iter()
        .filter_map(|i| {
            found.get(i.as_bytes()).map(|copies| BlobLocation {
                blob_id: *i,
                copies: copies.clone(),
            })
        })
        .collect()))
}

/// Reads the first copy of `loc` whose stored bytes match their ciphertext hash. A copy that
/// does not match (bit rot, tampering) is refused and logged, and the next copy is tried.
async fn read_intact(
    loc: &BlobLocation,
    dests: &std::collections::HashMap<Uuid, Destination>,
) -> Result<(FrameHeader, Bytes), std::io::Error> {
    let mut last = String::from("no copy");
    for copy in &loc.copies {
        let Some(dest) = dests.get(&copy.destination_id) else {
            last = format!("destination {} unknown", copy.destination_id);
            continue;
        };
        match dest.get_range(&copy.object_key, copy.range.clone()).await {
            Ok(data)
                if data.len() == copy.header.cipher_len as usize
                    && CipherHash::of(&data) == copy.header.cipher_hash =>
            {
                return Ok((copy.header, data));
            }
            Ok(_) => {
                tracing::error!(
                    blob = %loc.blob_id,
                    pack = %copy.object_key,
                    "stored copy does not match its hash (bit rot or tampering): refused"
                );
                last = format!("the copy in {} is damaged", copy.object_key);
            }
            Err(e) => {
                tracing::warn!(blob = %loc.blob_id, pack = %copy.object_key, error = %e, "cannot read a copy");
                last = e.to_string();
            }
        }
    }
    Err(std::io::Error::other(format!(
        "no intact copy of blob {} ({last})",
        loc.blob_id
    )))
}

/// Streams the blobs at `locations` as a framed blob stream (ranged reads, several in flight),
/// each from its first intact copy. When no copy of a blob is intact the stream ends with an
/// error (the reader sees a cut stream and fails that file); damaged data is never sent.
pub fn stream_blobs(
    locations: Vec<BlobLocation>,
    dests: std::collections::HashMap<Uuid, Destination>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let dests = std::sync::Arc::new(dests);
    let validator = std::sync::Arc::new(std::sync::Mutex::new(StreamValidator::default()));
    let head =
        stream::once(async { Ok(Bytes::copy_from_slice(&StreamHeader::default().encode())) });
    let v = validator.clone();
    let frames = stream::iter(locations)
        .map(move |loc| {
            let dests = dests.clone();
            async move { read_intact(&loc, &dests).await }
        })
        .buffered(8)
        .map(move |r| {
            let (header, data) = r?;
            // Limits are the defaults (far above any read request); observe cannot fail here.
            let _ = v.lock().unwrap_or_else(|p| p.into_inner()).observe(&header);
            let mut out = Vec::with_capacity(FRAME_HEADER_LEN + data.len());
            out.extend_from_slice(&header.encode());
            out.extend_from_slice(&data);
            Ok(Bytes::from(out))
        });
    let tail = stream::once(async move {
        let trailer = validator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trailer()
            .encode();
        Ok(Bytes::copy_from_slice(&trailer))
    });
    head.chain(frames).chain(tail)
}
