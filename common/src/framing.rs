//! The binary body that carries many blobs in one HTTP request (upload) or answer (download).
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! stream header   16 bytes   magic "KSBLOBS\n", u16 version (1), u16 flags (0), u32 reserved (0)
//! frame*          80 bytes   blob frame header, followed by `cipher_len` ciphertext bytes
//! trailer         80 bytes   end frame: blob count, total ciphertext bytes, BLAKE3 of all headers
//! ```
//!
//! Blob frame header (80 bytes):
//!
//! ```text
//!  0  u8       tag 0x42 ('B')
//!  1  u8       codec (0 raw, 1 zstd)
//!  2  u16      flags (0)
//!  4  u32      cipher_len (1 ..= MAX_CIPHER_LEN)
//!  8  u32      plain_len (0 ..= MAX_PLAIN_LEN)
//! 12  u32      reserved (0)
//! 16  [u8;32]  blob id
//! 48  [u8;32]  cipher hash (BLAKE3 of the ciphertext)
//! ```
//!
//! End frame (80 bytes):
//!
//! ```text
//!  0  u8       tag 0x45 ('E')
//!  1  [u8;7]   zero
//!  8  u64      number of blob frames
//! 16  u64      sum of cipher_len
//! 24  [u8;32]  BLAKE3 of the concatenated 80-byte blob frame headers
//! 56  [u8;24]  zero
//! ```
//!
//! Nothing may follow the end frame. Every piece is fixed-size or length-prefixed, so a missing
//! byte anywhere is detected: before the trailer by a short read, and a body cut exactly at a
//! frame boundary by the missing trailer.
//!
//! The functions on [`StreamHeader`], [`FrameHeader`], [`Trailer`] and [`StreamValidator`] do no
//! IO (sans-IO), so an async server drives them with its own reads; [`FrameWriter`] and
//! [`FrameReader`] are the blocking `std::io` drivers used by the agent and tests.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::io::{self, Read, Write};

use crate::compress::Codec;
use crate::crypto::{SealedBlob, MAX_CIPHER_LEN, MAX_PLAIN_LEN};
use crate::ids::{BlobId, CipherHash};

/// Magic bytes at the start of a blob stream.
pub const STREAM_MAGIC: [u8; 8] = *b"KSBLOBS\n";
/// Current (and only) version.
pub const STREAM_VERSION: u16 = 1;
/// Length of the stream header.
pub const STREAM_HEADER_LEN: usize = 16;
/// Length of a frame header and of the end frame.
pub const FRAME_HEADER_LEN: usize = 80;
/// Tag byte of a blob frame.
pub const TAG_BLOB: u8 = b'B';
/// Tag byte of the end frame.
pub const TAG_END: u8 = b'E';
/// Largest ciphertext a frame may carry.
pub const MAX_FRAME_CIPHER_LEN: u32 = MAX_CIPHER_LEN as u32;

