//! Blobs and packs: which blobs the server lacks, adopting another machine's copies, pack
//! uploads and blob reads, with their size limits.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BlobId, CipherHash};

/// Most blob IDs one `blobs/missing` request may ask about.
pub const MAX_MISSING_QUERY: usize = 10_000;
/// Largest pack upload body the server accepts (a pack is tens of MiB).
pub const MAX_PACK_BODY: u64 = 256 * 1024 * 1024;
/// Most blobs one `blobs/read` request may ask for.
pub const MAX_READ_BLOBS: usize = 1_024;

/// `POST /v1/blobs/missing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    pub ids: Vec<BlobId>,
}

/// The IDs of the request for which the server holds no copy the calling machine uploaded or
/// verified itself (a copy another machine uploaded could be wrong, and the server cannot check
/// ciphertext without keys). The others are protected from garbage collection for
/// `protected_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<BlobId>,
    pub protected_seconds: u64,
    /// Those of `missing` that other machines did upload: a machine holding the organisation's
    /// identity may read and check those copies and adopt them (`POST /v1/blobs/adopt`) instead
    /// of uploading its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<BlobId>,
}

/// One stored copy of a blob, named by the BLAKE3 of its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobCopy {
    pub id: BlobId,
    pub cipher_hash: CipherHash,
}

/// `POST /v1/blobs/adopt`: copies the calling machine has read back, decrypted and checked
/// against their blob IDs; from then on they count as its own for `blobs/missing` and commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    pub copies: Vec<BlobCopy>,
}

/// Answer of `POST /v1/blobs/adopt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptResponse {
    /// Copies newly adopted (already adopted or own copies are not counted).
    pub adopted: u64,
}

/// Most copies one `blobs/adopt` request may name.
pub const MAX_ADOPT: usize = 10_000;

/// Answer of `POST /v1/packs` (body: a framed blob stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackStored {
    pub pack_id: Uuid,
    pub blobs: u64,
    /// Copies this pack added for the uploading machine (the others it already held).
    pub new_blobs: u64,
    pub bytes: u64,
    /// False when the pack added no copy and was not kept.
    #[serde(default = "yes")]
    pub kept: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/blobs/read`: the answer is a framed blob stream of the requested blobs, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBlobsRequest {
    pub ids: Vec<BlobId>,
    /// Copies not to send (the reader found them wrong): the server sends another copy of those
    /// blobs, or answers 404 `blobs_missing` when it has none left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<CipherHash>,
}
