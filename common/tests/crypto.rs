//! Blob sealing: round trips, and every kind of damage is an error.

use keepsake_common::compress::Codec;
use keepsake_common::crypto::{open_blob, seal_blob, CryptoError};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash};
use keepsake_common::keys::{AgeIdentity, OrgKeys};
use proptest::prelude::*;

fn setup() -> (AgeIdentity, ChunkIdKey) {
    (AgeIdentity::generate(), ChunkIdKey([42; 32]))
}

fn text(n: usize) -> Vec<u8> {
    b"<crs:Exposure2012>+0.35</crs:Exposure2012> bride groom "
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip(data in prop::collection::vec(any::<u8>(), 0..150_000), compressible: bool) {
        let (id, key) = setup();
        let data = if compressible { text(data.len()) } else { data };
        let b = seal_blob(&[id.to_public()], &key, &data).unwrap();
        prop_assert_eq!(b.id, BlobId::of(&key, &data));
        prop_assert_eq!(b.cipher_hash, CipherHash::of(&b.ciphertext));
        prop_assert_eq!(b.plain_len as usize, data.len());
        if compressible && data.len() > 200 {
            prop_assert_eq!(b.codec, Codec::Zstd);
        }
        let out = open_blob(std::slice::from_ref(&id), &key, &b.id, &b.ciphertext, Some(&b.cipher_hash)).unwrap();
        prop_assert_eq!(&out, &data);
        let out = open_blob(&[id], &key, &b.id, &b.ciphertext, None).unwrap();
        prop_assert_eq!(out, data);
    }

    #[test]
    fn any_bit_flip_is_detected(len in 0usize..140_000, seed: u64, bit_sel: u64, compressible: bool) {
        let (id, key) = setup();
        let data: Vec<u8> = if compressible { text(len) } else {
            (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).rotate_left(17) as u8).collect()
        };
        let b = seal_blob(&[id.to_public()], &key, &data).unwrap();
        let mut bad = b.ciphertext.clone();
        let bit = (bit_sel % (bad.len() as u64 * 8)) as usize;
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(open_blob(std::slice::from_ref(&id), &key, &b.id, &bad, None).is_err(), "flip of bit {bit} not detected");
        let with_hash = open_blob(&[id], &key, &b.id, &bad, Some(&b.cipher_hash));
        prop_assert!(matches!(with_hash, Err(CryptoError::CipherHashMismatch { .. })), "cipher hash must catch bit {}", bit);
    }

    #[test]
    fn truncation_and_extension_are_detected(len in 0usize..140_000, cut_sel: u64, extra in prop::collection::vec(any::<u8>(), 1..70_000)) {
        let (id, key) = setup();
        let data = vec![7u8; len];
        let b = seal_blob(&[id.to_public()], &key, &data).unwrap();
        let cut = (cut_sel % b.ciphertext.len() as u64) as usize;
        prop_assert!(open_blob(std::slice::from_ref(&id), &key, &b.id, &b.ciphertext[..cut], None).is_err(), "truncation to {cut}");
        let mut longer = b.ciphertext.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(open_blob(&[id], &key, &b.id, &longer, None).is_err(), "extension by {}", extra.len());
    }
}

#[test]
fn every_bit_of_a_small_blob() {
    let (id, key) = setup();
    for data in [&b""[..], &b"x"[..], &text(3000)[..]] {
        let b = seal_blob(&[id.to_public()], &key, data).unwrap();
        for bit in 0..b.ciphertext.len() * 8 {
            let mut bad = b.ciphertext.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                open_blob(std::slice::from_ref(&id), &key, &b.id, &bad, None).is_err(),
                "bit {bit} of a {}-byte blob",
                b.ciphertext.len()
            );
        }
        for cut in 0..b.ciphertext.len() {
            assert!(open_blob(
                std::slice::from_ref(&id),
                &key,
                &b.id,
                &b.ciphertext[..cut],
                None
            )
            .is_err());
        }
    }
}

