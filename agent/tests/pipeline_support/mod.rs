//! Helpers shared by the pipeline tests: data generators, and a restore that reads pack files and
//! delta parts back with nothing but the format crate and the organisation's identity.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use keepsake_common::delta::{DeltaReader, Entry};
use keepsake_common::framing::{FrameHeader, FrameReader};
use keepsake_common::ids::{BlobId, ContentHash};
use keepsake_common::keys::OrgKeys;
use keepsake_common::path::wire_path_bytes;

/// Deterministic incompressible bytes (xorshift64*), fast enough for gigabytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    fill_random(&mut out, seed);
    out
}

/// Fills `buf` with the xorshift64* stream of `seed`.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    // splitmix64 of the seed: distinct seeds give unrelated streams (never the zero state).
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    s = (s ^ (s >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    s = (s ^ (s >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    s = (s ^ (s >> 31)) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        c.copy_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    for b in chunks.into_remainder() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        *b = (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
    }
}

/// XMP-like text of about `n` bytes.
pub fn sidecar_text(n: usize, seed: u64) -> Vec<u8> {
    let mut s = String::from("<?xpacket begin=\"\"?>\n<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n");
    let mut i = seed;
    while s.len() < n {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(&format!(
            "  <rdf:li crs:Exposure2012=\"{:+.2}\" crs:Temperature=\"{}\" xmp:Rating=\"{}\"/>\n",
            ((i >> 40) % 400) as f64 / 100.0 - 2.0,
            4000 + (i >> 20) % 3000,
            (i >> 8) % 6
        ));
    }
    s.truncate(n);
    s.into_bytes()
}

/// Writes `content` to `root/rel` (raw bytes of the relative path), creating parents.
pub fn write_raw(root: &Path, rel: &[u8], content: &[u8]) -> PathBuf {
    let p = root.join(raw_path(rel));
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, content).unwrap();
    p
}

/// A relative path from raw bytes.
pub fn raw_path(rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(rel))
}

/// Every blob of the framed pack files in `dir`, by id (headers checked by the reader).
pub fn read_packs(dir: &Path) -> HashMap<BlobId, (FrameHeader, Vec<u8>)> {
    let mut out = HashMap::new();
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let r = FrameReader::new(BufReader::new(fs::File::open(&p).unwrap())).unwrap();
        for item in r {
            let (h, ct) = item.unwrap();
            out.insert(h.blob_id, (h, ct));
        }
    }
    out
}

/// What a restore found in a delta.
#[derive(Debug, Default)]
pub struct Restored {
    /// Regular files: raw path → content.
    pub files: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Folders (raw paths).
    pub dirs: Vec<Vec<u8>>,
    /// Symlinks: raw path → raw target.
    pub links: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Named pipes (raw paths).
    pub fifos: Vec<Vec<u8>>,
    /// Deleted paths.
    pub deleted: Vec<Vec<u8>>,
    /// Mode and mtime of each upsert.
    pub meta: BTreeMap<Vec<u8>, (u32, i64)>,
}

/// Reads the delta parts (in order) and rebuilds every file from `blobs`, opening each blob
/// with the organisation's identities and checking the content hash.
pub fn restore(
    parts: &[PathBuf],
    blobs: &HashMap<BlobId, (FrameHeader, Vec<u8>)>,
    keys: &OrgKeys,
) -> Restored {
    let mut out = Restored::default();
    for part in parts {
        let r = DeltaReader::new(BufReader::new(fs::File::open(part).unwrap())).unwrap();
        let mac_key = keepsake_common::mac::EntryMacKey::derive(&keys.chunk_id_key);
        for e in r {
            let e = e.unwrap();
            // Every entry but a deletion is sealed with the organisation's entry MAC.
            if let Some(facts) = e.facts() {
                let mac = e.mac().expect("sealed");
                assert!(mac_key.verify(&facts, mac), "MAC of {}", e.path());
            }
            let raw = |path: &str, raw: &Option<Vec<u8>>| {
                let bytes = wire_path_bytes(path);
                if let Some(r) = raw {
                    assert_eq!(&bytes, r, "raw_path agrees with the display path");
                }
                bytes
            };
            match e {
                Entry::Upsert {
                    path,
                    raw_path,
                    size,
                    mtime_ns,
                    mode,
                    content_hash,
                    chunks,
                    ..
                } => {
                    let mut data = Vec::with_capacity(size as usize);
                    for c in &chunks {
                        let (h, ct) = blobs
                            .get(&c.id)
                            .unwrap_or_else(|| panic!("blob {} of {path} is in a pack", c.id));
                        let plain = keys.open_blob(&c.id, ct, Some(&h.cipher_hash)).unwrap();
                        assert_eq!(plain.len(), c.len as usize);
                        data.extend_from_slice(&plain);
                    }
                    assert_eq!(data.len() as u64, size);
                    assert_eq!(ContentHash::of(&keys.chunk_id_key, &data), content_hash);
                    let p = raw(&path, &raw_path);
                    out.meta.insert(p.clone(), (mode, mtime_ns));
                    out.files.insert(p, data);
                }
                Entry::Dir { path, raw_path, .. } => out.dirs.push(raw(&path, &raw_path)),
                Entry::Fifo { path, raw_path, .. } => out.fifos.push(raw(&path, &raw_path)),
                Entry::Symlink {
                    path,
                    raw_path,
                    target,
                    raw_target,
                    ..
                } => {
                    let t = wire_path_bytes(&target);
                    if let Some(r) = &raw_target {
                        assert_eq!(&t, r);
                    }
                    out.links.insert(raw(&path, &raw_path), t);
                }
                Entry::Delete { path, raw_path } => out.deleted.push(raw(&path, &raw_path)),
            }
        }
    }
    out
}

/// Every regular file under `root`: raw relative path → content.
pub fn tree_files(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(root).unwrap();
            out.insert(
                rel.as_os_str().as_bytes().to_vec(),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size (Linux `VmRSS`), in bytes.
pub fn current_rss() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux: `5` into `clear_refs`).
pub fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}
