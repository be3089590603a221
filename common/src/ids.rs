//! Keys and hashes that name data: the chunk-ID key, blob IDs, file content hashes and ciphertext
//! hashes.
//!
//! * [`BlobId`] = `BLAKE3-keyed(chunk_id_key, chunk plaintext)`. Keyed so that whoever does not hold
//!   the organisation's chunk-ID key (the server) cannot test whether a known file is stored.
//! * [`ContentHash`] = `BLAKE3-keyed(content_key, whole file plaintext)` where
//!   `content_key = BLAKE3-derive_key("keepsake content-hash v1", chunk_id_key)`. A distinct key
//!   means a file hash can never equal a blob ID, even for a file that is a single chunk.
//! * [`CipherHash`] = plain (unkeyed) BLAKE3 of a blob's ciphertext, so the server can verify and
//!   scrub what it stores without any key.
//!
//! All of them print and parse as 64 lowercase hex digits and serialise (serde) as that string.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Length in bytes of every key and hash in this module.
pub const HASH_LEN: usize = 32;

/// `derive_key` context of the whole-file content hash key.
pub const CONTENT_HASH_CONTEXT: &str = "keepsake content-hash v1";

/// Error parsing a hex key or hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("expected {expected} hex digits, got {got} characters")]
    Length { expected: usize, got: usize },
    #[error("invalid hex digit (only 0-9 and lowercase a-f are accepted)")]
    Digit,
}

fn parse_hex32(s: &str) -> Result<[u8; HASH_LEN], IdParseError> {
    if s.len() != HASH_LEN * 2 {
        return Err(IdParseError::Length {
            expected: HASH_LEN * 2,
            got: s.len(),
        });
    }
    // Canonical form is lowercase: reject uppercase so that every value has exactly one spelling.
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdParseError::Digit);
    }
    let mut out = [0u8; HASH_LEN];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::Digit)?;
    Ok(out)
}

macro_rules! hash32_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; HASH_LEN]);

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
                Self(bytes)
            }
            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
                &self.0
            }
            /// 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash32_type!(
    /// Name of a blob: keyed BLAKE3 of the chunk plaintext under the chunk-ID key.
    BlobId
);
hash32_type!(
    /// Keyed BLAKE3 of a whole file's plaintext (key derived from the chunk-ID key).
    ContentHash
);
hash32_type!(
    /// Plain BLAKE3 of a blob's ciphertext (what the server verifies and scrubs).
    CipherHash
);
hash32_type!(
    /// The agent's MAC over the metadata of one delta entry (see [`crate::mac`]).
    EntryMac
);
hash32_type!(
    /// BLAKE3 over a job's delta entries in the order sent (see [`crate::delta::DeltaDigester`]):
    /// what the agent sent, recomputed by the server from what it staged.
    DeltaDigest
);

impl BlobId {
    /// Computes the blob ID of a plaintext chunk.
    pub fn of(key: &ChunkIdKey, chunk: &[u8]) -> Self {
        BlobId(*blake3::keyed_hash(&key.0, chunk).as_bytes())
    }
}

impl CipherHash {
    /// Computes the hash of a blob ciphertext.
    pub fn of(ciphertext: &[u8]) -> Self {
        CipherHash(*blake3::hash(ciphertext).as_bytes())
    }
}

impl ContentHash {
    /// Hashes a whole file held in memory (use [`ContentHasher`] to stream).
    pub fn of(key: &ChunkIdKey, data: &[u8]) -> Self {
        let mut h = ContentHasher::new(key);
        h.update(data);
        h.finalize()
    }
}

/// Streaming computation of a [`ContentHash`].
#[derive(Clone)]
pub struct ContentHasher {
    inner: blake3::Hasher,
}

impl ContentHasher {
    /// A hasher keyed with the content-hash key derived from `key`.
    pub fn new(key: &ChunkIdKey) -> Self {
        let mut derived = blake3::derive_key(CONTENT_HASH_CONTEXT, &key.0);
        let inner = blake3::Hasher::new_keyed(&derived);
        derived.zeroize();
        Self { inner }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.inner.update(data);
        self
    }

    /// The hash of everything fed so far.
    pub fn finalize(&self) -> ContentHash {
        ContentHash(*self.inner.finalize().as_bytes())
    }
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentHasher")
    }
}

/// The organisation's 32-byte chunk-ID key (secret from the server; every agent of the
/// organisation holds it so that blob IDs agree and deduplicate).
///
/// `Debug` does not print it; `Display` is not implemented. [`ChunkIdKey::to_hex`] and serde give
/// the 64-hex-digit form for key bundles. The bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkIdKey(pub [u8; HASH_LEN]);

impl ChunkIdKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; HASH_LEN];
        getrandom::fill(&mut k)?;
        Ok(ChunkIdKey(k))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// 64 lowercase hex digits (secret: only for key bundles and backup-machine configuration).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the form produced by [`ChunkIdKey::to_hex`].
    pub fn from_hex(s: &str) -> Result<Self, IdParseError> {
        parse_hex32(s).map(ChunkIdKey)
    }

    /// Convenience: the blob ID of `chunk` under this key.
    pub fn blob_id(&self, chunk: &[u8]) -> BlobId {
        BlobId::of(self, chunk)
    }

    /// Convenience: a [`ContentHasher`] under this key.
    pub fn content_hasher(&self) -> ContentHasher {
        ContentHasher::new(self)
    }
}

impl Drop for ChunkIdKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey(<redacted>)")
    }
}

impl Serialize for ChunkIdKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkIdKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkIdKey::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let key = ChunkIdKey([7; 32]);
        let id = BlobId::of(&key, b"hello");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        assert!(s.to_uppercase().parse::<BlobId>().is_err());
        assert!("abc".parse::<BlobId>().is_err());
        assert!(format!("{}zz", &s[..62]).parse::<BlobId>().is_err());
    }

    #[test]
    fn content_hash_never_equals_blob_id() {
        let key = ChunkIdKey([9; 32]);
        let data = b"a file that is a single chunk";
        assert_ne!(BlobId::of(&key, data).0, ContentHash::of(&key, data).0);
        let mut h = ContentHasher::new(&key);
        h.update(b"a file that ").update(b"is a single chunk");
        assert_eq!(h.finalize(), ContentHash::of(&key, data));
    }

    #[test]
    fn keyed_ids_depend_on_key() {
        let a = BlobId::of(&ChunkIdKey([1; 32]), b"x");
        let b = BlobId::of(&ChunkIdKey([2; 32]), b"x");
        assert_ne!(a, b);
        assert_eq!(
            CipherHash::of(b"x").0,
            *blake3::hash(b"x").as_bytes(),
            "cipher hash is plain BLAKE3"
        );
        assert_eq!(
            format!("{:?}", ChunkIdKey([3; 32])),
            "ChunkIdKey(<redacted>)"
        );
    }
}
