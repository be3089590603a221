//! Packs: many encrypted blobs in one object on a storage destination, indexed in PostgreSQL.
//!
//! An upload body (a framed blob stream, `keepsake_common::framing`) is verified blob by blob as
//! it streams — announced length, BLAKE3 of the ciphertext, trailer — and written unchanged as the
//! pack object, so a pack is self-describing. Only when the object is complete and durable is the
//! index (pack row, blob rows, one copy per blob) written, in one transaction
//! ([`crate::db::blobs`], which also answers which copies a machine trusts and where they live). A body that fails
//! any check leaves nothing behind: the write is aborted and no row is written. A crash between
//! the object write and the index leaves an unindexed object (garbage for the collector, never a
//! dangling index row).
//!
//! Copies and trust: the server cannot check that a ciphertext holds the chunk its ID names, so a
//! blob may be stored once per uploading machine, and a machine trusts only the copies it uploaded
//! or adopted (read back and checked with its keys). A pack that adds no copy for its uploader is
//! deleted instead of kept twice. Reads try the reader's own copies first and refuse any copy
//! whose stored bytes no longer match their hash.

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use keepsake_common::api::PackStored;
use keepsake_common::framing::{
    Frame, FrameHeader, FramingError, StreamHeader, StreamLimits, StreamValidator,
    FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use keepsake_common::ids::{BlobId, CipherHash};
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use crate::db::blobs::{self, BlobLocation, NewPack, PackedBlob};
use crate::db::{Db, DbError};
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
        let mut entries: Vec<PackedBlob> = Vec::new();
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
                    entries.push(PackedBlob {
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
    let pack = NewPack {
        org,
        agent,
        pack_id,
        destination_id,
        key: &key,
        size,
        digest: digest.as_bytes(),
    };
    let indexed = blobs::index_pack(db, &pack, &entries).await;
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
            Err(e.into())
        }
    }
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
