//! Sealing a chunk whose blob ID the reader has already computed.
//!
//! This is `keepsake_common::crypto::seal_blob_with` minus its first step: the reader needs the
//! blob ID *before* sealing (to skip chunks the server or this run already has), so computing it
//! again inside the seal would cost a second keyed BLAKE3 pass over every new chunk (~0.16
//! CPU-seconds per GB, about 8 % of the whole pipeline). And the full zstd pass reuses one
//! compression context per thread instead of creating one per chunk (context creation was ~6 % of
//! the CPU time of a run of small sidecars). Everything else is the format's sealing as
//! `docs/format.md` section 4 specifies: the compression decision of
//! [`keepsake_common::compress`] (its sample test [`compress::worth_trying`] and the policy's
//! minimum saving), one zstd frame that declares its content size, the codec byte, age
//! encryption to one X25519 recipient, and the plain BLAKE3 of the ciphertext computed while age
//! writes it. The tests open every blob with `keepsake_common::crypto::open_blob`, which checks
//! all of it, and compare the compressed bytes with the common crate's.

use std::cell::RefCell;
use std::io::Write;

use age::x25519;
use keepsake_common::compress::{self, Codec, CompressError, CompressPolicy, Decision};
use keepsake_common::crypto::{CryptoError, SealedBlob, MAX_PLAIN_LEN};
use keepsake_common::ids::{BlobId, CipherHash};

/// Seals `chunk`, whose keyed blob ID is `id` (the caller computed it from these bytes).
pub fn seal_with_id(
    recipient: &x25519::Recipient,
    id: BlobId,
    chunk: &[u8],
    policy: &CompressPolicy,
) -> Result<(SealedBlob, Decision), CryptoError> {
    if chunk.len() > MAX_PLAIN_LEN {
        return Err(CryptoError::TooLarge(chunk.len()));
    }
    let (compressed, decision) = maybe_compress(chunk, policy)?;
    let (codec, payload): (Codec, &[u8]) = match &compressed {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::Raw, chunk),
    };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
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

thread_local! {
    /// One zstd context per thread and level (a context is reset by every one-shot compression,
    /// so reusing it changes nothing in the output).
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// [`compress::maybe_compress`] with a reused compression context.
pub(crate) fn maybe_compress(
    data: &[u8],
    policy: &CompressPolicy,
) -> Result<(Option<Vec<u8>>, Decision), CompressError> {
    if data.is_empty() {
        return Ok((None, Decision::Empty));
    }
    if !compress::worth_trying(data, policy)? {
        return Ok((None, Decision::SkippedBySample));
    }
    let full = CCTX.with(|cell| -> Result<Vec<u8>, CompressError> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(policy.level) {
            let c = zstd::bulk::Compressor::new(policy.level)
                .map_err(|e| CompressError::Zstd(e.to_string()))?;
            *slot = Some((policy.level, c));
        }
        match slot.as_mut() {
            // The bulk compressor sets the pledged size: the frame declares its content size.
            Some((_, c)) => c
                .compress(data)
                .map_err(|e| CompressError::Zstd(e.to_string())),
            None => Err(CompressError::Zstd("no context".into())),
        }
    })?;
    if (full.len() as f64) <= (data.len() as f64) * (1.0 - policy.min_saving) {
        Ok((Some(full), Decision::Compressed))
    } else {
        Ok((None, Decision::NotWorthIt))
    }
}

/// Collects the ciphertext and hashes it as it is written (64 KiB pieces, still in cache).
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

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_common::compress::DEFAULT_POLICY;
    use keepsake_common::keys::OrgKeys;

    #[test]
    fn reused_context_compresses_like_the_common_crate() {
        let texts = [
            b"<x:xmpmeta> rating 5 </x:xmpmeta>\n".repeat(3000),
            b"short text, short text, short text".to_vec(),
            b"0123456789abcdef".repeat(100_000),
            b"<x:xmpmeta> rating 4 </x:xmpmeta>\n".repeat(10),
        ];
        for t in &texts {
            let (mine, d1) = maybe_compress(t, &DEFAULT_POLICY).unwrap();
            let (theirs, d2) = compress::maybe_compress(t, &DEFAULT_POLICY).unwrap();
            assert_eq!(d1, d2);
            assert_eq!(mine, theirs);
            if let Some(c) = mine {
                assert_eq!(
                    compress::decompress(Codec::Zstd, &c, MAX_PLAIN_LEN).unwrap(),
                    *t
                );
            }
        }
        let level1 = CompressPolicy {
            level: 1,
            ..DEFAULT_POLICY
        };
        assert_eq!(
            maybe_compress(&texts[0], &level1).unwrap().0,
            compress::maybe_compress(&texts[0], &level1).unwrap().0
        );
    }

    #[test]
    fn opens_with_the_common_crate() {
        let keys = OrgKeys::generate().unwrap();
        let text = b"<x:xmpmeta> rating 5 </x:xmpmeta>\n".repeat(2000);
        let mut random = vec![0u8; 300_000];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for b in random.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = (s >> 32) as u8;
        }
        for (chunk, codec) in [(&text[..], Codec::Zstd), (&random[..], Codec::Raw)] {
            let id = keys.chunk_id_key.blob_id(chunk);
            let (blob, _) =
                seal_with_id(&keys.current_recipient(), id, chunk, &DEFAULT_POLICY).unwrap();
            assert_eq!(blob.codec, codec);
            assert_eq!(blob.cipher_hash, CipherHash::of(&blob.ciphertext));
            let reference = keys.seal_blob(chunk).unwrap();
            assert_eq!(reference.id, blob.id);
            assert_eq!(reference.codec, blob.codec);
            let back = keys
                .open_blob(&blob.id, &blob.ciphertext, Some(&blob.cipher_hash))
                .unwrap();
            assert_eq!(back, chunk);
        }
    }
}
