//! zstd compression of chunks, only where it pays.
//!
//! Photos, RAW files and video are already compressed: a full zstd pass over them would cost CPU
//! and save nothing. The decision is made per chunk, cheaply:
//!
//! 1. Chunks of at most [`CompressPolicy::small_len`] bytes (XMP sidecars, SQLite page groups)
//!    are compressed outright: the attempt costs microseconds.
//! 2. Larger chunks: a sample of [`CompressPolicy::sample_len`] bytes taken from the middle of
//!    the chunk (skipping file headers, which compress even in a JPEG) is compressed at zstd
//!    level 1. If it does not shrink to at most [`CompressPolicy::sample_max_ratio`] of its size,
//!    the chunk is stored raw without a full attempt.
//! 3. Otherwise the whole chunk is compressed at [`CompressPolicy::level`], and the result is
//!    kept only if it saves at least [`CompressPolicy::min_saving`] (5 %) of the chunk.
//!
//! The zstd frames written here always carry their content size, which the reader checks.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::chunking::MAX_CHUNK_LEN;

/// How a blob's payload is encoded (the first byte of the blob plaintext, and the `codec` byte of
/// an upload frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Codec {
    /// The payload is the chunk itself.
    Raw = 0,
    /// The payload is one zstd frame (with content size) holding the chunk.
    Zstd = 1,
}

impl Codec {
    /// The byte value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parses the byte value.
    pub fn from_u8(b: u8) -> Result<Codec, CompressError> {
        match b {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            other => Err(CompressError::UnknownCodec(other)),
        }
    }
}

/// Errors of compression and decompression.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    #[error("zstd frame does not declare its content size")]
    UnknownContentSize,
    #[error("decompressed size {0} exceeds the limit of {1} bytes")]
    TooLarge(u64, usize),
    #[error("corrupt zstd data: {0}")]
    Corrupt(String),
    #[error("zstd failed: {0}")]
    Zstd(String),
}

/// Tunables of the decision. The defaults are what the format documentation measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressPolicy {
    /// zstd level of the full compression.
    pub level: i32,
    /// Chunks up to this length skip the sample test and are compressed outright.
    pub small_len: usize,
    /// Length of the sample compressed at level 1.
    pub sample_len: usize,
    /// The sample must compress to at most this fraction of its size.
    pub sample_max_ratio: f64,
    /// The full result must save at least this fraction of the chunk to be kept.
    pub min_saving: f64,
}

/// The default policy.
pub const DEFAULT_POLICY: CompressPolicy = CompressPolicy {
    level: 3,
    small_len: 16 * 1024,
    sample_len: 4096,
    sample_max_ratio: 0.90,
    min_saving: 0.05,
};

impl Default for CompressPolicy {
    fn default() -> Self {
        DEFAULT_POLICY
    }
}

/// What the decision concluded for a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The sample did not compress: stored raw without a full attempt.
    SkippedBySample,
    /// Fully compressed, but the saving was below the threshold: stored raw.
    NotWorthIt,
    /// Stored compressed.
    Compressed,
    /// Empty chunk: nothing to compress.
    Empty,
}

thread_local! {
    static SAMPLE_CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn sample_compressed_len(sample: &[u8]) -> Result<usize, CompressError> {
    SAMPLE_CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Compressor::new(1).map_err(|e| CompressError::Zstd(e.to_string()))?,
            );
        }
        let c = slot
            .as_mut()
            .ok_or_else(|| CompressError::Zstd("no context".into()))?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(sample.len()));
        c.compress_to_buffer(sample, &mut out)
            .map_err(|e| CompressError::Zstd(e.to_string()))
    })
}

/// The cheap test alone: would a full compression attempt be made for `data`?
pub fn worth_trying(data: &[u8], policy: &CompressPolicy) -> Result<bool, CompressError> {
    if data.is_empty() {
        return Ok(false);
    }
    if data.len() <= policy.small_len {
        return Ok(true);
    }
    let n = policy.sample_len.min(data.len());
    let start = (data.len() - n) / 2;
    let sample = &data[start..start + n];
    let c = sample_compressed_len(sample)?;
    Ok((c as f64) <= (n as f64) * policy.sample_max_ratio)
}

