//! The sync protocol as a test client speaks it: an HTTP client with a bearer token, and helpers
//! to seal data, build packs and deltas, and read blobs back. Used by `sync_api/` and
//! `integrity.rs` (a hostile client is this client used against the rules).

#![allow(dead_code)]

use keepsake_common::api::*;
use keepsake_common::crypto::SealedBlob;
use keepsake_common::delta::{ChunkRef, DeltaDigester, DeltaHeader, DeltaWriter, Entry};
use keepsake_common::framing::{Frame, FrameWriter, FRAME_HEADER_LEN, STREAM_HEADER_LEN};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash, ContentHash, DeltaDigest};
use keepsake_common::keys::OrgKeys;
use keepsake_common::mac::EntryMacKey;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

pub struct Agent {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Agent {
    pub fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn send_bytes(
        &self,
        m: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let r = self.req(m, path).body(body).send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send_bytes(reqwest::Method::POST, path, body).await
    }
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send_bytes(reqwest::Method::PUT, path, body).await
    }
}

pub async fn enroll(srv: &TestServer, token: &str, name: &str) -> (EnrollResponse, Agent) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&serde_json::json!({"enroll_token": token, "name": name, "hostname": "host", "platform": "linux"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "enrol {name}");
    let e: EnrollResponse = r.json().await.unwrap();
    let agent = Agent {
        base: srv.url(),
        token: e.agent_token.clone(),
        http,
    };
    (e, agent)
}

pub fn user(srv: &TestServer, token: &str) -> Agent {
    Agent {
        base: srv.url(),
        token: token.to_string(),
        http: reqwest::Client::new(),
    }
}

/// Seals `data` as chunks of at most `chunk` bytes.
pub fn seal(keys: &OrgKeys, data: &[u8], chunk: usize) -> (ContentHash, Vec<SealedBlob>) {
    let hash = ContentHash::of(&keys.chunk_id_key, data);
    let blobs = if data.is_empty() {
        Vec::new()
    } else {
        data.chunks(chunk)
            .map(|c| keys.seal_blob(c).unwrap())
            .collect()
    };
    (hash, blobs)
}

pub fn pack(blobs: &[&SealedBlob]) -> Vec<u8> {
    let mut w = FrameWriter::new(Vec::new()).unwrap();
    for b in blobs {
        w.write_blob(b).unwrap();
    }
    w.finish().unwrap()
}

pub fn upsert(path: &str, data_len: usize, hash: ContentHash, blobs: &[SealedBlob]) -> Entry {
    Entry::Upsert {
        path: path.into(),
        raw_path: None,
        size: data_len as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        content_hash: hash,
        chunks: blobs
            .iter()
            .map(|b| ChunkRef {
                id: b.id,
                len: b.plain_len,
            })
            .collect(),
        link: None,
        mac: None,
    }
}

/// The server cannot check entry MACs (it has no key): any organisation key seals these.
pub fn mac_key() -> EntryMacKey {
    EntryMacKey::derive(&ChunkIdKey([9; 32]))
}

pub fn delta(source: Uuid, entries: &[Entry]) -> Vec<u8> {
    let mut w = DeltaWriter::new(
        Vec::new(),
        &DeltaHeader::new(source.to_string(), None),
        &mac_key(),
    )
    .unwrap();
    for e in entries {
        w.write(&mut e.clone()).unwrap();
    }
    w.finish().unwrap()
}

/// The digest an agent sends with its commit: over the entries as sealed and sent.
pub fn digest_of(entries: &[Entry]) -> DeltaDigest {
    let mut d = DeltaDigester::new();
    for e in entries {
        let mut e = e.clone();
        e.seal(&mac_key());
        d.add(&e);
    }
    d.finish()
}

pub async fn source(agent: &Agent, root: &str) -> Uuid {
    let (s, v) = agent
        .post_json("/v1/sources", &serde_json::json!({"root_path": root}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

pub async fn start_job(agent: &Agent, source: Uuid, kind: &str) -> Uuid {
    let (s, v) = agent
        .post_json(
            "/v1/jobs",
            &serde_json::json!({"source_id": source, "kind": kind}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["job_id"].as_str().unwrap().parse().unwrap()
}

pub async fn upload(agent: &Agent, blobs: &[&SealedBlob]) -> PackStored {
    let (s, v) = agent.post_bytes("/v1/packs", pack(blobs)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

pub async fn commit(agent: &Agent, job: Uuid, parts: u32) -> (StatusCode, Value) {
    agent
        .post_json(
            &format!("/v1/jobs/{job}/commit"),
            &serde_json::json!({"parts": parts}),
        )
        .await
}

pub async fn files(agent: &Agent, point: &str, prefix: &str) -> Vec<FileAtPoint> {
    let r = agent
        .req(
            reqwest::Method::GET,
            &format!("/v1/points/{point}/files?prefix={prefix}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub async fn read_blobs(
    agent: &Agent,
    ids: &[BlobId],
) -> Result<Vec<(BlobId, Vec<u8>)>, (StatusCode, Value)> {
    read_blobs_avoiding(agent, ids, &[]).await
}

/// Reads blobs, asking for copies other than `avoid`. A stream the server cut short (no intact
/// copy of a blob) is an error with status 200.
pub async fn read_blobs_avoiding(
    agent: &Agent,
    ids: &[BlobId],
    avoid: &[CipherHash],
) -> Result<Vec<(BlobId, Vec<u8>)>, (StatusCode, Value)> {
    let cut = || {
        (
            StatusCode::OK,
            Value::String("the blob stream was cut short".into()),
        )
    };
    let Ok(r) = agent
        .req(reqwest::Method::POST, "/v1/blobs/read")
        .json(&ReadBlobsRequest {
            ids: ids.to_vec(),
            avoid: avoid.to_vec(),
        })
        .send()
        .await
    else {
        return Err(cut());
    };
    let s = r.status();
    if s != StatusCode::OK {
        return Err((s, r.json().await.unwrap_or(Value::Null)));
    }
    // Frames are read without verifying hashes here: the caller checks each blob on its own, as a
    // restore does.
    let Ok(body) = r.bytes().await else {
        return Err(cut());
    };
    let mut out = Vec::new();
    let mut pos = STREAM_HEADER_LEN;
    loop {
        if body.len() < pos + FRAME_HEADER_LEN {
            return Err(cut());
        }
        let fb: [u8; FRAME_HEADER_LEN] = body[pos..pos + FRAME_HEADER_LEN].try_into().unwrap();
        pos += FRAME_HEADER_LEN;
        match Frame::decode(&fb).unwrap() {
            Frame::Blob(h) => {
                let n = h.cipher_len as usize;
                if body.len() < pos + n {
                    return Err(cut());
                }
                out.push((h.blob_id, body[pos..pos + n].to_vec()));
                pos += n;
            }
            Frame::End(_) => break,
        }
    }
    assert_eq!(pos, body.len());
    Ok(out)
}

pub fn test_keys() -> OrgKeys {
    OrgKeys::generate().unwrap()
}

pub async fn db_count(srv: &TestServer, sql: &str) -> i64 {
    srv.db
        .owner()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
