//! The organisation's chunker with a window buffer that is reused from file to file.
//!
//! The cut rules are exactly those of `keepsake_common::chunking::Chunker` (and of
//! `docs/format.md`, section 2), built from the same pieces: [`ChunkerKind::detect`] on the first
//! [`DETECT_LEN`] bytes, the one-chunk rule for files of at most `min` bytes, `fastcdc`'s
//! `v2020::cut_gear` with the masks of normalisation level 1 and the gear tables seeded with
//! [`gear_seed`] of the chunk-ID key, on a window of `min(max, remaining)` bytes, and page
//! groups of [`ChunkerConfig::sqlite_chunk_len`] for SQLite files. The tests compare both
//! chunkers on many inputs, read in odd pieces.
//!
//! Why not `Chunker` itself: it allocates its 8 MiB window with every file (`vec![0; 8 MiB]`),
//! and the allocator hands back reused memory that it must zero — 8 MiB of `memset` per file,
//! measured at 12 % of the CPU time of a backup of 0.5-2 MiB photos. Here each reader thread
//! keeps one window for all its files.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};
use keepsake_common::chunking::{
    gear_seed, ChunkerConfig, ChunkerKind, DEFAULT_CONFIG, DETECT_LEN,
};
use keepsake_common::ids::ChunkIdKey;

/// The keyed cut parameters of an organisation (computed once per pipeline).
pub(crate) struct Cuts {
    cfg: ChunkerConfig,
    masks: (u64, u64),
    gear: (Cow<'static, [u64]>, Cow<'static, [u64]>),
}

impl Cuts {
    /// The organisation's chunker: default sizes, gear tables keyed with `key`.
    pub fn keyed(key: &ChunkIdKey) -> Cuts {
        Cuts {
            cfg: DEFAULT_CONFIG,
            masks: v2020::select_masks(DEFAULT_CONFIG.avg, Normalization::Level1),
            gear: v2020::get_gear_with_seed(gear_seed(key)),
        }
    }

    /// Bytes of window a [`Window`] needs.
    fn window_len(&self) -> usize {
        2 * self.cfg.max.max(self.cfg.min + 1)
    }
}

/// A reusable window buffer (one per reader thread).
#[derive(Default)]
pub(crate) struct Window {
    buf: Vec<u8>,
}

struct State<'a, R> {
    reader: R,
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> State<'_, R> {
    /// Makes at least `want` bytes available at `buf[start..end]` unless the input ends first.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.end - self.start >= want || self.eof {
            return Ok(());
        }
        if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < want && !self.eof {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Why [`chunk_with`] stopped.
pub(crate) enum ChunkStop<E> {
    /// Reading failed.
    Io(io::Error),
    /// The callback asked to stop.
    Callback(E),
}

/// Cuts everything `reader` yields into chunks, calling `on_chunk` with each in order.
/// Returns the number of bytes read.
pub(crate) fn chunk_with<R: Read, E>(
    cuts: &Cuts,
    window: &mut Window,
    reader: R,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkStop<E>> {
    let need = cuts.window_len();
    if window.buf.len() < need {
        window.buf = vec![0u8; need];
    }
    let cfg = &cuts.cfg;
    let mut s = State {
        reader,
        buf: &mut window.buf[..need],
        start: 0,
        end: 0,
        eof: false,
    };
    s.fill(DETECT_LEN).map_err(ChunkStop::Io)?;
    let kind = ChunkerKind::detect(&s.buf[s.start..s.end]);
    let mut total: u64 = 0;
    let mut first = true;
    loop {
        let mut n = None;
        if first {
            first = false;
            // Files of at most `min` bytes are one chunk, whatever the kind.
            s.fill(cfg.min + 1).map_err(ChunkStop::Io)?;
            if s.eof && s.end - s.start <= cfg.min {
                n = Some(s.end - s.start);
            }
        }
        let n = match n {
            Some(n) => n,
            None => match kind {
                ChunkerKind::Cdc => {
                    s.fill(cfg.max).map_err(ChunkStop::Io)?;
                    let avail = &s.buf[s.start..s.end];
                    if avail.is_empty() {
                        0
                    } else {
                        let (mask_s, mask_l) = cuts.masks;
                        let (_, n) = v2020::cut_gear(
                            avail,
                            cfg.min,
                            cfg.avg,
                            cfg.max,
                            mask_s,
                            mask_l,
                            mask_s << 1,
                            mask_l << 1,
                            &cuts.gear.0,
                            &cuts.gear.1,
                        );
                        n.clamp(1, avail.len())
                    }
                }
                ChunkerKind::SqlitePages { page_size } => {
                    let len = cfg.sqlite_chunk_len(page_size);
                    s.fill(len).map_err(ChunkStop::Io)?;
                    len.min(s.end - s.start)
                }
            },
        };
        if n == 0 {
            return Ok(total);
        }
        let chunk = &s.buf[s.start..s.start + n];
        s.start += n;
        total += n as u64;
        on_chunk(chunk).map_err(ChunkStop::Callback)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_common::chunking::{Chunker, SQLITE_HEADER};

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

    fn sqlite(page: u16, len: usize) -> Vec<u8> {
        let mut d = bytes(len, u64::from(page));
        if len >= 18 {
            d[..16].copy_from_slice(SQLITE_HEADER);
            d[16..18].copy_from_slice(&page.to_be_bytes());
        }
        d
    }

    #[test]
    fn cuts_exactly_like_the_common_chunker() {
        let key = ChunkIdKey([42; 32]);
        let cuts = Cuts::keyed(&key);
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
            let expected: Vec<Vec<u8>> = Chunker::detect(&data[..], Some(&key))
                .unwrap()
                .map(|c| c.unwrap().data)
                .collect();
            for piecewise in [false, true] {
                let mut got: Vec<Vec<u8>> = Vec::new();
                let collect = |c: &[u8]| -> Result<(), ()> {
                    got.push(c.to_vec());
                    Ok(())
                };
                let n = if piecewise {
                    chunk_with(
                        &cuts,
                        &mut window,
                        Pieces {
                            data: &data[..],
                            step: i,
                        },
                        collect,
                    )
                } else {
                    chunk_with(&cuts, &mut window, &data[..], collect)
                };
                let n = match n {
                    Ok(n) => n,
                    Err(_) => panic!("input {i} failed"),
                };
                assert_eq!(n, data.len() as u64);
                assert_eq!(
                    got.iter().map(Vec::len).collect::<Vec<_>>(),
                    expected.iter().map(Vec::len).collect::<Vec<_>>(),
                    "input {i} (piecewise: {piecewise})"
                );
                assert_eq!(got, expected, "input {i}");
            }
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
}
