//! Both ways of running the chunker — the [`Chunker`] iterator and [`chunk_with`] on a reused
//! [`Window`] — against the cuts `docs/format.md` section 2 specifies, computed independently
//! here: one chunk for a file of at most `min` bytes, fixed page-aligned chunks for SQLite
//! databases, and otherwise the `fastcdc` crate's own in-memory `FastCDC` iterator (the
//! reference of the `cut_gear` scan) with the organisation's gear seed over the whole file.

use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization};
use keepsake_common::chunking::{
    chunk_with, gear_seed, ChunkStop, Chunker, ChunkerConfig, ChunkerKind, Cuts, Window,
    DEFAULT_CONFIG, SQLITE_HEADER,
};
use keepsake_common::ids::ChunkIdKey;
use proptest::prelude::*;

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn sqlite(page: u16, len: usize) -> Vec<u8> {
    let mut d = bytes(len, u64::from(page));
    if len >= 18 {
        d[..16].copy_from_slice(SQLITE_HEADER);
        d[16..18].copy_from_slice(&page.to_be_bytes());
    }
    d
}

/// The chunk lengths the format prescribes for `data` with sizes `cfg` and gear seed `seed`.
fn reference(data: &[u8], cfg: &ChunkerConfig, seed: u64) -> Vec<usize> {
    if data.is_empty() {
        return Vec::new();
    }
    if data.len() <= cfg.min {
        return vec![data.len()];
    }
    match ChunkerKind::detect(data) {
        ChunkerKind::SqlitePages { page_size } => {
            let c = 16384usize.div_ceil(page_size as usize) * page_size as usize;
            assert_eq!(c, cfg.sqlite_chunk_len(page_size));
            data.chunks(c).map(<[u8]>::len).collect()
        }
        ChunkerKind::Cdc => FastCDC::with_level_and_seed(
            data,
            cfg.min,
            cfg.avg,
            cfg.max,
            Normalization::Level1,
            seed,
        )
        .map(|c| c.length)
        .collect(),
    }
}

/// Hands out data in odd-sized pieces.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.step = (self.step * 7919 + 13) % 300_007 + 1;
        let n = self.step.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The chunks of `chunk_with`, with whole or piecewise reads.
fn windowed(
    cuts: &Cuts,
    window: &mut Window,
    data: &[u8],
    piecewise: Option<usize>,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let collect = |c: &[u8]| -> Result<(), ()> {
        got.push(c.to_vec());
        Ok(())
    };
    let n = match piecewise {
        Some(step) => chunk_with(cuts, window, Pieces { data, step }, collect),
        None => chunk_with(cuts, window, data, collect),
    };
    match n {
        Ok(n) => assert_eq!(n, data.len() as u64),
        Err(e) => panic!("in-memory chunking failed: {e:?}"),
    }
    got
}

fn check(data: &[u8], expected: &[usize], got: &[Vec<u8>], what: &str) {
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        expected,
        "{what}"
    );
    assert_eq!(
        got.concat(),
        data,
        "{what}: the chunks concatenate to the input"
    );
}

#[test]
fn default_sizes_cut_as_the_format_says() {
    let key = ChunkIdKey([42; 32]);
    let seed = gear_seed(&key);
    let cuts = Cuts::keyed(&key);
    // One window for every input, so each file starts on the leftovers of the one before.
    let mut window = Window::default();
    let min = DEFAULT_CONFIG.min;
    let max = DEFAULT_CONFIG.max;
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![7],
        bytes(17, 1),
        bytes(min, 2),
        bytes(min + 1, 3),
        bytes(2 * max + 3, 4),
        bytes(21 << 20, 5),
        vec![0u8; 10 << 20],
        b"<rdf:li>bride groom ceremony</rdf:li>\n".repeat(200_000),
        sqlite(4096, 3 << 20),
        sqlite(1, 1 << 20),
        sqlite(512, min + 100),
        sqlite(1000, 2 << 20),
        sqlite(4096, 100),
    ];
    for i in 0..6 {
        inputs.push(bytes(min + i * 999_983, 10 + i as u64));
    }
    for (i, data) in inputs.iter().enumerate() {
        let expected = reference(data, &DEFAULT_CONFIG, seed);
        let iterated: Vec<Vec<u8>> = Chunker::detect(&data[..], Some(&key))
            .unwrap()
            .map(|c| c.unwrap().data)
            .collect();
        check(data, &expected, &iterated, &format!("input {i}, Chunker"));
        for piecewise in [None, Some(i)] {
            let got = windowed(&cuts, &mut window, data, piecewise);
            check(
                data,
                &expected,
                &got,
                &format!("input {i}, chunk_with (pieces: {piecewise:?})"),
            );
        }
    }
}

/// Small sizes so that the property test sees many chunks in little data.
const SMALL: ChunkerConfig = ChunkerConfig {
    min: 1024,
    avg: 4096,
    max: 16384,
    sqlite_chunk: 4096,
};

proptest! {
    #[test]
    fn small_sizes_cut_as_the_fastcdc_reference(
        len in 0usize..120_000,
        seed: u64,
        data_seed: u64,
        step in 0usize..1000,
    ) {
        let data = bytes(len, data_seed);
        let cuts = Cuts::with_config(SMALL, seed).unwrap();
        let mut window = Window::default();
        let expected = reference(&data, &SMALL, seed);
        for piecewise in [None, Some(step)] {
            let got = windowed(&cuts, &mut window, &data, piecewise);
            prop_assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), expected.clone());
            prop_assert_eq!(got.concat(), data.clone());
        }
        let iterated: Vec<usize> = Chunker::with_config(&data[..], ChunkerKind::Cdc, SMALL)
            .unwrap()
            .with_gear_seed(seed)
            .map(|c| c.unwrap().data.len())
            .collect();
        prop_assert_eq!(iterated, expected);
    }
}

#[test]
fn callback_can_stop() {
    let cuts = Cuts::keyed(&ChunkIdKey([1; 32]));
    let mut w = Window::default();
    let data = bytes(10 << 20, 9);
    let mut seen = 0;
    let r = chunk_with(&cuts, &mut w, &data[..], |_| {
        seen += 1;
        if seen == 2 {
            Err("enough")
        } else {
            Ok(())
        }
    });
    assert!(matches!(r, Err(ChunkStop::Callback("enough"))));
    assert_eq!(seen, 2);
}

#[test]
fn read_errors_stop_with_io() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk gone"));
            }
            let n = self.0.min(buf.len()).min(100_000);
            buf[..n].fill(3);
            self.0 -= n;
            Ok(n)
        }
    }
    let cuts = Cuts::keyed(&ChunkIdKey([2; 32]));
    let mut w = Window::default();
    let r = chunk_with(&cuts, &mut w, Failing(5 << 20), |_| Ok::<(), ()>(()));
    assert!(matches!(r, Err(ChunkStop::Io(e)) if e.to_string() == "disk gone"));
    // The window is still good for the next file.
    let data = bytes(3 << 20, 4);
    let got = windowed(&cuts, &mut w, &data, None);
    check(
        &data,
        &reference(&data, &DEFAULT_CONFIG, gear_seed(&ChunkIdKey([2; 32]))),
        &got,
        "after an error",
    );
}
