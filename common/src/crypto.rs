//! Blob sealing: compress where it pays, then age-encrypt; and the verified inverse.
//!
//! Blob plaintext = 1 codec byte (0 raw, 1 zstd) followed by the payload. The blob is the binary
//! (not armored) age v1 encryption of that plaintext to the organisation's current X25519
//! recipient. [`open_blob`] decrypts, decodes and then checks that the keyed BLAKE3 of the result
//! equals the blob ID that was asked for: a swapped, truncated, extended or bit-flipped blob is an
//! error, never silently wrong data.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::io::{Read, Write};

use age::x25519;

use crate::compress::{self, Codec, CompressError, CompressPolicy, Decision, DEFAULT_POLICY};
use crate::ids::{BlobId, ChunkIdKey, CipherHash};

/// Largest chunk a blob may hold (16 MiB).
pub const MAX_PLAIN_LEN: usize = compress::MAX_PLAIN_LEN;

/// Largest blob ciphertext: the largest plaintext plus the codec byte, the age header (bounded
/// here at 4 KiB) and 16 bytes of tag per 64 KiB STREAM chunk.
pub const MAX_CIPHER_LEN: usize = MAX_PLAIN_LEN + 1 + 4096 + 16 * (MAX_PLAIN_LEN / 65536 + 1);

/// A sealed blob, ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// Keyed BLAKE3 of the chunk plaintext.
    pub id: BlobId,
    /// The age file.
    pub ciphertext: Vec<u8>,
    /// Plain BLAKE3 of `ciphertext`.
    pub cipher_hash: CipherHash,
    /// Length of the chunk plaintext (before compression).
    pub plain_len: u32,
    /// How the payload inside the age file is encoded.
    pub codec: Codec,
}

/// Errors of sealing and opening blobs.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no recipient to encrypt to")]
    NoRecipients,
    #[error("chunk of {0} bytes exceeds the 16 MiB limit")]
    TooLarge(usize),
    #[error("ciphertext of {0} bytes exceeds the blob size limit")]
    CiphertextTooLarge(usize),
    #[error("age encryption failed: {0}")]
    Encrypt(String),
    #[error("ciphertext hash mismatch: expected {expected}, got {actual}")]
    CipherHashMismatch {
        expected: CipherHash,
        actual: CipherHash,
    },
    #[error("none of the organisation's keys can open this blob")]
    NoMatchingKey,
    #[error("blob ciphertext is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("blob plaintext is empty (missing codec byte)")]
    MissingCodec,
    #[error("blob payload: {0}")]
    Payload(#[from] CompressError),
    #[error("blob content does not match its ID: expected {expected}, got {actual}")]
    IdMismatch { expected: BlobId, actual: BlobId },
}

/// Seals `chunk` with the default compression policy. See [`seal_blob_with`].
pub fn seal_blob(
    recipients: &[x25519::Recipient],
    key: &ChunkIdKey,
    chunk: &[u8],
) -> Result<SealedBlob, CryptoError> {
    seal_blob_with(recipients, key, chunk, &DEFAULT_POLICY).map(|(b, _)| b)
}

/// Seals `chunk`: blob id, compression decision, age encryption to `recipients` (normally the one
/// current recipient of the organisation: every extra recipient adds a stanza of about 100 bytes
/// and an X25519 operation to every blob).
pub fn seal_blob_with(
    recipients: &[x25519::Recipient],
    key: &ChunkIdKey,
    chunk: &[u8],
    policy: &CompressPolicy,
) -> Result<(SealedBlob, Decision), CryptoError> {
    check_sealable(recipients, chunk)?;
    seal_blob_with_id(recipients, BlobId::of(key, chunk), chunk, policy)
}

