//! Checking another machine's copies before relying on them. The server cannot tell whether a
//! ciphertext holds the chunk its blob ID names, so a machine trusts only copies it uploaded or
//! checked itself. A machine that holds the organisation's identity (its keys were kept on this
//! disk) can check: it reads the other machine's copy, decrypts it and compares the plaintext
//! with the blob ID ([`OrgKeys::open_blob`]). Copies that pass are adopted (`blobs/adopt`) instead
//! of uploading the same photos again; copies that fail, or cannot be read, are simply uploaded.
//!
//! Reading costs download bandwidth instead of upload bandwidth (usually the cheaper direction)
//! and saves the storage of a second copy. Nothing is kept across a crash: the next run asks
//! the server again.

use keepsake_common::api::{BlobCopy, MAX_READ_BLOBS};
use keepsake_common::framing::FrameReader;
use keepsake_common::ids::BlobId;
use keepsake_common::keys::OrgKeys;

use crate::client::ApiClient;

/// Reads the copies the server holds of `ids` and returns those that open correctly with `keys`.
/// Errors only shorten the list (what is not verified is uploaded instead).
pub fn verify_copies(client: &ApiClient, keys: &OrgKeys, ids: &[BlobId]) -> Vec<BlobCopy> {
    let mut out = Vec::new();
    for batch in ids.chunks(MAX_READ_BLOBS) {
        let stream = match client.read_blobs(batch) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read other machines' copies; uploading ours");
                continue;
            }
        };
        let reader = match FrameReader::new(stream) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable blob stream; uploading ours");
                continue;
            }
        };
        for frame in reader {
            let (h, ciphertext) = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "blob stream cut; uploading the rest");
                    break;
                }
            };
            match keys.open_blob(&h.blob_id, &ciphertext, Some(&h.cipher_hash)) {
                Ok(_) => out.push(BlobCopy {
                    id: h.blob_id,
                    cipher_hash: h.cipher_hash,
                }),
                Err(e) => tracing::warn!(
                    blob = %h.blob_id,
                    error = %e,
                    "another machine's copy of a blob is wrong; uploading ours"
                ),
            }
        }
    }
    out
}