/// Errors of the blob stream format.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("not a Keepsake blob stream (bad magic)")]
    BadMagic,
    #[error("unsupported blob stream version {0}")]
    UnsupportedVersion(u16),
    #[error("nonzero reserved field or flags in {0}")]
    Reserved(&'static str),
    #[error("unknown frame tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("expected a blob frame, found the end frame")]
    UnexpectedEnd,
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    #[error("ciphertext length {0} out of range 1..={MAX_FRAME_CIPHER_LEN}")]
    CipherLen(u32),
    #[error("plaintext length {0} exceeds {MAX_PLAIN_LEN}")]
    PlainLen(u32),
    #[error("ciphertext of blob {id} does not match its cipher hash")]
    CipherHashMismatch { id: BlobId },
    #[error("stream truncated: {0}")]
    Truncated(&'static str),
    #[error("trailer mismatch: {0}")]
    TrailerMismatch(&'static str),
    #[error("data after the end frame")]
    TrailingData,
    #[error("too many blobs in one stream (limit {0})")]
    TooManyBlobs(u64),
    #[error("stream larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// The 16-byte stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub version: u16,
}

impl Default for StreamHeader {
    fn default() -> Self {
        StreamHeader {
            version: STREAM_VERSION,
        }
    }
}

impl StreamHeader {
    /// The 16 bytes.
    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[..8].copy_from_slice(&STREAM_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b
    }

    /// Parses and checks the 16 bytes.
    pub fn decode(b: &[u8; STREAM_HEADER_LEN]) -> Result<StreamHeader, FramingError> {
        if b[..8] != STREAM_MAGIC {
            return Err(FramingError::BadMagic);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != STREAM_VERSION {
            return Err(FramingError::UnsupportedVersion(version));
        }
        if b[10..].iter().any(|&x| x != 0) {
            return Err(FramingError::Reserved("stream header"));
        }
        Ok(StreamHeader { version })
    }
}

/// Header of one blob frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub blob_id: BlobId,
    pub cipher_hash: CipherHash,
    pub cipher_len: u32,
    pub plain_len: u32,
    pub codec: Codec,
}

impl FrameHeader {
    /// The header of a sealed blob.
    pub fn for_blob(b: &SealedBlob) -> FrameHeader {
        FrameHeader {
            blob_id: b.id,
            cipher_hash: b.cipher_hash,
            cipher_len: b.ciphertext.len() as u32,
            plain_len: b.plain_len,
            codec: b.codec,
        }
    }

    /// The 80 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = TAG_BLOB;
        b[1] = self.codec.as_u8();
        b[4..8].copy_from_slice(&self.cipher_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.plain_len.to_le_bytes());
        b[16..48].copy_from_slice(self.blob_id.as_bytes());
        b[48..80].copy_from_slice(self.cipher_hash.as_bytes());
        b
    }

    /// Parses a blob frame header; the end frame is [`FramingError::UnexpectedEnd`] (use
    /// [`Frame::decode`] to accept both).
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FramingError> {
        match b[0] {
            TAG_BLOB => {}
            TAG_END => return Err(FramingError::UnexpectedEnd),
            t => return Err(FramingError::UnknownTag(t)),
        }
        let codec = Codec::from_u8(b[1]).map_err(|_| FramingError::UnknownCodec(b[1]))?;
        if b[2] != 0 || b[3] != 0 || b[12..16].iter().any(|&x| x != 0) {
            return Err(FramingError::Reserved("frame header"));
        }
        let cipher_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let plain_len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if cipher_len == 0 || cipher_len > MAX_FRAME_CIPHER_LEN {
            return Err(FramingError::CipherLen(cipher_len));
        }
        if plain_len as usize > MAX_PLAIN_LEN {
            return Err(FramingError::PlainLen(plain_len));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[16..48]);
        let mut h = [0u8; 32];
        h.copy_from_slice(&b[48..80]);
        Ok(FrameHeader {
            blob_id: BlobId(id),
            cipher_hash: CipherHash(h),
            cipher_len,
            plain_len,
            codec,
        })
    }

    /// Checks that `ciphertext` has the announced length and hash.
    pub fn verify(&self, ciphertext: &[u8]) -> Result<(), FramingError> {
        if ciphertext.len() != self.cipher_len as usize {
            return Err(FramingError::Truncated("ciphertext shorter than announced"));
        }
        if CipherHash::of(ciphertext) != self.cipher_hash {
            return Err(FramingError::CipherHashMismatch { id: self.blob_id });
        }
        Ok(())
    }
}

/// The end frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub blob_count: u64,
    pub total_cipher_len: u64,
    pub headers_hash: [u8; 32],
}

impl Trailer {
    /// The 80 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = TAG_END;
        b[8..16].copy_from_slice(&self.blob_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.total_cipher_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.headers_hash);
        b
    }

    /// Parses the end frame.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<Trailer, FramingError> {
        if b[0] != TAG_END {
            return Err(FramingError::UnknownTag(b[0]));
        }
        if b[1..8].iter().chain(&b[56..80]).any(|&x| x != 0) {
            return Err(FramingError::Reserved("end frame"));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&b[8..16]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[16..24]);
        let mut h = [0u8; 32];
        h.copy_from_slice(&b[24..56]);
        Ok(Trailer {
            blob_count: u64::from_le_bytes(c),
            total_cipher_len: u64::from_le_bytes(t),
            headers_hash: h,
        })
    }
}

/// A decoded 80-byte frame: a blob header or the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Blob(FrameHeader),
    End(Trailer),
}

impl Frame {
    /// Parses either kind of frame.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<Frame, FramingError> {
        match b[0] {
            TAG_END => Trailer::decode(b).map(Frame::End),
            _ => FrameHeader::decode(b).map(Frame::Blob),
        }
    }
}

/// Limits a reader enforces on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most blob frames in one stream.
    pub max_blobs: u64,
    /// Most ciphertext bytes in one stream.
    pub max_total_cipher_len: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_blobs: 1 << 20,
            max_total_cipher_len: 1 << 40,
        }
    }
}

/// Running state of a stream (sans-IO): feed every blob header, then check the trailer.
#[derive(Debug, Clone)]
pub struct StreamValidator {
    count: u64,
    total: u64,
    hasher: blake3::Hasher,
    limits: StreamLimits,
}

impl Default for StreamValidator {
    fn default() -> Self {
        Self::new(StreamLimits::default())
    }
}

impl StreamValidator {
    pub fn new(limits: StreamLimits) -> Self {
        StreamValidator {
            count: 0,
            total: 0,
            hasher: blake3::Hasher::new(),
            limits,
        }
    }

    /// Accounts for one blob frame (call before reading its ciphertext).
    pub fn observe(&mut self, h: &FrameHeader) -> Result<(), FramingError> {
        self.count += 1;
        self.total += u64::from(h.cipher_len);
        if self.count > self.limits.max_blobs {
            return Err(FramingError::TooManyBlobs(self.limits.max_blobs));
        }
        if self.total > self.limits.max_total_cipher_len {
            return Err(FramingError::TooLarge(self.limits.max_total_cipher_len));
        }
        self.hasher.update(&h.encode());
        Ok(())
    }

