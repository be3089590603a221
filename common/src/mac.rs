//! Entry MACs: the agent's seal on the metadata of every file, folder, link and named pipe it
//! commits, so that a restore can tell metadata the server (or anyone with database access)
//! altered or invented.
//!
//! The key is derived from the organisation's chunk-ID key, which every machine of the
//! organisation holds and the server never sees:
//! `mac_key = BLAKE3_derive_key("keepsake entry-mac v1", chunk-ID key)`, and
//! `mac = BLAKE3_keyed(mac_key, facts)` where `facts` is the fixed binary encoding of
//! [`EntryFacts`] (see [`EntryFacts::encode`] and docs/format.md). What is covered: the kind,
//! the exact path bytes, the mode, the size and content hash of a file, a link's exact target
//! bytes and a file's hard-link group. Not covered: the modification time, and which source or
//! recovery point an entry belongs to — the server can still present an older genuine version of
//! a path, but it cannot place a content at another path, invent a link or a mode, or swap a
//! file's content.
//!
//! Pure computation: no IO, nothing to recover after a crash.

use std::fmt;

use zeroize::Zeroize;

use crate::ids::{ChunkIdKey, ContentHash, EntryMac, HASH_LEN};
use crate::path::wire_path_bytes;

/// `derive_key` context of the entry-MAC key.
pub const ENTRY_MAC_CONTEXT: &str = "keepsake entry-mac v1";

/// What kind of entry the facts describe (the byte that starts the encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// A regular file.
    File = 1,
    /// A folder.
    Dir = 2,
    /// A symbolic link.
    Symlink = 3,
    /// A named pipe (FIFO).
    Fifo = 4,
}

/// The metadata an entry MAC covers. Paths and targets are in wire (display) form; their exact
/// bytes ([`wire_path_bytes`]) are what is encoded.
#[derive(Debug, Clone, Copy)]
pub struct EntryFacts<'a> {
    /// The kind.
    pub kind: FactKind,
    /// The path, relative to the source root, in wire form.
    pub path: &'a str,
    /// The Unix `st_mode` as recorded (0 for links, which record none).
    pub mode: u32,
    /// A file's size (0 for everything else).
    pub size: u64,
    /// A file's content hash.
    pub content_hash: Option<&'a ContentHash>,
    /// A link's target, in wire form.
    pub target: Option<&'a str>,
    /// A file's hard-link group, when it has more than one name.
    pub link: Option<u64>,
}

impl EntryFacts<'_> {
    /// The canonical encoding (all integers little-endian):
    /// kind (1 byte) · path length (u32) · path bytes · mode (u32) · size (u64) ·
    /// content-hash flag (1 byte, 0 or 1) · content hash (32 bytes, when flagged) ·
    /// target length (u32) · target bytes · link flag (1 byte) · link group (u64, when flagged).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let path = wire_path_bytes(self.path);
        out.push(self.kind as u8);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&path);
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        match self.content_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h.as_bytes());
            }
            None => out.push(0),
        }
        let target = self.target.map(wire_path_bytes).unwrap_or_default();
        out.extend_from_slice(&(target.len() as u32).to_le_bytes());
        out.extend_from_slice(&target);
        match self.link {
            Some(l) => {
                out.push(1);
                out.extend_from_slice(&l.to_le_bytes());
            }
            None => out.push(0),
        }
    }
}

/// The key entry MACs are computed with (derived from the chunk-ID key; zeroed on drop).
#[derive(Clone)]
pub struct EntryMacKey([u8; HASH_LEN]);

impl EntryMacKey {
    /// Derives the MAC key from the organisation's chunk-ID key.
    pub fn derive(key: &ChunkIdKey) -> EntryMacKey {
        EntryMacKey(blake3::derive_key(ENTRY_MAC_CONTEXT, key.as_bytes()))
    }

    /// The MAC of `facts`.
    pub fn mac(&self, facts: &EntryFacts<'_>) -> EntryMac {
        let mut buf = Vec::with_capacity(128 + facts.path.len());
        facts.encode(&mut buf);
        EntryMac(*blake3::keyed_hash(&self.0, &buf).as_bytes())
    }

    /// Whether `mac` is the MAC of `facts` (constant-time comparison).
    pub fn verify(&self, facts: &EntryFacts<'_>, mac: &EntryMac) -> bool {
        let mut buf = Vec::with_capacity(128 + facts.path.len());
        facts.encode(&mut buf);
        blake3::keyed_hash(&self.0, &buf) == blake3::Hash::from_bytes(*mac.as_bytes())
    }

    /// The hard-link group of a file: the first 8 bytes (little-endian) of the keyed BLAKE3 of
    /// its device and inode numbers under this key, so the server learns which names share an
    /// inode but not the inode numbers themselves.
    pub fn link_group(&self, device: u64, inode: u64) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"link");
        h.update(&device.to_le_bytes());
        h.update(&inode.to_le_bytes());
        let out = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&out.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }
}

impl Drop for EntryMacKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for EntryMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntryMacKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(path: &'a str, h: &'a ContentHash) -> EntryFacts<'a> {
        EntryFacts {
            kind: FactKind::File,
            path,
            mode: 0o100644,
            size: 10,
            content_hash: Some(h),
            target: None,
            link: None,
        }
    }

    #[test]
    fn every_covered_field_changes_the_mac() {
        let key = EntryMacKey::derive(&ChunkIdKey([5; 32]));
        let h = ContentHash([1; 32]);
        let h2 = ContentHash([2; 32]);
        let base = facts("Smith/IMG_0001.CR3", &h);
        let m = key.mac(&base);
        assert!(key.verify(&base, &m));
        let variants = [
            EntryFacts {
                path: "Smith/IMG_0002.CR3",
                ..base
            },
            EntryFacts {
                mode: 0o104755,
                ..base
            },
            EntryFacts { size: 11, ..base },
            EntryFacts {
                content_hash: Some(&h2),
                ..base
            },
            EntryFacts {
                content_hash: None,
                ..base
            },
            EntryFacts {
                kind: FactKind::Fifo,
                ..base
            },
            EntryFacts {
                target: Some("/etc"),
                ..base
            },
            EntryFacts {
                link: Some(7),
                ..base
            },
        ];
        for v in variants {
            assert!(!key.verify(&v, &m), "{v:?} must not verify");
        }
        // Another organisation's key does not verify it either.
        let other = EntryMacKey::derive(&ChunkIdKey([6; 32]));
        assert!(!other.verify(&base, &m));
    }

    #[test]
    fn the_encoding_is_unambiguous_between_path_and_target() {
        let key = EntryMacKey::derive(&ChunkIdKey([5; 32]));
        let a = EntryFacts {
            kind: FactKind::Symlink,
            path: "ab",
            mode: 0,
            size: 0,
            content_hash: None,
            target: Some("c"),
            link: None,
        };
        let b = EntryFacts {
            path: "a",
            target: Some("bc"),
            ..a
        };
        assert_ne!(key.mac(&a), key.mac(&b));
    }

    #[test]
    fn link_groups_are_keyed_and_stable() {
        let key = EntryMacKey::derive(&ChunkIdKey([5; 32]));
        assert_eq!(key.link_group(1, 2), key.link_group(1, 2));
        assert_ne!(key.link_group(1, 2), key.link_group(1, 3));
        assert_ne!(key.link_group(1, 2), key.link_group(2, 2));
        let other = EntryMacKey::derive(&ChunkIdKey([6; 32]));
        assert_ne!(key.link_group(1, 2), other.link_group(1, 2));
        assert_eq!(format!("{key:?}"), "EntryMacKey(<redacted>)");
    }
}
