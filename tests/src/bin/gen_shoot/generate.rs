//! `generate`: a whole shoot into an empty directory (photos, videos, the catalog), then the
//! manifest, and a one-line JSON summary on stdout.

use std::fs;
use std::path::Path;

use crate::catalog::build_catalog;
use crate::containers::mp4_header;
use crate::manifest::{write_manifest, Manifest};
use crate::photos::write_photo;
use crate::stream::{rng_for, write_stream};
use crate::{CATALOG, FORMAT, GIB, MANIFEST, MIB, VIDEO_DIR};
use anyhow::{bail, Result};
use rand::Rng;

pub(crate) fn generate(
    out: &Path,
    size_gb: f64,
    seed: u64,
    catalog_mb: u64,
    force: bool,
) -> Result<()> {
    if !(size_gb > 0.0 && size_gb.is_finite()) {
        bail!("--size-gb must be positive");
    }
    if out.exists() && fs::read_dir(out)?.next().is_some() {
        if !force {
            bail!(
                "{} is not empty (use --force to replace a previous shoot)",
                out.display()
            );
        }
        for d in ["DCIM", VIDEO_DIR, "Catalog"] {
            let p = out.join(d);
            if p.exists() {
                fs::remove_dir_all(&p)?;
            }
        }
        let _ = fs::remove_file(out.join(MANIFEST));
    }
    fs::create_dir_all(out)?;
    let total = (size_gb * GIB as f64) as u64;
    let catalog_target = catalog_mb * MIB;
    let media = total.saturating_sub(catalog_target);
    let mut plan = rng_for(seed, "plan");

    // ~25 % of the media budget is video, in clips of 200-500 MiB.
    let video_budget = media / 4;
    let (mut videos, mut video_bytes, mut files) = (0u64, 0u64, 0u64);
    while video_budget - video_bytes >= 200 * MIB && videos < 50 {
        videos += 1;
        let size = plan
            .gen_range(200 * MIB..=500 * MIB)
            .min(video_budget - video_bytes);
        let name = format!("{VIDEO_DIR}/MVI_{:04}.MP4", videos);
        eprintln!("gen-shoot: {name} ({} MiB)", size / MIB);
        write_stream(
            &out.join(&name),
            size,
            &mp4_header(size),
            &[],
            &mut rng_for(seed, &name),
        )?;
        video_bytes += size;
        files += 1;
    }

    // Photos fill the rest (at least one, so that mutate has something to edit).
    let (mut photos, mut photo_bytes) = (0u64, 0u64);
    while photos == 0 || photo_bytes < media - video_bytes {
        photos += 1;
        let (f, b) = write_photo(out, seed, photos)?;
        files += f;
        photo_bytes += b;
        if photos % 10 == 0 {
            eprintln!("gen-shoot: {photos} photos, {} MiB", photo_bytes / MIB);
        }
    }

    eprintln!("gen-shoot: {CATALOG}");
    let (catalog_rows, catalog_bytes) =
        build_catalog(&out.join(CATALOG), seed, photos, catalog_target)?;
    files += 1;
    let m = Manifest {
        generator: "gen-shoot".into(),
        format: FORMAT,
        seed,
        size_gb,
        catalog_mb,
        photos,
        videos,
        files,
        catalog_rows,
        catalog_bytes,
        media_bytes: video_bytes + photo_bytes,
        total_bytes: video_bytes + photo_bytes + catalog_bytes,
        mutations: Vec::new(),
    };
    write_manifest(out, &m)?;
    println!(
        "{}",
        serde_json::json!({
            "out": out.display().to_string(), "seed": seed, "photos": photos, "videos": videos,
            "files": files, "catalog_rows": catalog_rows, "catalog_bytes": catalog_bytes,
            "total_bytes": m.total_bytes,
        })
    );
    Ok(())
}
