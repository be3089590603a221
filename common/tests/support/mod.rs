//! Test data the common crate's integration tests share.

/// `n` pseudo-random bytes (xorshift64 from `seed`), the same for the same seed.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}
