//! The blob index: packs (`packs`), blobs (`blobs`), their stored copies (`blob_copies`, one per
//! uploading machine) and the copies machines checked and adopted (`blob_adoptions`); which
//! copies a machine trusts, where a blob's copies live, and their protection from collection.
//! Storing the pack objects themselves is [`crate::packs`]' business.
//!
//! Indexing a pack is one transaction, written only after its object is durable: a crash leaves
//! either no rows (and an unindexed object for the collector) or the pack with all its copies.
//! A pack that adds no copy for its uploader is not indexed at all.

use std::ops::Range;

use keepsake_common::compress::Codec;
use keepsake_common::framing::FrameHeader;
use keepsake_common::ids::{BlobId, CipherHash};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{Actor, Db, DbError};

/// A pack object just stored, to index.
#[derive(Debug, Clone, Copy)]
pub struct NewPack<'a> {
    pub org: Uuid,
    /// The uploading machine.
    pub agent: Uuid,
    pub pack_id: Uuid,
    pub destination_id: Uuid,
    /// Object key on the destination.
    pub key: &'a str,
    pub size: u64,
    /// BLAKE3 of the whole object.
    pub digest: &'a [u8; 32],
}

/// One blob inside a pack: where its frame starts and what its header says.
#[derive(Debug, Clone)]
pub struct PackedBlob {
    pub id: BlobId,
    pub offset: u64,
    pub header: FrameHeader,
}

/// Indexes a stored pack for `agent`: the pack row, the blob rows, and one copy per blob the
/// machine holds no trusted copy of yet. Returns the copies added; with none, nothing is written.
pub async fn index_pack(
    db: &Db,
    pack: &NewPack<'_>,
    entries: &[PackedBlob],
) -> Result<u64, DbError> {
    let NewPack {
        org,
        agent,
        pack_id,
        destination_id,
        key,
        size,
        digest,
    } = *pack;
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
    let tx = super::begin(&mut client, &Actor::Agent { org, agent }).await?;
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
    tx: &Transaction<'_>,
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
    tx: &Transaction<'_>,
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
    tx: &Transaction<'_>,
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
    tx: &Transaction<'_>,
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
