//! Job deltas: round trip, path rules, truncation.

use std::io::BufReader;

use keepsake_common::delta::{
    ChunkRef, DeltaDigester, DeltaError, DeltaHeader, DeltaReader, DeltaWriter, Entry, MAX_LINE_LEN,
};
use keepsake_common::ids::{BlobId, ChunkIdKey, ContentHash};
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::{os_path_to_wire, wire_to_os_path, PathError};
use proptest::prelude::*;

fn component() -> impl Strategy<Value = String> {
    // Names with spaces, unicode, dots inside, and the escape range.
    "[a-zA-Z0-9 _.é日\u{F7AA}-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..5).prop_map(|v| v.join("/"))
}

fn entry() -> impl Strategy<Value = Entry> {
    let chunks = prop::collection::vec((any::<[u8; 32]>(), 1u32..5_000_000), 0..20);
    prop_oneof![
        (
            rel_path(),
            chunks,
            any::<i64>(),
            any::<u32>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(p, ch, mtime_ns, mode, h)| {
                let chunks: Vec<ChunkRef> = ch
                    .into_iter()
                    .map(|(id, len)| ChunkRef {
                        id: BlobId(id),
                        len,
                    })
                    .collect();
                let size = chunks.iter().map(|c| u64::from(c.len)).sum();
                let (path, raw_path) = os_path_to_wire(std::path::Path::new(&p)).unwrap();
                Entry::Upsert {
                    path,
                    raw_path,
                    size,
                    mtime_ns,
                    mode,
                    content_hash: ContentHash(h),
                    chunks,
                    link: (mode % 3 == 0).then_some(u64::from(mode)),
                    mac: None,
                }
            }),
        rel_path().prop_map(|p| Entry::Delete {
            path: p.replace('\u{F7AA}', "x"),
            raw_path: None
        }),
        (rel_path(), "[^\0]{1,40}", any::<i64>()).prop_map(|(p, target, mtime_ns)| {
            Entry::Symlink {
                path: p.replace('\u{F7AA}', "y"),
                raw_path: None,
                target,
                raw_target: None,
                mtime_ns,
                mac: None,
            }
        }),
        (rel_path(), any::<i64>(), any::<u32>()).prop_map(|(p, mtime_ns, mode)| Entry::Dir {
            path: p.replace('\u{F7AA}', "z"),
            raw_path: None,
            mtime_ns,
            mode,
            mac: None,
        }),
        (rel_path(), any::<i64>(), 0u32..0o7777).prop_map(|(p, mtime_ns, perm)| Entry::Fifo {
            path: p.replace('\u{F7AA}', "f"),
            raw_path: None,
            mtime_ns,
            mode: 0o010000 | perm,
            mac: None,
        }),
    ]
}

fn mac_key() -> EntryMacKey {
    EntryMacKey::derive(&ChunkIdKey([42; 32]))
}

/// Writes `entries`, sealing each (the slice is updated with the MACs written).
fn write_sealed(header: &DeltaHeader, entries: &mut [Entry]) -> Vec<u8> {
    let mut w = DeltaWriter::new(Vec::new(), header, &mac_key()).unwrap();
    for e in entries.iter_mut() {
        w.write(e).unwrap();
    }
    w.finish().unwrap()
}

fn write(header: &DeltaHeader, entries: &[Entry]) -> Vec<u8> {
    write_sealed(header, &mut entries.to_vec())
}