    /// The trailer the writer must produce for what was observed.
    pub fn trailer(&self) -> Trailer {
        Trailer {
            blob_count: self.count,
            total_cipher_len: self.total,
            headers_hash: *self.hasher.finalize().as_bytes(),
        }
    }

    /// Checks a received trailer against what was observed.
    pub fn finish(&self, t: &Trailer) -> Result<(), FramingError> {
        let mine = self.trailer();
        if t.blob_count != mine.blob_count {
            return Err(FramingError::TrailerMismatch("blob count"));
        }
        if t.total_cipher_len != mine.total_cipher_len {
            return Err(FramingError::TrailerMismatch("total length"));
        }
        if t.headers_hash != mine.headers_hash {
            return Err(FramingError::TrailerMismatch("headers hash"));
        }
        Ok(())
    }

    /// Blob frames observed so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Blocking writer of a blob stream.
pub struct FrameWriter<W: Write> {
    out: W,
    state: StreamValidator,
}

impl<W: Write> FrameWriter<W> {
    /// Writes the stream header.
    pub fn new(mut out: W) -> Result<Self, FramingError> {
        out.write_all(&StreamHeader::default().encode())?;
        Ok(FrameWriter {
            out,
            state: StreamValidator::new(StreamLimits {
                max_blobs: u64::MAX,
                max_total_cipher_len: u64::MAX,
            }),
        })
    }

    /// Appends a sealed blob.
    pub fn write_blob(&mut self, b: &SealedBlob) -> Result<(), FramingError> {
        self.write_frame(&FrameHeader::for_blob(b), &b.ciphertext)
    }

    /// Appends a frame; `ciphertext` must match the header's length and hash.
    pub fn write_frame(&mut self, h: &FrameHeader, ciphertext: &[u8]) -> Result<(), FramingError> {
        if h.cipher_len == 0 || h.cipher_len > MAX_FRAME_CIPHER_LEN {
            return Err(FramingError::CipherLen(h.cipher_len));
        }
        if h.plain_len as usize > MAX_PLAIN_LEN {
            return Err(FramingError::PlainLen(h.plain_len));
        }
        h.verify(ciphertext)?;
        self.state.observe(h)?;
        self.out.write_all(&h.encode())?;
        self.out.write_all(ciphertext)?;
        Ok(())
    }

    /// Blobs written so far.
    pub fn count(&self) -> u64 {
        self.state.count()
    }

    /// Writes the end frame, flushes, and returns the inner writer.
    pub fn finish(mut self) -> Result<W, FramingError> {
        self.out.write_all(&self.state.trailer().encode())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), FramingError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FramingError::Truncated(what)
        } else {
            FramingError::Io(e)
        }
    })
}

/// Blocking reader of a blob stream: yields `(header, ciphertext)` with the ciphertext already
/// checked against the header's hash, and checks the trailer and the end of input.
pub struct FrameReader<R: Read> {
    input: R,
    state: StreamValidator,
    done: bool,
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the stream header.
    pub fn new(input: R) -> Result<Self, FramingError> {
        Self::with_limits(input, StreamLimits::default())
    }

    /// [`FrameReader::new`] with explicit limits.
    pub fn with_limits(mut input: R, limits: StreamLimits) -> Result<Self, FramingError> {
        let mut h = [0u8; STREAM_HEADER_LEN];
        read_exact_or(&mut input, &mut h, "stream header")?;
        StreamHeader::decode(&h)?;
        Ok(FrameReader {
            input,
            state: StreamValidator::new(limits),
            done: false,
        })
    }

    /// The next blob, or `None` after a valid end frame.
    pub fn next_blob(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, FramingError> {
        if self.done {
            return Ok(None);
        }
        let mut hb = [0u8; FRAME_HEADER_LEN];
        read_exact_or(&mut self.input, &mut hb, "missing frame or end frame")?;
        match Frame::decode(&hb)? {
            Frame::End(t) => {
                self.state.finish(&t)?;
                let mut probe = [0u8; 1];
                loop {
                    match self.input.read(&mut probe) {
                        Ok(0) => break,
                        Ok(_) => return Err(FramingError::TrailingData),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(FramingError::Io(e)),
                    }
                }
                self.done = true;
                Ok(None)
            }
            Frame::Blob(h) => {
                self.state.observe(&h)?;
                let mut ct = vec![0u8; h.cipher_len as usize];
                read_exact_or(&mut self.input, &mut ct, "ciphertext")?;
                h.verify(&ct)?;
                Ok(Some((h, ct)))
            }
        }
    }

    /// Blobs read so far.
    pub fn blobs_read(&self) -> u64 {
        self.state.count()
    }
}

impl<R: Read> Iterator for FrameReader<R> {
    type Item = Result<(FrameHeader, Vec<u8>), FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_blob() {
            Ok(Some(x)) => Some(Ok(x)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
