//! Compression decision: incompressible data is skipped by the sample test, text is compressed.

use std::time::Instant;

use keepsake_common::compress::{
    decompress, maybe_compress, worth_trying, Codec, Decision, DEFAULT_POLICY, MAX_PLAIN_LEN,
};
use proptest::prelude::*;

fn random(n: usize, mut s: u64) -> Vec<u8> {
    s |= 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as u8
        })
        .collect()
}

fn xmp_like(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "    <rdf:li>{}, {}</rdf:li>\n   crs:Temperature=\"{}\"\n",
                i * 4,
                (i * 7) % 255,
                3000 + i * 13 % 4500
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

#[test]
fn random_data_is_skipped_quickly() {
    // A JPEG-like chunk: a compressible header, then entropy-coded (random) data.
    let mut chunk = xmp_like(600);
    chunk.extend(random(1 << 20, 9));
    let t = Instant::now();
    let mut decisions = Vec::new();
    for _ in 0..20 {
        decisions.push(maybe_compress(&chunk, &DEFAULT_POLICY).unwrap().1);
    }
    let per_chunk = t.elapsed() / 20;
    assert!(
        decisions.iter().all(|d| *d == Decision::SkippedBySample),
        "{decisions:?}"
    );
    // A full zstd attempt on 1 MiB takes milliseconds; the sample test takes microseconds (the
    // bound is loose because tests run unoptimised and in parallel).
    assert!(per_chunk.as_micros() < 5_000, "decision took {per_chunk:?}");
    assert!(!worth_trying(&chunk, &DEFAULT_POLICY).unwrap());
}

#[test]
fn text_is_compressed() {
    for n in [1_000, 5_000, 300_000, 1 << 20] {
        let text = xmp_like(n);
        let (c, d) = maybe_compress(&text, &DEFAULT_POLICY).unwrap();
        assert_eq!(d, Decision::Compressed, "{n} bytes");
        let c = c.unwrap();
        assert!(c.len() * 2 < text.len(), "{n}: {} bytes", c.len());
        assert_eq!(decompress(Codec::Zstd, &c, MAX_PLAIN_LEN).unwrap(), text);
    }
    assert_eq!(
        maybe_compress(&[], &DEFAULT_POLICY).unwrap().1,
        Decision::Empty
    );
}

proptest! {
    #[test]
    fn kept_only_when_it_saves(data in prop::collection::vec(any::<u8>(), 0..40_000), repeat in 1usize..4) {
        let data = data.repeat(repeat);
        let (c, d) = maybe_compress(&data, &DEFAULT_POLICY).unwrap();
        match c {
            Some(c) => {
                prop_assert_eq!(d, Decision::Compressed);
                prop_assert!(c.len() as f64 <= data.len() as f64 * 0.95);
                prop_assert_eq!(decompress(Codec::Zstd, &c, MAX_PLAIN_LEN).unwrap(), data);
            }
            None => prop_assert!(d != Decision::Compressed),
        }
    }

    #[test]
    fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..2_000)) {
        let _ = decompress(Codec::Zstd, &data, MAX_PLAIN_LEN);
    }
}