/// Seals `chunk` whose blob ID the caller has already computed: [`seal_blob_with`] without its
/// keyed BLAKE3 pass over the chunk.
///
/// The agent's readers need every chunk's ID before sealing (to skip chunks the server or the
/// run already has), so hashing it again here would cost a second pass over every new chunk
/// (~0.16 CPU-seconds per GB). `id` must be `BlobId::of(key, chunk)`: a blob sealed under any
/// other ID is refused by [`open_blob`] (`IdMismatch`), never read back as that chunk.
pub fn seal_blob_with_id(
    recipients: &[x25519::Recipient],
    id: BlobId,
    chunk: &[u8],
    policy: &CompressPolicy,
) -> Result<(SealedBlob, Decision), CryptoError> {
    check_sealable(recipients, chunk)?;
    let (compressed, decision) = compress::maybe_compress(chunk, policy)?;
    let (codec, payload): (Codec, &[u8]) = match &compressed {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::Raw, chunk),
    };
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    // The ciphertext is hashed as age writes it (64 KiB pieces, still in cache), not in a
    // second pass over the finished blob.
    let mut out = HashingWriter {
        buf: Vec::with_capacity(payload.len() + 1 + 512 + 16 * (payload.len() / 65536 + 1)),
        hasher: blake3::Hasher::new(),
    };
    let enc_err = |e: std::io::Error| CryptoError::Encrypt(e.to_string());
    let mut w = encryptor.wrap_output(&mut out).map_err(enc_err)?;
    w.write_all(&[codec.as_u8()]).map_err(enc_err)?;
    w.write_all(payload).map_err(enc_err)?;
    w.finish().map_err(enc_err)?;
    let cipher_hash = CipherHash(*out.hasher.finalize().as_bytes());
    Ok((
        SealedBlob {
            id,
            ciphertext: out.buf,
            cipher_hash,
            plain_len: chunk.len() as u32,
            codec,
        },
        decision,
    ))
}

/// The checks before sealing: someone to encrypt to, and a chunk within the size limit.
fn check_sealable(recipients: &[x25519::Recipient], chunk: &[u8]) -> Result<(), CryptoError> {
    if recipients.is_empty() {
        return Err(CryptoError::NoRecipients);
    }
    if chunk.len() > MAX_PLAIN_LEN {
        return Err(CryptoError::TooLarge(chunk.len()));
    }
    Ok(())
}

/// Collects the ciphertext and hashes it as it is written.
struct HashingWriter {
    buf: Vec<u8>,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a blob: checks the ciphertext hash (when given), decrypts with whichever of
/// `identities` matches, decodes, and verifies that the result is the chunk named `expected`.
pub fn open_blob(
    identities: &[x25519::Identity],
    key: &ChunkIdKey,
    expected: &BlobId,
    ciphertext: &[u8],
    expected_cipher_hash: Option<&CipherHash>,
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() > MAX_CIPHER_LEN {
        return Err(CryptoError::CiphertextTooLarge(ciphertext.len()));
    }
    if let Some(h) = expected_cipher_hash {
        let actual = CipherHash::of(ciphertext);
        if actual != *h {
            return Err(CryptoError::CipherHashMismatch {
                expected: *h,
                actual,
            });
        }
    }
    let plaintext = decrypt(identities, ciphertext)?;
    let (&codec, payload) = plaintext.split_first().ok_or(CryptoError::MissingCodec)?;
    let codec = Codec::from_u8(codec)?;
    let chunk = match codec {
        Codec::Raw => {
            let mut p = plaintext;
            p.remove(0);
            p
        }
        Codec::Zstd => compress::decompress(codec, payload, MAX_PLAIN_LEN)?,
    };
    let actual = BlobId::of(key, &chunk);
    if actual != *expected {
        return Err(CryptoError::IdMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(chunk)
}

fn decrypt(identities: &[x25519::Identity], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut input = ciphertext;
    let decryptor = age::Decryptor::new_buffered(&mut input)
        .map_err(|e| CryptoError::Corrupt(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => CryptoError::NoMatchingKey,
            other => CryptoError::Corrupt(other.to_string()),
        })?;
    let mut plaintext = Vec::with_capacity(ciphertext.len());
    (&mut reader)
        .take(MAX_PLAIN_LEN as u64 + 2)
        .read_to_end(&mut plaintext)
        .map_err(|e| CryptoError::Corrupt(e.to_string()))?;
    if plaintext.len() > MAX_PLAIN_LEN + 1 {
        return Err(CryptoError::TooLarge(plaintext.len()));
    }
    drop(reader);
    if !input.is_empty() {
        return Err(CryptoError::Corrupt(format!(
            "{} bytes after the end of the age stream",
            input.len()
        )));
    }
    Ok(plaintext)
}

/// Fixed per-blob overhead of age for `plaintext_len` bytes of blob plaintext (codec byte
/// included), excluding the header: 16 bytes of Poly1305 tag per 64 KiB STREAM chunk.
pub fn stream_overhead(plaintext_len: usize) -> usize {
    16 * plaintext_len.div_ceil(65536).max(1)
}
