//! Chunker properties: determinism, re-synchronisation after edits, SQLite page alignment.

mod support;
use support::pseudo_random;

use std::collections::HashSet;
use std::io::{self, Read};

use keepsake_common::chunking::{
    chunk_lengths, gear_seed, Chunk, ChunkError, Chunker, ChunkerConfig, ChunkerKind,
    DEFAULT_CONFIG, SQLITE_HEADER,
};
use keepsake_common::ids::ChunkIdKey;
use proptest::prelude::*;

/// Small sizes so that property tests see many chunks in little data.
const SMALL: ChunkerConfig = ChunkerConfig {
    min: 1024,
    avg: 4096,
    max: 16384,
    sqlite_chunk: 4096,
};

/// A reader that hands out data in pieces of varying, seed-determined sizes and sometimes
/// reports `Interrupted`.
struct Choppy<'a> {
    data: &'a [u8],
    pos: usize,
    seed: u64,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if self.seed >> 60 == 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
        }
        let want = 1 + (self.seed >> 33) as usize % 5000;
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn chunks_of(r: impl Read, kind: ChunkerKind, cfg: ChunkerConfig) -> Vec<Chunk> {
    Chunker::with_config(r, kind, cfg)
        .unwrap()
        .collect::<Result<Vec<_>, ChunkError>>()
        .unwrap()
}

fn check_cover(data: &[u8], chunks: &[Chunk], cfg: &ChunkerConfig) {
    let mut off = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.offset, off, "offsets are contiguous");
        assert!(!c.data.is_empty());
        assert!(c.data.len() <= cfg.max);
        if i + 1 < chunks.len() {
            assert!(c.data.len() >= cfg.min, "only the last chunk may be short");
        }
        off += c.data.len() as u64;
    }
    assert_eq!(off, data.len() as u64);
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
    assert_eq!(joined, data);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cdc_deterministic_whatever_the_reads(len in 0usize..200_000, seed: u64, rseed: u64) {
        let data = pseudo_random(len, seed);
        let a = chunks_of(&data[..], ChunkerKind::Cdc, SMALL);
        let b = chunks_of(Choppy { data: &data, pos: 0, seed: rseed }, ChunkerKind::Cdc, SMALL);
        prop_assert_eq!(&a, &b);
        check_cover(&data, &a, &SMALL);
    }

    #[test]
    fn keyed_cdc_deterministic_whatever_the_reads(len in 0usize..200_000, seed: u64, rseed: u64, key: [u8; 32]) {
        let data = pseudo_random(len, seed);
        let s = gear_seed(&ChunkIdKey(key));
        let run = |r: &mut dyn Read| -> Vec<Chunk> {
            Chunker::with_config(r, ChunkerKind::Cdc, SMALL).unwrap().with_gear_seed(s)
                .collect::<Result<Vec<_>, ChunkError>>().unwrap()
        };
        let a = run(&mut &data[..]);
        let b = run(&mut Choppy { data: &data, pos: 0, seed: rseed });
        prop_assert_eq!(&a, &b);
        check_cover(&data, &a, &SMALL);
    }

    #[test]
    fn cdc_resynchronises_after_insertion(
        len in 100_000usize..300_000,
        seed: u64,
        at_frac in 0.2f64..0.8,
        insert_len in 1usize..3000,
    ) {
        let data = pseudo_random(len, seed);
        let at = (len as f64 * at_frac) as usize;
        let mut edited = data[..at].to_vec();
        edited.extend(pseudo_random(insert_len, seed ^ 0xABCD));
        edited.extend_from_slice(&data[at..]);

        let before = chunks_of(&data[..], ChunkerKind::Cdc, SMALL);
        let after = chunks_of(&edited[..], ChunkerKind::Cdc, SMALL);
        check_cover(&edited, &after, &SMALL);

        // Chunks that end before the insertion point are unchanged.
        for c in before.iter().filter(|c| c.offset + c.data.len() as u64 <= at as u64) {
            prop_assert!(after.contains(c), "chunk at {} before the edit changed", c.offset);
        }
        // Most chunks after the insertion come back (same content, shifted offset).
        let after_set: HashSet<&[u8]> = after.iter().map(|c| &c.data[..]).collect();
        let tail: Vec<&Chunk> = before.iter().filter(|c| c.offset > at as u64 + SMALL.max as u64).collect();
        if tail.len() >= 4 {
            let kept = tail.iter().filter(|c| after_set.contains(&c.data[..])).count();
            prop_assert!(kept * 10 >= tail.len() * 8, "only {kept} of {} later chunks re-synchronised", tail.len());
        }
        // The edit costs at most a few new chunks.
        let before_set: HashSet<&[u8]> = before.iter().map(|c| &c.data[..]).collect();
        let new_bytes: usize = after.iter().filter(|c| !before_set.contains(&c.data[..])).map(|c| c.data.len()).sum();
        prop_assert!(new_bytes <= insert_len + 3 * SMALL.max, "edit cost {new_bytes} new bytes");
    }

    #[test]
    fn sqlite_chunks_are_page_aligned(pages in 2usize..200, page_log in 9u32..14, seed: u64, rseed: u64) {
        let page = 1usize << page_log;
        let mut data = pseudo_random(pages * page, seed);
        data[..16].copy_from_slice(SQLITE_HEADER);
        data[16..18].copy_from_slice(&(page as u16).to_be_bytes());
        let kind = ChunkerKind::detect(&data);
        prop_assert_eq!(kind, ChunkerKind::SqlitePages { page_size: page as u32 });
        let chunks = chunks_of(Choppy { data: &data, pos: 0, seed: rseed }, kind, SMALL);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        prop_assert_eq!(&joined, &data);
        if data.len() <= SMALL.min {
            prop_assert_eq!(chunks.len(), 1);
        } else {
            let clen = SMALL.sqlite_chunk_len(page as u32);
            prop_assert_eq!(clen % page, 0);
            for c in &chunks {
                prop_assert_eq!(c.offset as usize % page, 0, "chunk starts on a page boundary");
                prop_assert_eq!(c.offset as usize % clen, 0);
            }
            for c in &chunks[..chunks.len() - 1] {
                prop_assert_eq!(c.data.len(), clen);
            }
        }
    }
}