fn read(bytes: &[u8]) -> Result<(DeltaHeader, Vec<Entry>), DeltaError> {
    let r = DeltaReader::new(BufReader::with_capacity(64, bytes))?;
    let h = r.header().clone();
    let entries = r.collect::<Result<Vec<_>, _>>()?;
    Ok((h, entries))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(mut entries in prop::collection::vec(entry(), 0..12), parent in proptest::option::of(any::<u64>())) {
        let header = DeltaHeader::new("9b1f5a2c-source", parent);
        let bytes = write_sealed(&header, &mut entries);
        // Every entry but a deletion was sealed, and its MAC verifies.
        for e in &entries {
            match (e.facts(), e.mac()) {
                (Some(f), Some(m)) => prop_assert!(mac_key().verify(&f, m)),
                (None, None) => {}
                other => prop_assert!(false, "unsealed entry: {:?}", other),
            }
        }
        // NDJSON: one object per line.
        let text = std::str::from_utf8(&bytes).unwrap();
        prop_assert_eq!(text.lines().count(), entries.len() + 2);
        for l in text.lines() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(l).unwrap().is_object());
        }
        let (h, got) = read(&bytes).unwrap();
        prop_assert_eq!(h, header);
        prop_assert_eq!(&got, &entries);
        // The digest of what was read equals the digest of what was written.
        let (mut a, mut b) = (DeltaDigester::new(), DeltaDigester::new());
        entries.iter().for_each(|e| a.add(e));
        got.iter().for_each(|e| b.add(e));
        prop_assert_eq!(a.finish(), b.finish());
        // Every cut is an error.
        for cut in 0..bytes.len() {
            prop_assert!(read(&bytes[..cut]).is_err(), "cut at {} accepted", cut);
        }
    }

    #[test]
    fn traversal_paths_rejected(prefix in rel_path(), bad in prop_oneof![
        Just("..".to_string()), Just(".".to_string()), Just("".to_string()),
        Just("a\0b".to_string()), Just("a\\b".to_string()), Just("..\\..\\x".to_string()),
    ]) {
        let p = format!("{prefix}/{bad}");
        let e = Entry::Delete { path: p.clone(), raw_path: None };
        prop_assert!(e.validate().is_err());
        let mut w = DeltaWriter::new(Vec::new(), &DeltaHeader::new("s", None), &mac_key()).unwrap();
        prop_assert!(w.write(&mut e.clone()).is_err());
        // A hostile delta (written by hand) is refused by the reader with a path error.
        let line = serde_json::to_string(&e).unwrap();
        let doc = format!("{{\"keepsake_delta\":2,\"source\":\"s\",\"parent_seq\":null}}\n{line}\n{{\"op\":\"end\",\"entries\":1}}\n");
        let err = read(doc.as_bytes()).unwrap_err();
        prop_assert!(matches!(err, DeltaError::Path { line: 2, .. }), "{}", err);
        prop_assert!(wire_to_os_path(&p, None).is_err());
    }
}

#[test]
fn absolute_and_drive_paths_rejected() {
    for (p, want) in [
        ("/etc/passwd", "absolute"),
        ("C:/Users/x", "drive"),
        ("../outside", "traversal"),
        ("a/../../b", "traversal"),
    ] {
        let e = Entry::Delete {
            path: p.into(),
            raw_path: None,
        };
        let msg = e.validate().unwrap_err();
        assert!(msg.contains("bad path"), "{p}: {msg}");
        let err = wire_to_os_path(p, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(want), "{p}: {text}");
    }
    assert!(matches!(
        wire_to_os_path("a\\b", None),
        Err(PathError::Backslash(_))
    ));
}

#[cfg(unix)]
#[test]
fn non_utf8_names_keep_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let raw: &[u8] = b"Sm\xefth/IMG_\xff.CR3";
    let (path, raw_path) =
        os_path_to_wire(std::path::Path::new(std::ffi::OsStr::from_bytes(raw))).unwrap();
    let e = Entry::Upsert {
        path: path.clone(),
        raw_path: raw_path.clone(),
        size: 3,
        mtime_ns: -5,
        mode: 0o100644,
        content_hash: ContentHash([1; 32]),
        chunks: vec![ChunkRef {
            id: BlobId([2; 32]),
            len: 3,
        }],
        link: None,
        mac: None,
    };
    let mut sealed = vec![e];
    let bytes = write_sealed(&DeltaHeader::new("s", Some(1)), &mut sealed);
    let (_, got) = read(&bytes).unwrap();
    assert_eq!(got, sealed);
    let os = wire_to_os_path(&path, raw_path.as_deref()).unwrap();
    assert_eq!(os.as_os_str().as_bytes(), raw);
}

