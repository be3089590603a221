//! Packs: many encrypted blobs in one object on a storage destination, indexed in PostgreSQL.
//!
//! An upload body (a framed blob stream, `keepsake_common::framing`) is verified blob by blob as
//! it streams — announced length, BLAKE3 of the ciphertext, trailer — and written unchanged as the
//! pack object, so a pack is self-describing. Only when the object is complete and durable is the
//! index (pack row and blob rows) written, in one transaction. A body that fails any check leaves
//! nothing behind: the write is aborted and no row is written.

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

    let n = entries.len();
    let mut ids: Vec<&[u8]> = Vec::with_capacity(n);
    let mut offsets: Vec<i64> = Vec::with_capacity(n);
    let mut lens: Vec<i32> = Vec::with_capacity(n);
    let mut plains: Vec<i32> = Vec::with_capacity(n);
    let mut hashes: Vec<&[u8]> = Vec::with_capacity(n);
    let mut codecs: Vec<i16> = Vec::with_capacity(n);
    for e in &entries {
        ids.push(e.id.as_bytes());
        offsets.push(e.offset as i64);
        lens.push(e.header.cipher_len as i32);
        plains.push(e.header.plain_len as i32);
        hashes.push(e.header.cipher_hash.as_bytes());
        codecs.push(i16::from(e.header.codec.as_u8()));
    }
    let digest = pack_hash.finalize();
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
            &digest.as_bytes().as_slice(),
            &agent,
        ],
    )
    .await?;
    let new_blobs = tx
        .execute(
            "INSERT INTO blobs (organization_id, blob_id, pack_id, pack_offset, cipher_length, plain_length, cipher_hash, codec) \
             SELECT $1, id, $2, off, clen, plen, h, c \
             FROM unnest($3::bytea[], $4::bigint[], $5::int[], $6::int[], $7::bytea[], $8::smallint[]) AS u(id, off, clen, plen, h, c) \
             ON CONFLICT (organization_id, blob_id) DO NOTHING",
            &[&org, &pack_id, &ids, &offsets, &lens, &plains, &hashes, &codecs],
        )
        .await?;
    tx.commit().await?;
    Ok(PackStored {
        pack_id,
        blobs: n as u64,
        new_blobs,
        bytes: size,
    })
}

/// Where one blob lives.
#[derive(Debug, Clone)]
pub struct BlobLocation {
    pub header: FrameHeader,
    pub destination_id: Uuid,
    pub object_key: String,
    pub range: Range<u64>,
}

/// Looks up the locations of `ids` (in request order). Returns the IDs that are not in the index
/// as the error value.
pub async fn locate(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[BlobId],
) -> Result<Result<Vec<BlobLocation>, Vec<BlobId>>, DbError> {
    let raw: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let rows = tx
        .query(
            "SELECT b.blob_id, b.pack_offset, b.cipher_length, b.plain_length, b.cipher_hash, b.codec, \
                    p.destination_id, p.object_key \
             FROM blobs b JOIN packs p ON p.id = b.pack_id \
             WHERE b.blob_id = ANY($1)",
            &[&raw],
        )
        .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        let id: Vec<u8> = r.get(0);
        let hash: Vec<u8> = r.get(4);
        let (Ok(id), Ok(hash)) = (<[u8; 32]>::try_from(id), <[u8; 32]>::try_from(hash)) else {
            continue;
        };
        let off: i64 = r.get(1);
        let clen: i32 = r.get(2);
        let codec = Codec::from_u8(r.get::<_, i16>(5) as u8).unwrap_or(Codec::Raw);
        found.insert(
            id,
            BlobLocation {
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
            },
        );
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
        .filter_map(|i| found.get(i.as_bytes()).cloned())
        .collect()))
}

/// Streams the blobs at `locations` as a framed blob stream (ranged reads, several in flight).
/// A blob whose stored bytes no longer match their hash is sent as stored and logged: the reader
/// detects it and fails that file only.
pub fn stream_blobs(
    locations: Vec<(BlobLocation, Destination)>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut validator = StreamValidator::default();
    for (loc, _) in &locations {
        // Limits are the defaults (far above any read request); observe cannot fail here.
        let _ = validator.observe(&loc.header);
    }
    let trailer = validator.trailer().encode();
    let head =
        stream::once(async { Ok(Bytes::copy_from_slice(&StreamHeader::default().encode())) });
    let frames = stream::iter(locations)
        .map(|(loc, dest)| async move {
            let data = dest
                .get_range(&loc.object_key, loc.range.clone())
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if data.len() != loc.header.cipher_len as usize {
                return Err(std::io::Error::other(format!(
                    "pack {} is shorter than the index says",
                    loc.object_key
                )));
            }
            if CipherHash::of(&data) != loc.header.cipher_hash {
                tracing::error!(
                    blob = %loc.header.blob_id,
                    pack = %loc.object_key,
                    "stored blob does not match its hash (bit rot or tampering)"
                );
            }
            let mut out = Vec::with_capacity(FRAME_HEADER_LEN + data.len());
            out.extend_from_slice(&loc.header.encode());
            out.extend_from_slice(&data);
            Ok(Bytes::from(out))
        })
        .buffered(8);
    let tail = stream::once(async move { Ok(Bytes::copy_from_slice(&trailer)) });
    head.chain(frames).chain(tail)
}
