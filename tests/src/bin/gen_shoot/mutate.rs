//! `mutate`: one day of a photographer's work on a generated shoot (new photos, rewritten
//! sidecars, catalog rows updated), recorded in the manifest and reported as JSON on stdout.

use std::fs;
use std::path::Path;

use crate::catalog::develop_text;
use crate::manifest::{write_manifest, Manifest, MutationReport};
use crate::photos::{photo_stem, write_photo, xmp_text};
use crate::stream::rng_for;
use crate::{CATALOG, FORMAT, MANIFEST};
use anyhow::{bail, Context, Result};
use rand::seq::index::sample;
use rand::Rng;
use rusqlite::{params, Connection};

pub(crate) fn mutate(out: &Path, day: u32) -> Result<()> {
    let mpath = out.join(MANIFEST);
    let mut m: Manifest = serde_json::from_slice(
        &fs::read(&mpath).with_context(|| format!("read {}", mpath.display()))?,
    )
    .context("parse manifest")?;
    if m.format != FORMAT {
        bail!(
            "manifest format {} (this gen-shoot writes {FORMAT})",
            m.format
        );
    }
    let seed = m.seed;
    let mutation = m.mutations.len() as u32 + 1;
    let tag = format!("day{day}.m{mutation}");
    let mut r = rng_for(seed, &format!("mutate:{tag}"));
    let photos = m.photos;

    // 1. New photos: +5 % (at least one).
    let new_photos = ((photos as f64 * 0.05).round() as u64).max(1);
    let (mut new_files, mut new_bytes) = (0, 0);
    for idx in photos + 1..=photos + new_photos {
        let (f, b) = write_photo(out, seed, idx)?;
        new_files += f;
        new_bytes += b;
    }

    // 2. 2 % of the existing sidecars rewritten with changed values (at least one).
    let n_xmp = ((photos as f64 * 0.02).round() as u64).clamp(1, photos);
    let mut picks: Vec<u64> = sample(&mut r, photos as usize, n_xmp as usize)
        .into_iter()
        .map(|i| i as u64 + 1)
        .collect();
    picks.sort_unstable();
    let mut xmp_files = Vec::new();
    for idx in picks {
        let name = format!("{}.xmp", photo_stem(idx));
        fs::write(out.join(&name), xmp_text(seed, idx, Some(&tag)))?;
        xmp_files.push(name);
    }

    // 3. Catalog: a culling session over a clustered range (~0.5 % of the rows), plus ~50
    //    scattered develop-settings edits; all UPDATEs in place.
    let mut db = Connection::open(out.join(CATALOG))?;
    let rows: i64 = db.query_row("SELECT count(*) FROM Adobe_images", [], |row| row.get(0))?;
    let rows = rows as u64;
    let n_upd = (rows / 200).max(10).min(rows);
    let start = r.gen_range(1..=rows - n_upd + 1);
    let n_dev = 50.min(rows);
    let tx = db.transaction()?;
    {
        let mut cull =
            tx.prepare("UPDATE Adobe_images SET rating = ?1, pick = ?2, colorLabels = ?3, touchCount = touchCount + 1, touchTime = ?4 WHERE id_local = ?5")?;
        for i in start..start + n_upd {
            let label = ["", "Red", "Green", "Blue"][r.gen_range(0..4)];
            let pick = [-1i64, 0, 1][r.gen_range(0..3)];
            cull.execute(params![
                r.gen_range(0..=5i64),
                pick,
                label,
                7.6e8 + day as f64 * 86400.0 + i as f64,
                i as i64
            ])?;
        }
        let mut dev = tx.prepare(
            "UPDATE Adobe_imageDevelopSettings SET text = ?1, digest = ?2, historySettingsID = ?3 WHERE id_local = ?4",
        )?;
        for i in sample(&mut r, rows as usize, n_dev as usize) {
            let id = i as i64 + 1;
            let text = develop_text(&mut r);
            let digest = blake3::hash(text.as_bytes()).to_hex()[..32].to_string();
            dev.execute(params![text, digest, id + 1_000_000 * mutation as i64, id])?;
        }
    }
    tx.commit()?;
    db.close().map_err(|(_, e)| e)?;
    let catalog_bytes = fs::metadata(out.join(CATALOG))?.len();

    let report = MutationReport {
        day,
        mutation,
        new_photos,
        first_new_photo: photos + 1,
        new_files,
        new_bytes,
        xmp_rewritten: n_xmp,
        xmp_files,
        catalog_rows: rows,
        catalog_rows_updated: n_upd,
        catalog_range_start: start,
        develop_settings_updated: n_dev,
    };
    m.photos += new_photos;
    m.files += new_files;
    m.media_bytes += new_bytes;
    m.total_bytes = m.media_bytes + catalog_bytes;
    m.catalog_bytes = catalog_bytes;
    m.mutations.push(report.clone());
    write_manifest(out, &m)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
