//! Upload framing: round trip, and every truncation or corruption is an error.

use keepsake_common::compress::Codec;
use keepsake_common::crypto::{seal_blob, SealedBlob};
use keepsake_common::framing::{
    Frame, FrameHeader, FrameReader, FrameWriter, FramingError, StreamHeader, StreamLimits,
    StreamValidator, Trailer, FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash};
use keepsake_common::keys::AgeIdentity;
use proptest::prelude::*;

fn fake_blob(i: usize, len: usize) -> SealedBlob {
    let ciphertext: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
    SealedBlob {
        id: BlobId([i as u8; 32]),
        cipher_hash: CipherHash::of(&ciphertext),
        ciphertext,
        plain_len: len as u32 * 2,
        codec: if i.is_multiple_of(2) {
            Codec::Raw
        } else {
            Codec::Zstd
        },
    }
}

fn encode(blobs: &[SealedBlob]) -> Vec<u8> {
    let mut w = FrameWriter::new(Vec::new()).unwrap();
    for b in blobs {
        w.write_blob(b).unwrap();
    }
    w.finish().unwrap()
}

fn decode(bytes: &[u8]) -> Result<Vec<(FrameHeader, Vec<u8>)>, FramingError> {
    FrameReader::new(bytes)?.collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_and_every_truncation(lens in prop::collection::vec(1usize..600, 0..6)) {
        let blobs: Vec<SealedBlob> = lens.iter().enumerate().map(|(i, &l)| fake_blob(i, l)).collect();
        let bytes = encode(&blobs);
        let got = decode(&bytes).unwrap();
        prop_assert_eq!(got.len(), blobs.len());
        for ((h, ct), b) in got.iter().zip(&blobs) {
            prop_assert_eq!(*h, FrameHeader::for_blob(b));
            prop_assert_eq!(ct, &b.ciphertext);
        }
        for cut in 0..bytes.len() {
            prop_assert!(decode(&bytes[..cut]).is_err(), "truncation to {} of {} bytes accepted", cut, bytes.len());
        }
    }

    #[test]
    fn any_byte_corruption_is_detected(lens in prop::collection::vec(1usize..300, 1..4), pos_sel: u64, xor in 1u8..=255) {
        let blobs: Vec<SealedBlob> = lens.iter().enumerate().map(|(i, &l)| fake_blob(i, l)).collect();
        let mut bytes = encode(&blobs);
        let pos = (pos_sel % bytes.len() as u64) as usize;
        bytes[pos] ^= xor;
        prop_assert!(decode(&bytes).is_err(), "corruption at byte {} accepted", pos);
    }
}

#[test]
fn real_sealed_blobs_round_trip() {
    let id = AgeIdentity::generate();
    let key = ChunkIdKey([5; 32]);
    let blobs: Vec<SealedBlob> = [&b"one"[..], &[9u8; 100_000][..], b"three"]
        .iter()
        .map(|c| seal_blob(&[id.to_public()], &key, c).unwrap())
        .collect();
    let bytes = encode(&blobs);
    let mut r = FrameReader::new(&bytes[..]).unwrap();
    let mut n = 0;
    while let Some((h, ct)) = r.next_blob().unwrap() {
        assert_eq!(h.blob_id, blobs[n].id);
        assert_eq!(ct, blobs[n].ciphertext);
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(r.blobs_read(), 3);
}

#[test]
fn malformed_input_errors() {
    let bytes = encode(&[fake_blob(1, 10)]);
    // Bad magic and version.
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(decode(&b), Err(FramingError::BadMagic)));
    let mut b = bytes.clone();
    b[8] = 9;
    assert!(matches!(
        decode(&b),
        Err(FramingError::UnsupportedVersion(9))
    ));
    // Data after the end frame.
    let mut b = bytes.clone();
    b.push(0);
    assert!(matches!(decode(&b), Err(FramingError::TrailingData)));
    // Empty stream (header + trailer only) is valid and has no blobs.
    assert!(decode(&encode(&[])).unwrap().is_empty());
    // Unknown frame tag and oversized length.
    let mut b = bytes.clone();
    b[STREAM_HEADER_LEN] = b'Z';
    assert!(matches!(decode(&b), Err(FramingError::UnknownTag(b'Z'))));
    let mut h = FrameHeader::for_blob(&fake_blob(1, 10)).encode();
    h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        FrameHeader::decode(&h),
        Err(FramingError::CipherLen(_))
    ));
    // A frame header decoded as blob header when it is the end frame.
    let t = Trailer {
        blob_count: 0,
        total_cipher_len: 0,
        headers_hash: [0; 32],
    };
    assert!(matches!(
        FrameHeader::decode(&t.encode()),
        Err(FramingError::UnexpectedEnd)
    ));
    assert!(matches!(Frame::decode(&t.encode()), Ok(Frame::End(_))));
    // Writer refuses a frame whose ciphertext does not match its header.
    let mut w = FrameWriter::new(Vec::new()).unwrap();
    let mut blob = fake_blob(2, 10);
    blob.ciphertext[0] ^= 1;
    assert!(matches!(
        w.write_blob(&blob),
        Err(FramingError::CipherHashMismatch { .. })
    ));
    // Limits.
    let bytes = encode(&[fake_blob(1, 10), fake_blob(2, 10)]);
    let r = FrameReader::with_limits(
        &bytes[..],
        StreamLimits {
            max_blobs: 1,
            max_total_cipher_len: 1000,
        },
    )
    .unwrap();
    assert!(matches!(
        r.collect::<Result<Vec<_>, _>>(),
        Err(FramingError::TooManyBlobs(1))
    ));
}

#[test]
fn sans_io_pieces_compose() {
    // What an async server does: decode fixed-size pieces itself.
    let blobs = [fake_blob(3, 50), fake_blob(4, 70)];
    let bytes = encode(&blobs);
    let mut pos = 0;
    let hdr: [u8; STREAM_HEADER_LEN] = bytes[..STREAM_HEADER_LEN].try_into().unwrap();
    assert_eq!(StreamHeader::decode(&hdr).unwrap(), StreamHeader::default());
    pos += STREAM_HEADER_LEN;
    let mut v = StreamValidator::default();
    loop {
        let fh: [u8; FRAME_HEADER_LEN] = bytes[pos..pos + FRAME_HEADER_LEN].try_into().unwrap();
        pos += FRAME_HEADER_LEN;
        match Frame::decode(&fh).unwrap() {
            Frame::Blob(h) => {
                v.observe(&h).unwrap();
                let ct = &bytes[pos..pos + h.cipher_len as usize];
                h.verify(ct).unwrap();
                pos += ct.len();
            }
            Frame::End(t) => {
                v.finish(&t).unwrap();
                break;
            }
        }
    }
    assert_eq!(pos, bytes.len());
    assert_eq!(v.count(), 2);
}