#[test]
fn swapped_blobs_are_detected() {
    let (id, key) = setup();
    let a = seal_blob(&[id.to_public()], &key, b"chunk A").unwrap();
    let b = seal_blob(&[id.to_public()], &key, b"chunk B").unwrap();
    let e = open_blob(std::slice::from_ref(&id), &key, &a.id, &b.ciphertext, None).unwrap_err();
    assert!(matches!(e, CryptoError::IdMismatch { .. }), "{e}");
    let e = open_blob(
        std::slice::from_ref(&id),
        &key,
        &a.id,
        &b.ciphertext,
        Some(&a.cipher_hash),
    )
    .unwrap_err();
    assert!(matches!(e, CryptoError::CipherHashMismatch { .. }), "{e}");
    // Same chunk sealed twice: same id, different ciphertexts, both open.
    let a2 = seal_blob(&[id.to_public()], &key, b"chunk A").unwrap();
    assert_eq!(a.id, a2.id);
    assert_ne!(a.ciphertext, a2.ciphertext);
    assert_eq!(
        open_blob(&[id], &key, &a.id, &a2.ciphertext, None).unwrap(),
        b"chunk A"
    );
}

#[test]
fn wrong_keys_are_errors() {
    let (id, key) = setup();
    let b = seal_blob(&[id.to_public()], &key, b"secret").unwrap();
    let other = AgeIdentity::generate();
    let e = open_blob(&[other], &key, &b.id, &b.ciphertext, None).unwrap_err();
    assert!(matches!(e, CryptoError::NoMatchingKey), "{e}");
    // Right identity, wrong chunk-ID key: the content does not match the id.
    let e = open_blob(&[id], &ChunkIdKey([1; 32]), &b.id, &b.ciphertext, None).unwrap_err();
    assert!(matches!(e, CryptoError::IdMismatch { .. }), "{e}");
    assert!(matches!(
        seal_blob(&[], &key, b"x"),
        Err(CryptoError::NoRecipients)
    ));
}

#[test]
fn rotation_keeps_old_blobs_readable_and_seals_new_ones_to_the_new_key() {
    let mut keys = OrgKeys::generate().unwrap();
    let old_identity = keys.ring.current().identity.clone();
    let old_blob = keys.seal_blob(b"before rotation").unwrap();
    let old_id = keys.key_id().to_string();
    let new_id = keys.rotate();
    assert_ne!(old_id, new_id);
    assert_eq!(keys.ring.keys().len(), 2);
    let new_identity = keys.ring.current().identity.clone();
    let new_blob = keys.seal_blob(b"after rotation").unwrap();
    // The ring opens both.
    assert_eq!(
        keys.open_blob(&old_blob.id, &old_blob.ciphertext, None)
            .unwrap(),
        b"before rotation"
    );
    assert_eq!(
        keys.open_blob(&new_blob.id, &new_blob.ciphertext, None)
            .unwrap(),
        b"after rotation"
    );
    // The new blob is sealed to the new recipient only.
    let k = &keys.chunk_id_key;
    assert!(matches!(
        open_blob(&[old_identity], k, &new_blob.id, &new_blob.ciphertext, None),
        Err(CryptoError::NoMatchingKey)
    ));
    assert!(open_blob(&[new_identity], k, &new_blob.id, &new_blob.ciphertext, None).is_ok());
    // A backup-only machine (public keys) seals to the current recipient too.
    let public = keys.public();
    let from_backup_machine = public.seal_blob(b"from the NAS").unwrap();
    assert_eq!(
        keys.open_blob(
            &from_backup_machine.id,
            &from_backup_machine.ciphertext,
            None
        )
        .unwrap(),
        b"from the NAS"
    );
    assert_eq!(
        public.current_recipient().unwrap().to_string(),
        keys.current_recipient().to_string()
    );
}
