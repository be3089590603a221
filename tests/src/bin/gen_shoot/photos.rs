//! Photos: a RAW (CR3), a JPEG and an XMP sidecar per frame; the sidecar's camera-day text and
//! the edits a photographer makes to it later.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::containers::{cr3_header, jpeg_header};
use crate::stream::{rng_for, write_stream};
use crate::{KIB, MIB};
use anyhow::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(crate) fn photo_stem(idx: u64) -> String {
    // Canon numbers 0001-9999 and then opens the next folder.
    let folder = 100 + (idx - 1) / 9999;
    let num = (idx - 1) % 9999 + 1;
    format!("DCIM/{folder}EOSR5/IMG_{num:04}")
}

pub(crate) fn capture_time(idx: u64) -> String {
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
pub(crate) fn xmp_text(seed: u64, idx: u64, edit: Option<&str>) -> Vec<u8> {
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
pub(crate) fn write_photo(out: &Path, seed: u64, idx: u64) -> Result<(u64, u64)> {
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
