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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand::seq::index::sample;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

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

#[derive(Serialize, Deserialize)]
struct Manifest {
    generator: String,
    format: u32,
    seed: u64,
    size_gb: f64,
    catalog_mb: u64,
    photos: u64,
    videos: u64,
    files: u64,
    catalog_rows: u64,
    catalog_bytes: u64,
    media_bytes: u64,
    total_bytes: u64,
    mutations: Vec<MutationReport>,
}

#[derive(Serialize, Deserialize, Clone)]
struct MutationReport {
    day: u32,
    mutation: u32,
    new_photos: u64,
    first_new_photo: u64,
    new_files: u64,
    new_bytes: u64,
    xmp_rewritten: u64,
    xmp_files: Vec<String>,
    catalog_rows: u64,
    catalog_rows_updated: u64,
    catalog_range_start: u64,
    develop_settings_updated: u64,
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

// ---------------------------------------------------------------------------------------------
// Randomness: one ChaCha8 stream per (seed, label), the label being a file name or a purpose.

fn rng_for(seed: u64, label: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new_derive_key("keepsake gen-shoot v1 per-label stream");
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Writes `header`, then random bytes, then `trailer`, for a file of exactly `size` bytes.
fn write_stream(
    path: &Path,
    size: u64,
    header: &[u8],
    trailer: &[u8],
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let fixed = (header.len() + trailer.len()) as u64;
    if size < fixed {
        bail!("{}: size {size} smaller than its header", path.display());
    }
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(header)?;
    let mut buf = vec![0u8; PIECE];
    let mut left = size - fixed;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.write_all(trailer)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Container headers: just enough structure that a file looks like what it claims to be.

fn be32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// An ISO-BMFF box header for a box of `total` bytes (64-bit size form when needed).
fn box_header(kind: &[u8; 4], total: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    if total + 8 <= u32::MAX as u64 {
        be32(&mut v, total as u32);
        v.extend_from_slice(kind);
    } else {
        be32(&mut v, 1);
        v.extend_from_slice(kind);
        v.extend_from_slice(&(total + 8).to_be_bytes());
    }
    v
}

fn ftyp(major: &[u8; 4], minor: u32, compatible: &[&[u8; 4]]) -> Vec<u8> {
    let mut v = box_header(b"ftyp", 16 + 4 * compatible.len() as u64);
    v.extend_from_slice(major);
    be32(&mut v, minor);
    for c in compatible {
        v.extend_from_slice(*c);
    }
    v
}

/// A little-endian TIFF with one IFD of ASCII entries (what Exif blocks and CR3 CMT boxes hold).
fn tiff_ascii(entries: &[(u16, &str)]) -> Vec<u8> {
    let mut v = b"II*\0".to_vec();
    v.extend_from_slice(&8u32.to_le_bytes());
    v.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    let mut data_off = 8 + 2 + 12 * entries.len() as u32 + 4;
    let mut data = Vec::new();
    for (tag, text) in entries {
        let bytes: Vec<u8> = text.bytes().chain(std::iter::once(0)).collect();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes()); // ASCII
        v.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        if bytes.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..bytes.len()].copy_from_slice(&bytes);
            v.extend_from_slice(&inline);
        } else {
            v.extend_from_slice(&data_off.to_le_bytes());
            data_off += bytes.len() as u32;
            data.extend_from_slice(&bytes);
        }
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&data);
    v
}

fn camera_tiff(idx: u64) -> Vec<u8> {
    let when = capture_time(idx).replace(['-', 'T'], ":");
    tiff_ascii(&[
        (0x010f, "Canon"),
        (0x0110, "Canon EOS R5"),
        (0x0131, "Firmware Version 1.8.1"),
        (0x0132, &when[..19.min(when.len())]),
        (0x013b, "Keepsake Studio"),
    ])
}

/// CR3: ftyp 'crx ', a moov box holding a Canon-style uuid box with the TIFF metadata, then mdat.
fn cr3_header(idx: u64, size: u64) -> Vec<u8> {
    let mut v = ftyp(b"crx ", 1, &[b"crx ", b"isom"]);
    let tiff = camera_tiff(idx);
    let uuid_len = 8 + 16 + 8 + tiff.len() as u64;
    v.extend(box_header(b"moov", 8 + uuid_len));
    v.extend(box_header(b"uuid", uuid_len));
    v.extend_from_slice(&[
        0x85, 0xc0, 0xb6, 0x87, 0x82, 0x0f, 0x11, 0xe0, 0x81, 0x11, 0xf4, 0xce, 0x46, 0x2b, 0x6a,
        0x48,
    ]);
    v.extend(box_header(b"CMT1", 8 + tiff.len() as u64));
    v.extend(tiff);
    let mdat_hdr = box_header(b"mdat", 0).len() as u64;
    let body = size - v.len() as u64 - mdat_hdr;
    v.extend(box_header(b"mdat", body + mdat_hdr));
    v
}

