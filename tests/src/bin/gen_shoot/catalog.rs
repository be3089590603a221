//! The Lightroom-like SQLite catalog: its schema, develop-settings text, and building it to a
//! target size from rows for this shoot and older ones.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::photos::{capture_time, photo_stem};
use crate::stream::rng_for;
use anyhow::Result;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection};

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
pub(crate) fn develop_text(r: &mut ChaCha8Rng) -> String {
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
pub(crate) fn build_catalog(
    path: &Path,
    seed: u64,
    photos: u64,
    target: u64,
) -> Result<(u64, u64)> {
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
