//! Sealing with a known blob ID and compressing with the per-thread zstd context, against the
//! blob `docs/format.md` section 4 specifies, rebuilt here from its parts: the age file decrypts
//! (with the `age` crate directly) to one codec byte and the payload, the payload is the chunk
//! itself or exactly the zstd frame a fresh compression context makes (declaring its content
//! size), and the cipher hash is the plain BLAKE3 of the age file.

mod support;
use support::pseudo_random as random;

use std::io::Read;

use keepsake_common::compress::{
    compress, decompress, maybe_compress, Codec, CompressPolicy, Decision, DEFAULT_POLICY,
    MAX_PLAIN_LEN,
};
use keepsake_common::crypto::{
    open_blob, seal_blob_with, seal_blob_with_id, CryptoError, SealedBlob,
};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash};
use keepsake_common::keys::AgeIdentity;

fn texts() -> Vec<Vec<u8>> {
    vec![
        varied_text(1 << 20),
        b"<x:xmpmeta> rating 5 </x:xmpmeta>\n".repeat(3000),
        b"short text, short text, short text".to_vec(),
        b"0123456789abcdef".repeat(100_000),
        b"<x:xmpmeta> rating 4 </x:xmpmeta>\n".repeat(10),
    ]
}

/// Text whose zstd output depends on the level.
fn varied_text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 100);
    let mut s = 1u64;
    while out.len() < n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(
            format!(
                "<rdf:li crs:Exposure2012=\"{}\" crs:Temperature=\"{}\"/>\n",
                (s >> 40) % 400,
                4000 + (s >> 20) % 3000
            )
            .as_bytes(),
        );
    }
    out.truncate(n);
    out
}

/// A zstd frame from a fresh context: the reference encoding of a compressed payload.
fn fresh_frame(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::Compressor::new(level)
        .unwrap()
        .compress(data)
        .unwrap()
}

/// The blob plaintext (codec byte + payload), decrypted with the `age` crate alone.
fn age_plaintext(identity: &AgeIdentity, ciphertext: &[u8]) -> Vec<u8> {
    let decryptor = age::Decryptor::new_buffered(ciphertext).unwrap();
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

/// Checks `blob` against the format's blob for `chunk`.
fn check_blob(identity: &AgeIdentity, blob: &SealedBlob, chunk: &[u8], policy: &CompressPolicy) {
    assert_eq!(blob.cipher_hash, CipherHash::of(&blob.ciphertext));
    assert_eq!(blob.plain_len as usize, chunk.len());
    let plaintext = age_plaintext(identity, &blob.ciphertext);
    let (&codec, payload) = plaintext.split_first().unwrap();
    assert_eq!(codec, blob.codec.as_u8());
    match blob.codec {
        Codec::Raw => assert_eq!(payload, chunk),
        Codec::Zstd => {
            assert_eq!(payload, fresh_frame(chunk, policy.level));
            assert!(matches!(
                zstd::zstd_safe::get_frame_content_size(payload),
                Ok(Some(n)) if n == chunk.len() as u64
            ));
        }
    }
}

#[test]
fn reused_context_compresses_like_a_fresh_one() {
    let level1 = CompressPolicy {
        level: 1,
        ..DEFAULT_POLICY
    };
    // Interleaved levels: the thread's context is remade when the level changes.
    for policy in [DEFAULT_POLICY, level1, DEFAULT_POLICY] {
        for t in &texts() {
            let frame = compress(t, policy.level).unwrap();
            assert_eq!(frame, fresh_frame(t, policy.level));
            assert_eq!(decompress(Codec::Zstd, &frame, MAX_PLAIN_LEN).unwrap(), *t);
            let (kept, decision) = maybe_compress(t, &policy).unwrap();
            match decision {
                Decision::Compressed => assert_eq!(kept, Some(frame)),
                other => {
                    assert_eq!(other, Decision::NotWorthIt);
                    assert_eq!(kept, None);
                }
            }
        }
    }
}

#[test]
fn contexts_are_per_thread() {
    let data = varied_text(200_000);
    let level = |i: usize, j: usize| if (i + j).is_multiple_of(3) { 1 } else { 3 };
    let expected = |l: i32| fresh_frame(&data, l);
    let (one, three) = (expected(1), expected(3));
    assert_ne!(one, three);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (data, one, three) = (&data, &one, &three);
                s.spawn(move || {
                    (0..50).all(|j| {
                        let l = level(i, j);
                        compress(data, l).unwrap() == *(if l == 1 { one } else { three })
                    })
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    });
}

#[test]
fn id_given_seal_is_the_formats_blob() {
    let identity = AgeIdentity::generate();
    let recipients = [identity.to_public()];
    let key = ChunkIdKey([9; 32]);
    let mut chunks = texts();
    chunks.push(random(300_000, 1));
    chunks.push(random(20_000, 2));
    chunks.push(Vec::new());
    for chunk in &chunks {
        let id = BlobId::of(&key, chunk);
        let (blob, decision) = seal_blob_with_id(&recipients, id, chunk, &DEFAULT_POLICY).unwrap();
        assert_eq!(blob.id, id);
        check_blob(&identity, &blob, chunk, &DEFAULT_POLICY);
        assert_eq!(
            blob.codec == Codec::Zstd,
            decision == Decision::Compressed,
            "{decision:?}"
        );
        let (reference, ref_decision) =
            seal_blob_with(&recipients, &key, chunk, &DEFAULT_POLICY).unwrap();
        assert_eq!(
            (
                reference.id,
                reference.codec,
                reference.plain_len,
                ref_decision
            ),
            (blob.id, blob.codec, blob.plain_len, decision)
        );
        check_blob(&identity, &reference, chunk, &DEFAULT_POLICY);
        let back = open_blob(
            std::slice::from_ref(&identity),
            &key,
            &blob.id,
            &blob.ciphertext,
            Some(&blob.cipher_hash),
        )
        .unwrap();
        assert_eq!(&back, chunk);
    }
}

#[test]
fn a_wrong_id_is_refused_on_opening() {
    let identity = AgeIdentity::generate();
    let key = ChunkIdKey([9; 32]);
    let chunk = random(5000, 3);
    let wrong = BlobId::of(&key, b"another chunk");
    let (blob, _) =
        seal_blob_with_id(&[identity.to_public()], wrong, &chunk, &DEFAULT_POLICY).unwrap();
    assert!(matches!(
        open_blob(&[identity], &key, &wrong, &blob.ciphertext, None),
        Err(CryptoError::IdMismatch { .. })
    ));
}

#[test]
fn id_given_seal_checks_like_the_others() {
    let key = ChunkIdKey([9; 32]);
    let id = BlobId::of(&key, b"x");
    assert!(matches!(
        seal_blob_with_id(&[], id, b"x", &DEFAULT_POLICY),
        Err(CryptoError::NoRecipients)
    ));
    let big = vec![0u8; MAX_PLAIN_LEN + 1];
    assert!(matches!(
        seal_blob_with_id(
            &[AgeIdentity::generate().to_public()],
            id,
            &big,
            &DEFAULT_POLICY
        ),
        Err(CryptoError::TooLarge(_))
    ));
}
