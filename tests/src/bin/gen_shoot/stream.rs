//! Randomness and writing: one ChaCha8 stream per (seed, label), the label being a file name or
//! a purpose, and files written as header + random body + trailer in 1 MiB pieces.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::PIECE;
use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn rng_for(seed: u64, label: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new_derive_key("keepsake gen-shoot v1 per-label stream");
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Writes `header`, then random bytes, then `trailer`, for a file of exactly `size` bytes.
pub(crate) fn write_stream(
    path: &Path,
    size: u64,
    header: &[u8],
    trailer: &[u8],
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let fixed = (header.len() + trailer.len()) as u64;
    if size < fixed {
        bail!("{}: size {size} smaller than its header", path.display());
    }
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(header)?;
    let mut buf = vec![0u8; PIECE];
    let mut left = size - fixed;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.write_all(trailer)?;
    Ok(())
}