fn mp4_header(size: u64) -> Vec<u8> {
    let mut v = ftyp(b"isom", 0x200, &[b"isom", b"iso2", b"avc1", b"mp41"]);
    v.extend(box_header(b"free", 8));
    let mdat_hdr = if size > u32::MAX as u64 { 16 } else { 8 };
    let body = size - v.len() as u64 - mdat_hdr;
    v.extend(box_header(b"mdat", body + mdat_hdr));
    v
}

fn jpeg_segment(v: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    v.extend_from_slice(&[0xff, marker]);
    v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    v.extend_from_slice(payload);
}

/// SOI, APP1 Exif, DQT, SOF0 (8192x5464, 3 components), SOS; the scan data follows.
fn jpeg_header(idx: u64) -> Vec<u8> {
    let mut v = vec![0xff, 0xd8];
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend(camera_tiff(idx));
    jpeg_segment(&mut v, 0xe1, &exif);
    let mut dqt = vec![0u8];
    dqt.extend((0..64u32).map(|i| (2 + (i * 7) % 60) as u8));
    jpeg_segment(&mut v, 0xdb, &dqt);
    let mut sof = vec![8u8];
    sof.extend_from_slice(&5464u16.to_be_bytes());
    sof.extend_from_slice(&8192u16.to_be_bytes());
    sof.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    jpeg_segment(&mut v, 0xc0, &sof);
    jpeg_segment(&mut v, 0xda, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 0x3f, 0]);
    v
}

// ---------------------------------------------------------------------------------------------
// Photos: RAW + JPEG + XMP sidecar.

fn photo_stem(idx: u64) -> String {
    // Canon numbers 0001-9999 and then opens the next folder.
    let folder = 100 + (idx - 1) / 9999;
    let num = (idx - 1) % 9999 + 1;
    format!("DCIM/{folder}EOSR5/IMG_{num:04}")
}

