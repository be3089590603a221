//! A client that speaks the sync API directly with a real machine's token and the organisation's
//! keys, as a stolen or buggy machine would: it can seal any bytes under any blob ID, commit any
//! metadata with valid MACs, and register whatever chunk list it likes. The end-to-end tests use
//! it to check that none of that reaches another machine's backup or the restoring machine's
//! disk outside its target.

use std::path::Path;

use keepsake_agent::home::Home;
use keepsake_common::api::{Committed, PackStored, SourceInfo};
use keepsake_common::crypto::SealedBlob;
use keepsake_common::delta::{ChunkRef, DeltaDigester, DeltaHeader, DeltaWriter, Entry};
use keepsake_common::framing::FrameWriter;
use keepsake_common::ids::{BlobId, ContentHash};
use keepsake_common::keys::OrgPublicKeys;
use keepsake_common::mac::EntryMacKey;
use serde_json::json;
use uuid::Uuid;

/// The hostile client of an enrolled home.
pub struct Hostile {
    base: String,
    token: String,
    /// The organisation's public keys and chunk-ID key (what every machine holds).
    pub keys: OrgPublicKeys,
    http: reqwest::blocking::Client,
}

impl Hostile {
    /// Uses the token and keys of the enrolled home at `home`.
    pub fn of_home(home: &Path) -> Hostile {
        let h = Home::new(home);
        let cfg = h.config().expect("enrolled home");
        Hostile {
            base: cfg.server_urls[0].trim_end_matches('/').to_string(),
            token: cfg.token,
            keys: h.public_keys().expect("keys"),
            http: reqwest::blocking::Client::new(),
        }
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .expect("request");
        let status = r.status();
        let v: serde_json::Value = r.json().unwrap_or(serde_json::Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// The blob ID and content hash an honest machine computes for a file of one chunk.
    pub fn ids_of(&self, data: &[u8]) -> (BlobId, ContentHash) {
        (
            BlobId::of(&self.keys.chunk_id_key, data),
            ContentHash::of(&self.keys.chunk_id_key, data),
        )
    }

    /// Seals `data` honestly (one chunk).
    pub fn seal(&self, data: &[u8]) -> SealedBlob {
        self.keys.seal_blob(data).expect("seal")
    }

    /// Seals `garbage` but labels it as blob `id` (what a poisoning machine uploads).
    pub fn forge(&self, id: BlobId, garbage: &[u8]) -> SealedBlob {
        let mut b = self.seal(garbage);
        b.id = id;
        b
    }

    /// Uploads `blobs` as one pack.
    pub fn upload(&self, blobs: &[SealedBlob]) -> PackStored {
        let mut w = FrameWriter::new(Vec::new()).unwrap();
        for b in blobs {
            w.write_blob(b).unwrap();
        }
        let r = self
            .http
            .post(format!("{}/v1/packs", self.base))
            .bearer_auth(&self.token)
            .body(w.finish().unwrap())
            .send()
            .expect("upload");
        assert!(r.status().is_success(), "upload: {}", r.status());
        r.json().unwrap()
    }

    /// Registers (or finds) a source of this machine.
    pub fn source(&self, root: &str) -> Uuid {
        let v: SourceInfo =
            serde_json::from_value(self.post("/v1/sources", &json!({ "root_path": root })))
                .unwrap();
        v.id
    }

    /// Commits `entries` (sealed with valid MACs) as one job of `source`.
    pub fn commit(&self, source: Uuid, mut entries: Vec<Entry>) -> Committed {
        let job: Uuid = self.post(
            "/v1/jobs",
            &json!({"source_id": source, "kind": "incremental"}),
        )["job_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let key = EntryMacKey::derive(&self.keys.chunk_id_key);
        let mut w = DeltaWriter::new(
            Vec::new(),
            &DeltaHeader::new(source.to_string(), None),
            &key,
        )
        .unwrap();
        let mut digest = DeltaDigester::new();
        for e in entries.iter_mut() {
            w.write(e).unwrap();
            digest.add(e);
        }
        let r = self
            .http
            .put(format!("{}/v1/jobs/{job}/parts/0", self.base))
            .bearer_auth(&self.token)
            .body(w.finish().unwrap())
            .send()
            .expect("part");
        assert!(r.status().is_success(), "part: {}", r.status());
        serde_json::from_value(self.post(
            &format!("/v1/jobs/{job}/commit"),
            &json!({"parts": 1, "delta_digest": digest.finish()}),
        ))
        .unwrap()
    }
}

/// A file entry of `data` (one chunk, or none when empty) with `mode`.
pub fn file_entry(
    path: &str,
    data: &[u8],
    blob: Option<&SealedBlob>,
    hash: ContentHash,
    mode: u32,
) -> Entry {
    Entry::Upsert {
        path: path.into(),
        raw_path: None,
        size: data.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        mode,
        content_hash: hash,
        chunks: blob
            .map(|b| {
                vec![ChunkRef {
                    id: b.id,
                    len: b.plain_len,
                }]
            })
            .unwrap_or_default(),
        link: None,
        mac: None,
    }
}

/// A symlink entry.
pub fn symlink_entry(path: &str, target: &str) -> Entry {
    Entry::Symlink {
        path: path.into(),
        raw_path: None,
        target: target.into(),
        raw_target: None,
        mtime_ns: 1_700_000_000_000_000_000,
        mac: None,
    }
}
