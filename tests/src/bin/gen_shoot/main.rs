//! `gen-shoot`: a deterministic synthetic wedding shoot, for backup benchmarks.
//!
//! Every byte is derived from the seed and the file's name, so the same arguments give a
//! byte-identical tree (the SQLite catalog too, for a given bundled SQLite version). Files are
//! written in 1 MiB pieces from a ChaCha8 stream: memory stays bounded and generation is limited
//! by the disk, not the CPU.
//!
//! Layout under OUT:
//!
//! ```text
//! DCIM/100EOSR5/IMG_0001.CR3    RAW-like, 25-45 MiB: ISO-BMFF boxes (ftyp/moov/mdat), random body
//! DCIM/100EOSR5/IMG_0001.JPG    4-12 MiB: SOI, APP1/Exif, DQT, SOF0, SOS, random scan data, EOI
//! DCIM/100EOSR5/IMG_0001.xmp    4-8 KiB XMP sidecar (RDF/XML text, compressible), one per photo
//! VIDEO/MVI_0001.MP4            200-500 MiB, ~25 % of the budget: ftyp/free/mdat, random body
//! Catalog/Wedding-2024.lrcat    Lightroom-like SQLite catalog (page_size 4096, journal DELETE)
//! .gen_manifest.json            what was generated (and the mutations applied since)
//! ```
//!
//! Cameras roll over to the next folder (101EOSR5, ...) after IMG_9999.

mod catalog;
mod containers;
mod generate;
mod manifest;
mod mutate;
mod photos;
mod smallfiles;
mod stream;

use std::path::PathBuf;

use crate::generate::generate;
use crate::mutate::mutate;
use crate::smallfiles::smallfiles;
use anyhow::Result;
use clap::{Parser, Subcommand};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Size of one write (and of the only large buffer).
const PIECE: usize = 1 << 20;

const CATALOG: &str = "Catalog/Wedding-2024.lrcat";
const VIDEO_DIR: &str = "VIDEO";
const MANIFEST: &str = ".gen_manifest.json";
/// Bumped whenever the bytes produced for the same arguments change.
const FORMAT: u32 = 1;

#[derive(Parser)]
#[command(
    name = "gen-shoot",
    about = "Deterministic synthetic wedding shoot (RAW+JPG+XMP, video, Lightroom-like catalog)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a shoot into OUT (which must be absent or empty, unless --force).
    Generate {
        out: PathBuf,
        /// Total size in GiB (media + catalog).
        #[arg(long, default_value_t = 3.0)]
        size_gb: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Approximate catalog size in MiB.
        #[arg(long, default_value_t = 50)]
        catalog_mb: u64,
        /// Replace a previous shoot in OUT (removes only DCIM/, VIDEO/, Catalog/ and the manifest).
        #[arg(long)]
        force: bool,
    },
    /// Apply the next day's edits to a generated shoot; prints a JSON summary.
    Mutate {
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        day: u32,
    },
    /// COUNT small files (1-4 KiB, half text, half random) in 100 directories.
    Smallfiles {
        out: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 100)]
        dirs: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate {
            out,
            size_gb,
            seed,
            catalog_mb,
            force,
        } => generate(&out, size_gb, seed, catalog_mb, force),
        Cmd::Mutate { out, day } => mutate(&out, day),
        Cmd::Smallfiles {
            out,
            count,
            seed,
            dirs,
        } => smallfiles(&out, count, seed, dirs),
    }
}
