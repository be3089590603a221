//! The manifest (`.gen_manifest.json`): what was generated, and a report of every mutation
//! applied since; `mutate` reads it back to continue where the last run stopped.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::MANIFEST;
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) generator: String,
    pub(crate) format: u32,
    pub(crate) seed: u64,
    pub(crate) size_gb: f64,
    pub(crate) catalog_mb: u64,
    pub(crate) photos: u64,
    pub(crate) videos: u64,
    pub(crate) files: u64,
    pub(crate) catalog_rows: u64,
    pub(crate) catalog_bytes: u64,
    pub(crate) media_bytes: u64,
    pub(crate) total_bytes: u64,
    pub(crate) mutations: Vec<MutationReport>,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct MutationReport {
    pub(crate) day: u32,
    pub(crate) mutation: u32,
    pub(crate) new_photos: u64,
    pub(crate) first_new_photo: u64,
    pub(crate) new_files: u64,
    pub(crate) new_bytes: u64,
    pub(crate) xmp_rewritten: u64,
    pub(crate) xmp_files: Vec<String>,
    pub(crate) catalog_rows: u64,
    pub(crate) catalog_rows_updated: u64,
    pub(crate) catalog_range_start: u64,
    pub(crate) develop_settings_updated: u64,
}

pub(crate) fn write_manifest(out: &Path, m: &Manifest) -> Result<()> {
    let mut f = BufWriter::new(File::create(out.join(MANIFEST))?);
    serde_json::to_writer_pretty(&mut f, m)?;
    f.write_all(b"\n")?;
    f.flush()?;
    Ok(())
}