#[test]
fn inconsistent_entries_rejected() {
    let bad_size = Entry::Upsert {
        path: "a".into(),
        raw_path: None,
        size: 10,
        mtime_ns: 0,
        mode: 0,
        content_hash: ContentHash([0; 32]),
        chunks: vec![ChunkRef {
            id: BlobId([0; 32]),
            len: 9,
        }],
        link: None,
        mac: None,
    };
    assert!(bad_size.validate().is_err());
    // A named pipe whose mode says it is something else.
    let fifo = Entry::Fifo {
        path: "p".into(),
        raw_path: None,
        mtime_ns: 0,
        mode: 0o100644,
        mac: None,
    };
    assert!(fifo.validate().is_err());
    let raw_mismatch = Entry::Delete {
        path: "abc".into(),
        raw_path: Some(b"abd".to_vec()),
    };
    assert!(raw_mismatch.validate().is_err());
}

#[test]
fn reader_errors() {
    let good = write(
        &DeltaHeader::new("s", None),
        &[Entry::Delete {
            path: "x".into(),
            raw_path: None,
        }],
    );
    let text = String::from_utf8(good.clone()).unwrap();
    // Wrong count in the end line.
    let wrong = text.replace("\"entries\":1", "\"entries\":2");
    assert!(matches!(
        read(wrong.as_bytes()),
        Err(DeltaError::CountMismatch { .. })
    ));
    // Unknown and retired versions.
    for v in [1, 3] {
        let other = text.replace("\"keepsake_delta\":2", &format!("\"keepsake_delta\":{v}"));
        assert!(matches!(
            read(other.as_bytes()),
            Err(DeltaError::UnsupportedVersion(n)) if n == v
        ));
    }
    // Trailing data.
    let mut more = good.clone();
    more.extend_from_slice(b"{}\n");
    assert!(matches!(read(&more), Err(DeltaError::TrailingData)));
    // Unknown op and unknown field.
    let unknown = text.replace("\"op\":\"delete\"", "\"op\":\"explode\"");
    assert!(matches!(
        read(unknown.as_bytes()),
        Err(DeltaError::Syntax { line: 2, .. })
    ));
    let extra = text.replace("\"path\":\"x\"", "\"path\":\"x\",\"evil\":1");
    assert!(matches!(
        read(extra.as_bytes()),
        Err(DeltaError::Syntax { line: 2, .. })
    ));
    // Not a delta at all.
    assert!(read(b"hello\n").is_err());
    assert!(matches!(read(b""), Err(DeltaError::Truncated)));
    // A line over the limit is refused without reading it whole.
    let mut huge = b"{\"keepsake_delta\":2,\"source\":\"s\",\"parent_seq\":null}\n".to_vec();
    huge.extend(std::iter::repeat_n(b' ', MAX_LINE_LEN + 10));
    huge.push(b'\n');
    assert!(matches!(
        read(&huge),
        Err(DeltaError::LineTooLong { line: 2 })
    ));
}

#[test]
fn entries_without_a_mac_are_refused_and_the_digest_sees_every_field() {
    let mut e = Entry::Dir {
        path: "Smith".into(),
        raw_path: None,
        mtime_ns: 1,
        mode: 0o40755,
        mac: None,
    };
    // Written by hand without a MAC: the reader refuses it.
    let line = serde_json::to_string(&e).unwrap();
    let doc = format!(
        "{{\"keepsake_delta\":2,\"source\":\"s\",\"parent_seq\":null}}\n{line}\n{{\"op\":\"end\",\"entries\":1}}\n"
    );
    let err = read(doc.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("without a MAC"), "{err}");
    // Sealed, it reads; the MAC covers the mode.
    e.seal(&mac_key());
    let facts = e.facts().unwrap();
    assert!(mac_key().verify(&facts, e.mac().unwrap()));
    let mut digests = std::collections::HashSet::new();
    let mut d = DeltaDigester::new();
    d.add(&e);
    digests.insert(d.finish());
    // Any change of a field, or of the order, changes the digest.
    let mut changed = e.clone();
    if let Entry::Dir { mtime_ns, .. } = &mut changed {
        *mtime_ns = 2;
    }
    let mut d = DeltaDigester::new();
    d.add(&changed);
    assert!(digests.insert(d.finish()));
    let other = Entry::Delete {
        path: "x".into(),
        raw_path: None,
    };
    let (mut ab, mut ba) = (DeltaDigester::new(), DeltaDigester::new());
    ab.add(&e);
    ab.add(&other);
    ba.add(&other);
    ba.add(&e);
    assert_ne!(ab.finish(), ba.finish());
    assert_eq!(ab.entries(), 2);
}