/// Decides and, when it pays, compresses. Returns the compressed payload (`None` = store raw)
/// and what was decided.
pub fn maybe_compress(
    data: &[u8],
    policy: &CompressPolicy,
) -> Result<(Option<Vec<u8>>, Decision), CompressError> {
    if data.is_empty() {
        return Ok((None, Decision::Empty));
    }
    if !worth_trying(data, policy)? {
        return Ok((None, Decision::SkippedBySample));
    }
    let full = compress(data, policy.level)?;
    if (full.len() as f64) <= (data.len() as f64) * (1.0 - policy.min_saving) {
        Ok((Some(full), Decision::Compressed))
    } else {
        Ok((None, Decision::NotWorthIt))
    }
}

thread_local! {
    /// One compression context per thread, with the level it was made for. Creating a context
    /// per chunk was ~6 % of the CPU time of a backup of small sidecars; a one-shot compression
    /// starts a new frame and keeps only the parameters (the level), so reusing the context
    /// changes nothing in the output.
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses `data` into one zstd frame that declares its content size, with this thread's
/// compression context (made on first use, and again when the level changes).
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, CompressError> {
    let zstd_err = |e: std::io::Error| CompressError::Zstd(e.to_string());
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).map_err(zstd_err)?));
        }
        match slot.as_mut() {
            // The bulk compressor sets the pledged source size, so the frame header carries the
            // content size.
            Some((_, c)) => c.compress(data).map_err(zstd_err),
            None => Err(CompressError::Zstd("no compression context".into())),
        }
    })
}

/// Decodes a payload of `codec`, refusing output larger than `max_len`.
pub fn decompress(codec: Codec, payload: &[u8], max_len: usize) -> Result<Vec<u8>, CompressError> {
    match codec {
        Codec::Raw => {
            if payload.len() > max_len {
                return Err(CompressError::TooLarge(payload.len() as u64, max_len));
            }
            Ok(payload.to_vec())
        }
        Codec::Zstd => {
            let size = match zstd::zstd_safe::get_frame_content_size(payload) {
                Ok(Some(n)) => n,
                Ok(None) => return Err(CompressError::UnknownContentSize),
                Err(_) => return Err(CompressError::Corrupt("bad frame header".into())),
            };
            if size > max_len as u64 {
                return Err(CompressError::TooLarge(size, max_len));
            }
            let out = zstd::bulk::decompress(payload, size as usize)
                .map_err(|e| CompressError::Corrupt(e.to_string()))?;
            if out.len() as u64 != size {
                return Err(CompressError::Corrupt("content size mismatch".into()));
            }
            Ok(out)
        }
    }
}

/// Largest chunk a blob may decode to.
pub const MAX_PLAIN_LEN: usize = MAX_CHUNK_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn random_skipped_text_compressed() {
        let rnd = pseudo_random(1 << 20, 1);
        assert_eq!(
            maybe_compress(&rnd, &DEFAULT_POLICY).unwrap().1,
            Decision::SkippedBySample
        );
        let text = b"<rdf:li>bride groom ceremony</rdf:li>\n".repeat(30000);
        let (c, d) = maybe_compress(&text, &DEFAULT_POLICY).unwrap();
        assert_eq!(d, Decision::Compressed);
        let c = c.unwrap();
        assert!(c.len() < text.len() / 10);
        assert_eq!(decompress(Codec::Zstd, &c, MAX_PLAIN_LEN).unwrap(), text);
        assert!(matches!(
            decompress(Codec::Zstd, &c, 100),
            Err(CompressError::TooLarge(..))
        ));
        // Small random chunk: attempted, not kept.
        assert_eq!(
            maybe_compress(&rnd[..4000], &DEFAULT_POLICY).unwrap().1,
            Decision::NotWorthIt
        );
        assert!(Codec::from_u8(7).is_err());
    }
}
