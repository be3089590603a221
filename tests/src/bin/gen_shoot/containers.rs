//! Container headers: just enough structure that a file looks like what it claims to be
//! (ISO-BMFF boxes for CR3 and MP4, TIFF/Exif metadata, JPEG segments).

use crate::photos::capture_time;

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
pub(crate) fn cr3_header(idx: u64, size: u64) -> Vec<u8> {
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

pub(crate) fn mp4_header(size: u64) -> Vec<u8> {
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
pub(crate) fn jpeg_header(idx: u64) -> Vec<u8> {
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
