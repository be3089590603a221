//! Data the common crate's benchmarks and its `stage_cpu` example share.

/// `n` incompressible bytes (xorshift64 from `seed`), the same for the same seed.
pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(n);
    out
}