fn capture_time(idx: u64) -> String {
    // A long day: from 10:00, one frame every ~20 s, ceremony to dance floor.
    let secs = 10 * 3600 + idx * 20;
    format!(
        "2024-06-15T{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

const KEYWORDS: &[&str] = &[
    "getting ready",
    "bride",
    "groom",
    "ceremony",
    "vows",
    "rings",
    "first kiss",
    "confetti",
    "family formals",
    "portraits",
    "golden hour",
    "reception",
    "speeches",
    "first dance",
    "cake",
    "details",
    "flowers",
    "venue",
    "candid",
    "guests",
    "bouquet toss",
    "sparklers",
];

/// XMP sidecar text. `edit` = None is the camera-day version; Some(tag) re-derives the values a
/// photographer changes while culling/developing (rating, label, a few sliders) and adds a
/// history entry, keeping everything else as it was.
fn xmp_text(seed: u64, idx: u64, edit: Option<&str>) -> Vec<u8> {
    // An edit keeps every earlier history entry: as many as the camera-day version has.
    let keep = edit.map(|_| xmp_build(seed, idx, None, None).1);
    xmp_build(seed, idx, edit, keep).0
}

/// Returns the sidecar and its number of camera-day history entries.
fn xmp_build(seed: u64, idx: u64, edit: Option<&str>, entries: Option<usize>) -> (Vec<u8>, usize) {
    let stem = photo_stem(idx);
    let mut r = rng_for(seed, &format!("{stem}.xmp"));
    let target = r.gen_range(4 * KIB..=8 * KIB) as usize;
    let mut e = edit.map(|tag| rng_for(seed, &format!("{stem}.xmp#edit:{tag}")));

    let mut rating = r.gen_range(0..=3u32);
    let labels = ["", "Red", "Yellow", "Green", "Blue", "Purple"];
    let mut label = labels[r.gen_range(0..labels.len())];
    let mut exposure: f64 = r.gen_range(-1.5..1.5);
    let mut temperature = r.gen_range(3200..7200u32);
    let mut shadows = r.gen_range(0..60i32);
    if let Some(e) = e.as_mut() {
        rating = e.gen_range(1..=5);
        label = labels[e.gen_range(1..labels.len())];
        exposure += e.gen_range(-0.7..0.7);
        temperature = (temperature as i64 + e.gen_range(-400..400i64)) as u32;
        shadows = (shadows + e.gen_range(-20..20)).clamp(0, 100);
    }
    let when = capture_time(idx);
    let name = stem.rsplit('/').next().unwrap_or(&stem).to_string();

    let mut s = String::with_capacity(target + 512);
    let _ = write!(
        s,
        r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 79.dabacbb, 2021/04/14-00:39:44">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:aux="http://ns.adobe.com/exif/1.0/aux/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:Rating="{rating}"
   xmp:Label="{label}"
   xmp:CreateDate="{when}.{ms:02}"
   xmp:ModifyDate="2024-06-{day:02}T21:14:{sec:02}+02:00"
   tiff:Make="Canon"
   tiff:Model="Canon EOS R5"
   exif:ExposureTime="1/{shutter}"
   exif:FNumber="{fnum}/10"
   exif:FocalLength="{focal}/1"
   exif:ISOSpeedRatings="{iso}"
   aux:SerialNumber="0{serial}"
   aux:Lens="RF24-70mm F2.8 L IS USM"
   photoshop:DateCreated="{when}"
   xmpMM:DocumentID="xmp.did:{did:016x}"
   xmpMM:OriginalDocumentID="{name}-{did:08x}"
   crs:Version="16.0"
   crs:ProcessVersion="11.0"
   crs:WhiteBalance="Custom"
   crs:Temperature="{temperature}"
   crs:Tint="{tint:+}"
   crs:Exposure2012="{exposure:+.2}"
   crs:Contrast2012="{contrast:+}"
   crs:Highlights2012="{highlights}"
   crs:Shadows2012="{shadows:+}"
   crs:Whites2012="{whites:+}"
   crs:Blacks2012="{blacks:+}"
   crs:Texture="{texture:+}"
   crs:Clarity2012="{clarity:+}"
   crs:Dehaze="0"
   crs:Vibrance="{vibrance:+}"
   crs:Saturation="0"
   crs:LensProfileEnable="1"
   crs:HasSettings="True"
   crs:CameraProfile="Adobe Color">
   <dc:subject>
    <rdf:Bag>
"#,
        ms = r.gen_range(0..100u32),
        day = 16 + edit.map_or(0, |_| 1),
        sec = r.gen_range(0..60u32),
        shutter = [60, 125, 160, 250, 500, 1000][r.gen_range(0..6)],
        fnum = [12, 18, 20, 28, 40, 56][r.gen_range(0..6)],
        focal = r.gen_range(24..=70u32),
        iso = [100, 200, 400, 800, 1600, 3200, 6400][r.gen_range(0..7)],
        serial = 2_000_000_000u64 + seed % 1_000_000_000,
        did = r.gen::<u64>(),
        tint = r.gen_range(-15..15i32),
        contrast = r.gen_range(-30..40i32),
        highlights = r.gen_range(-100..0i32),
        whites = r.gen_range(-40..40i32),
        blacks = r.gen_range(-40..20i32),
        texture = r.gen_range(-10..25i32),
        clarity = r.gen_range(-10..30i32),
        vibrance = r.gen_range(0..35i32),
    );
    for _ in 0..r.gen_range(2..7) {
        let _ = writeln!(
            s,
            "     <rdf:li>{}</rdf:li>",
            KEYWORDS[r.gen_range(0..KEYWORDS.len())]
        );
    }
    s.push_str("    </rdf:Bag>\n   </dc:subject>\n   <crs:ToneCurvePV2012>\n    <rdf:Seq>\n");
    for i in 0..r.gen_range(4..9u32) {
        let x = i * 255 / 8;
        let _ = writeln!(
            s,
            "     <rdf:li>{x}, {}</rdf:li>",
            (x as i32 + r.gen_range(-8..8)).clamp(0, 255)
        );
    }
    s.push_str("    </rdf:Seq>\n   </crs:ToneCurvePV2012>\n   <xmpMM:History>\n    <rdf:Seq>\n");
    let tail = "    </rdf:Seq>\n   </xmpMM:History>\n  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end=\"w\"?>\n";
    // History: one entry per save, padding the file to its size; an edit adds one at the top.
    let mut history = Vec::new();
    while match entries {
        Some(n) => history.len() < n,
        None => s.len() + history.iter().map(String::len).sum::<usize>() + tail.len() < target,
    } {
        history.push(history_entry(&mut r, 16));
    }
    let camera_day = history.len();
    if let Some(e) = e.as_mut() {
        history.insert(0, history_entry(e, 17));
    }
    for h in history {
        s.push_str(&h);
    }
    s.push_str(tail);
    (s.into_bytes(), camera_day)
}

fn history_entry(r: &mut ChaCha8Rng, day: u32) -> String {
    let actions = [
        ("saved", "/metadata"),
        ("derived", "converted from image/x-canon-cr3 to image/dng"),
        ("saved", "/"),
    ];
    let (action, changed) = actions[r.gen_range(0..actions.len())];
    format!(
        "     <rdf:li\n      stEvt:action=\"{action}\"\n      stEvt:instanceID=\"xmp.iid:{:032x}\"\n      stEvt:when=\"2024-06-{day:02}T{:02}:{:02}:{:02}+02:00\"\n      stEvt:softwareAgent=\"Adobe Photoshop Lightroom Classic 13.0 (Macintosh)\"\n      stEvt:changed=\"{changed}\"/>\n",
        r.gen::<u128>(),
        r.gen_range(9..23u32),
        r.gen_range(0..60u32),
        r.gen_range(0..60u32),
    )
}

/// Writes one photo's three files; returns (files, bytes).
fn write_photo(out: &Path, seed: u64, idx: u64) -> Result<(u64, u64)> {
    let stem = photo_stem(idx);
    let mut sizes = rng_for(seed, &format!("{stem}#sizes"));
    let raw_size = sizes.gen_range(25 * MIB..=45 * MIB);
    let jpg_size = sizes.gen_range(4 * MIB..=12 * MIB);

    let raw = format!("{stem}.CR3");
    write_stream(
        &out.join(&raw),
        raw_size,
        &cr3_header(idx, raw_size),
        &[],
        &mut rng_for(seed, &raw),
    )?;
    let jpg = format!("{stem}.JPG");
    write_stream(
        &out.join(&jpg),
        jpg_size,
        &jpeg_header(idx),
        &[0xff, 0xd9],
        &mut rng_for(seed, &jpg),
    )?;
    let xmp = xmp_text(seed, idx, None);
    fs::write(out.join(format!("{stem}.xmp")), &xmp)?;
    Ok((3, raw_size + jpg_size + xmp.len() as u64))
}

// ---------------------------------------------------------------------------------------------
// The Lightroom-like catalog.

const SCHEMA: &str = r#"
CREATE TABLE AgLibraryRootFolder (
    id_local INTEGER PRIMARY KEY, id_global TEXT UNIQUE NOT NULL,
    absolutePath TEXT NOT NULL DEFAULT '', name TEXT NOT NULL DEFAULT '',
    relativePathFromCatalog TEXT);
CREATE TABLE AgLibraryFolder (
    id_local INTEGER PRIMARY KEY, id_global TEXT UNIQUE NOT NULL,
    pathFromRoot TEXT NOT NULL DEFAULT '', rootFolder INTEGER NOT NULL DEFAULT 0, visibility INTEGER);
CREATE TABLE AgLibraryFile (
    id_local INTEGER PRIMARY KEY, id_global TEXT UNIQUE NOT NULL,
    baseName TEXT NOT NULL DEFAULT '', extension TEXT NOT NULL DEFAULT '',
    folder INTEGER NOT NULL DEFAULT 0, importHash TEXT, modTime REAL,
    originalFilename TEXT NOT NULL DEFAULT '', sidecarExtensions TEXT);
CREATE TABLE Adobe_images (
    id_local INTEGER PRIMARY KEY, id_global TEXT UNIQUE NOT NULL,
    captureTime TEXT, colorLabels TEXT NOT NULL DEFAULT '', fileFormat TEXT NOT NULL DEFAULT 'unset',
    fileHeight INTEGER, fileWidth INTEGER, orientation TEXT, pick INTEGER NOT NULL DEFAULT 0,
    rating INTEGER, rootFile INTEGER NOT NULL DEFAULT 0, touchCount INTEGER NOT NULL DEFAULT 0,
    touchTime REAL NOT NULL DEFAULT 0);
CREATE TABLE AgHarvestedExifMetadata (
    id_local INTEGER PRIMARY KEY, image INTEGER, aperture REAL, cameraModel TEXT,
    focalLength REAL, isoSpeedRating INTEGER, shutterSpeed REAL, lens TEXT);
CREATE TABLE Adobe_imageDevelopSettings (
    id_local INTEGER PRIMARY KEY, image INTEGER, digest TEXT, historySettingsID INTEGER,
    processVersion TEXT, settingsID TEXT, text TEXT);
CREATE TABLE Adobe_previewCache (
    id_local INTEGER PRIMARY KEY, image INTEGER, uuid TEXT, digest TEXT, thumb BLOB);
CREATE INDEX index_Adobe_images_captureTime ON Adobe_images(captureTime);
CREATE INDEX index_Adobe_images_rootFile ON Adobe_images(rootFile);
CREATE INDEX index_AgLibraryFile_folder ON AgLibraryFile(folder);
CREATE INDEX index_Adobe_imageDevelopSettings_image ON Adobe_imageDevelopSettings(image);
CREATE INDEX index_AgHarvestedExifMetadata_image ON AgHarvestedExifMetadata(image);
"#;

const DEVELOP_KEYS: &[&str] = &[
    "AutoLateralCA",
    "Blacks2012",
    "BlueHue",
    "BlueSaturation",
    "Brightness",
    "CameraProfile",
    "Clarity2012",
    "ColorNoiseReduction",
    "ColorNoiseReductionDetail",
    "Contrast2012",
    "Dehaze",
    "Exposure2012",
    "GrainAmount",
    "GreenHue",
    "GreenSaturation",
    "HighlightRecovery",
    "Highlights2012",
    "HueAdjustmentAqua",
    "HueAdjustmentBlue",
    "HueAdjustmentGreen",
    "HueAdjustmentOrange",
    "HueAdjustmentRed",
    "HueAdjustmentYellow",
    "LensProfileEnable",
    "LuminanceAdjustmentBlue",
    "LuminanceAdjustmentGreen",
    "LuminanceAdjustmentOrange",
    "LuminanceSmoothing",
    "ParametricDarks",
    "ParametricHighlights",
    "ParametricLights",
    "ParametricShadows",
    "PostCropVignetteAmount",
    "RedHue",
    "RedSaturation",
    "SaturationAdjustmentBlue",
    "SaturationAdjustmentOrange",
    "SaturationAdjustmentRed",
    "Shadows2012",
    "SharpenDetail",
    "SharpenEdgeMasking",
    "SharpenRadius",
    "Sharpness",
    "SplitToningBalance",
    "Temperature",
    "Texture",
    "Tint",
    "Vibrance",
    "Whites2012",
];

/// Lua-table text like Lightroom's develop settings, ~1.2 KiB.
fn develop_text(r: &mut ChaCha8Rng) -> String {
    let mut s = String::with_capacity(1400);
    s.push_str("s = { ");
    for k in DEVELOP_KEYS {
        match *k {
            "CameraProfile" => s.push_str("CameraProfile = \"Adobe Color\",\n"),
            "Temperature" => {
                let _ = writeln!(s, "Temperature = {},", r.gen_range(3000..7500));
            }
            _ => {
                let _ = writeln!(s, "{k} = {},", r.gen_range(-100..=100));
            }
        }
    }
    s.push_str("ToneCurvePV2012 = { ");
    for x in (0..=255).step_by(32) {
        let _ = write!(s, "{x}, {}, ", (x + r.gen_range(-6..=6)).clamp(0, 255));
    }
    s.push_str("},\nWhiteBalance = \"Custom\" }");
    s
}

fn hex_id(r: &mut ChaCha8Rng) -> String {
    let x: u128 = r.gen();
    let h = format!("{x:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Builds the catalog: at least one row per photo of the shoot, then older shoots' rows until the
/// file reaches `target` bytes. Returns (rows, bytes).
fn build_catalog(path: &Path, seed: u64, photos: u64, target: u64) -> Result<(u64, u64)> {
    fs::create_dir_all(path.parent().unwrap())?;
    if path.exists() {
        fs::remove_file(path)?;
    }
    let mut db = Connection::open(path)?;
    db.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE;")?;
    db.execute_batch(SCHEMA)?;
    let mut r = rng_for(seed, "catalog");
    let tx = db.transaction()?;
    tx.execute(
        "INSERT INTO AgLibraryRootFolder VALUES (1, ?1, '/Volumes/Shoots/', 'Shoots', NULL)",
        [hex_id(&mut r)],
    )?;
    let mut rows = 0u64;
    {
        let mut folder = tx.prepare("INSERT INTO AgLibraryFolder VALUES (?1, ?2, ?3, 1, NULL)")?;
        let mut file =
            tx.prepare("INSERT INTO AgLibraryFile VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?;
        let mut image = tx.prepare(
            "INSERT INTO Adobe_images VALUES (?1, ?2, ?3, ?4, 'RAW', 5464, 8192, 'AB', 0, ?5, ?1, 0, ?6)",
        )?;
        let mut exif = tx.prepare("INSERT INTO AgHarvestedExifMetadata VALUES (?1, ?1, ?2, 'Canon EOS R5', ?3, ?4, ?5, ?6)")?;
        let mut dev = tx.prepare(
            "INSERT INTO Adobe_imageDevelopSettings VALUES (?1, ?1, ?2, ?3, '11.0', ?4, ?5)",
        )?;
        let mut prev = tx.prepare("INSERT INTO Adobe_previewCache VALUES (?1, ?1, ?2, ?3, ?4)")?;
        let mut page_count = tx.prepare("PRAGMA page_count")?;
        let mut folders = 0u64;
        let mut since_check = 0u32;
        loop {
            rows += 1;
            let i = rows;
            // Rows beyond this shoot's photos stand for earlier weddings in the same catalog.
            let (shoot, n) = if i <= photos {
                (0, i)
            } else {
                (1 + (i - photos - 1) / 1500, (i - photos - 1) % 1500 + 1)
            };
            let folder_id = shoot + 1;
            if folder_id > folders {
                folders = folder_id;
                let path = if shoot == 0 {
                    "2024/2024-06-15 Wedding/".to_string()
                } else {
                    format!("2023/Shoot {shoot:03}/")
                };
                folder.execute(params![folder_id as i64, hex_id(&mut r), path])?;
            }
            let base = if shoot == 0 {
                photo_stem(i).rsplit('/').next().unwrap().to_string()
            } else {
                format!("IMG_{:04}", n % 10000)
            };
            let mtime = 7.4e8 + (i as f64) * 17.25;
            file.execute(params![
                i as i64,
                hex_id(&mut r),
                base,
                "CR3",
                folder_id as i64,
                format!("{:016x}", r.gen::<u64>()),
                mtime,
                format!("{base}.CR3"),
                "JPG,xmp"
            ])?;
            let label = ["", "", "", "Red", "Green"][r.gen_range(0..5)];
            image.execute(params![
                i as i64,
                hex_id(&mut r),
                capture_time(n),
                label,
                r.gen_range(0..=5i64),
                mtime + 3600.0
            ])?;
            exif.execute(params![
                i as i64,
                [1.2, 1.8, 2.8, 4.0, 5.6][r.gen_range(0..5)],
                r.gen_range(24.0..200.0f64).round(),
                [100, 400, 1600, 3200][r.gen_range(0..4)],
                r.gen_range(5.0..11.0f64),
                "RF24-70mm F2.8 L IS USM"
            ])?;
            let text = develop_text(&mut r);
            let digest = blake3::hash(text.as_bytes()).to_hex()[..32].to_string();
            dev.execute(params![i as i64, digest, i as i64, hex_id(&mut r), text])?;
            let mut thumb = vec![0u8; r.gen_range(256..=768)];
            r.fill_bytes(&mut thumb);
            thumb[..2].copy_from_slice(&[0xff, 0xd8]);
            prev.execute(params![
                i as i64,
                hex_id(&mut r),
                format!("{:016x}", r.gen::<u64>()),
                thumb
            ])?;
            // Check the size every 64 rows, once every photo of the shoot has its row.
            since_check += 1;
            if rows >= photos && since_check >= 64 {
                since_check = 0;
                let pages: i64 = page_count.query_row([], |row| row.get(0))?;
                if pages as u64 * 4096 >= target {
                    break;
                }
            }
        }
    }
    tx.commit()?;
    db.close().map_err(|(_, e)| e)?;
    Ok((rows, fs::metadata(path)?.len()))
}

// ---------------------------------------------------------------------------------------------
// Subcommands.

fn generate(out: &Path, size_gb: f64, seed: u64, catalog_mb: u64, force: bool) -> Result<()> {
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

fn write_manifest(out: &Path, m: &Manifest) -> Result<()> {
    let mut f = BufWriter::new(File::create(out.join(MANIFEST))?);
    serde_json::to_writer_pretty(&mut f, m)?;
    f.write_all(b"\n")?;
    f.flush()?;
    Ok(())
}

fn mutate(out: &Path, day: u32) -> Result<()> {
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

const WORDS: &[&str] = &[
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

fn smallfiles(out: &Path, count: u64, seed: u64, dirs: u64) -> Result<()> {
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