#[test]
fn sqlite_page_edit_changes_only_its_chunk() {
    let page = 4096usize;
    let mut db = pseudo_random(2000 * page, 7);
    db[..16].copy_from_slice(SQLITE_HEADER);
    db[16..18].copy_from_slice(&4096u16.to_be_bytes());
    let kind = ChunkerKind::detect(&db);
    let before = chunks_of(&db[..], kind, DEFAULT_CONFIG);
    // Rewrite three pages in place, as an UPDATE does.
    let mut edited = db.clone();
    for p in [17usize, 900, 1999] {
        edited[p * page..(p + 1) * page].copy_from_slice(&pseudo_random(page, p as u64));
    }
    let after = chunks_of(&edited[..], kind, DEFAULT_CONFIG);
    assert_eq!(before.len(), after.len());
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 3);
    for c in &after {
        assert_eq!(c.data.len(), DEFAULT_CONFIG.sqlite_chunk);
    }
}

#[test]
fn default_sizes_bound_chunks() {
    let data = pseudo_random(24 << 20, 3);
    let lens = chunk_lengths(&data, ChunkerKind::Cdc, DEFAULT_CONFIG).unwrap();
    assert_eq!(lens.iter().sum::<usize>(), data.len());
    for l in &lens[..lens.len() - 1] {
        assert!((DEFAULT_CONFIG.min..=DEFAULT_CONFIG.max).contains(l), "{l}");
    }
    let avg = data.len() / lens.len();
    assert!((512 << 10..=2 << 20).contains(&avg), "average chunk {avg}");
    // A file of at most `min` bytes is one chunk, for either kind.
    let small = &data[..DEFAULT_CONFIG.min];
    assert_eq!(
        chunk_lengths(small, ChunkerKind::Cdc, DEFAULT_CONFIG).unwrap(),
        vec![small.len()]
    );
    assert_eq!(
        chunk_lengths(
            small,
            ChunkerKind::SqlitePages { page_size: 4096 },
            DEFAULT_CONFIG
        )
        .unwrap(),
        vec![small.len()]
    );
    // Zeroes have no cut points: max-size chunks.
    let zeros = vec![0u8; 10 << 20];
    let lens = chunk_lengths(&zeros, ChunkerKind::Cdc, DEFAULT_CONFIG).unwrap();
    assert_eq!(lens, vec![4 << 20, 4 << 20, 2 << 20]);
}

#[test]
fn boundaries_depend_on_the_organisation_key() {
    let data = pseudo_random(32 << 20, 11);
    let k1 = ChunkIdKey([1; 32]);
    let k2 = ChunkIdKey([2; 32]);
    let lens = |key: Option<&ChunkIdKey>| -> Vec<usize> {
        Chunker::detect(&data[..], key)
            .unwrap()
            .map(|c| c.unwrap().data.len())
            .collect()
    };
    let plain = lens(None);
    let a = lens(Some(&k1));
    let b = lens(Some(&k2));
    assert_eq!(a, lens(Some(&k1)), "same key, same boundaries");
    assert_eq!(
        a,
        Chunker::keyed(&data[..], ChunkerKind::Cdc, &k1)
            .map(|c| c.unwrap().data.len())
            .collect::<Vec<_>>()
    );
    assert_ne!(a, b, "another organisation cuts elsewhere");
    assert_ne!(a, plain, "keyed boundaries differ from the public table's");
    for l in [&a, &b] {
        let avg = data.len() / l.len();
        assert!((512 << 10..=2 << 20).contains(&avg), "average chunk {avg}");
    }
}

#[test]
fn read_errors_surface_and_end_the_iterator() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let mut it = Chunker::new(Failing(5 << 20), ChunkerKind::Cdc);
    let mut saw_err = false;
    for item in it.by_ref() {
        if let Err(e) = item {
            assert!(matches!(e, ChunkError::Io(_)));
            saw_err = true;
        }
    }
    assert!(saw_err);
    assert!(it.next().is_none());
}
