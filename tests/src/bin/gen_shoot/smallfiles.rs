//! `smallfiles`: many small office-like documents spread evenly over directories, for
//! benchmarks of per-file overhead.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::stream::rng_for;
use crate::KIB;
use anyhow::{bail, Result};
use rand::{Rng, RngCore};

pub(crate) const WORDS: &[&str] = &[
    "invoice",
    "contract",
    "timeline",
    "shot list",
    "venue",
    "florist",
    "makeup",
    "album",
    "gallery",
    "proof",
    "print",
    "order",
    "deposit",
    "balance",
    "client",
    "second shooter",
];

pub(crate) fn smallfiles(out: &Path, count: u64, seed: u64, dirs: u64) -> Result<()> {
    if dirs == 0 {
        bail!("--dirs must be at least 1");
    }
    // Spread evenly: the first `count % dirs` directories get one file more.
    let (base, extra) = (count / dirs, count % dirs);
    let mut made = 0u64;
    let mut bytes = 0u64;
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for d in 0..dirs {
        let dir = out.join(format!("d{d:03}"));
        fs::create_dir_all(&dir)?;
        let mut r = rng_for(seed, &format!("smallfiles/d{d:03}"));
        for k in 0..base + u64::from(d < extra) {
            let size = r.gen_range(KIB..=4 * KIB) as usize;
            let data = if k % 2 == 1 {
                let mut v = vec![0u8; size];
                r.fill_bytes(&mut v);
                *sizes.entry("random").or_default() += 1;
                v
            } else {
                let mut s = String::with_capacity(size + 128);
                while s.len() < size {
                    let _ = write!(s, "d{d:03}/f{k:05} {}:", r.gen_range(0..100_000u32));
                    for _ in 0..10 {
                        s.push(' ');
                        s.push_str(WORDS[r.gen_range(0..WORDS.len())]);
                    }
                    s.push('\n');
                }
                s.truncate(size);
                *sizes.entry("text").or_default() += 1;
                s.into_bytes()
            };
            fs::write(dir.join(format!("f{k:05}.dat")), &data)?;
            made += 1;
            bytes += size as u64;
        }
    }
    println!(
        "{}",
        serde_json::json!({"files": made, "dirs": dirs, "bytes": bytes,
            "text_files": sizes.get("text").copied().unwrap_or(0),
            "random_files": sizes.get("random").copied().unwrap_or(0)})
    );
    Ok(())
}
