//! The network blob sink: batches sealed blobs into pack-sized uploads.
//!
//! The pipeline's sealer threads hand blobs to [`UploadSink::emit`]; blobs collect in a batch
//! until it reaches the pack size, then the batch goes to the uploader thread through a channel
//! of one slot, so at most three batches exist at a time (filling, queued, uploading) and
//! memory stays bounded. The uploader asks the server which of the batch's blobs it lacks,
//! uploads only those as one framed stream, and records every blob of the batch in the catalog
//! as held by the server — only after the server has acknowledged, so a crash at any point
//! re-uploads at most the batches in flight and never trusts a blob that was not stored.
//!
//! "Lacks" means: the server holds no copy that this machine uploaded or checked itself. A
//! blob only another machine uploaded is uploaded again, unless this machine holds the
//! organisation's identity and the other copy passes its check ([`verify`]): then it is
//! adopted instead.

pub mod verify;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use keepsake_common::crypto::SealedBlob;
use keepsake_common::framing::{FrameHeader, StreamHeader, StreamValidator};
use keepsake_common::ids::BlobId;
use keepsake_common::keys::OrgKeys;

use crate::catalog::{BlobRef, Catalog};
use crate::client::ApiClient;
use crate::home::CatalogOpener;
use crate::pipeline::{BlobSink, SinkError};

/// Default pack size: blobs are uploaded in batches of about this many bytes.
pub const DEFAULT_PACK_BYTES: usize = 16 * 1024 * 1024;

/// Counters of an upload run.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Blobs handed to the sink.
    pub blobs_emitted: AtomicU64,
    /// Blobs the server already had when asked.
    pub blobs_already_present: AtomicU64,
    /// Blobs uploaded.
    pub blobs_uploaded: AtomicU64,
    /// Other machines' copies checked with this machine's keys and adopted instead of uploading.
    pub blobs_adopted: AtomicU64,
    /// Ciphertext bytes uploaded (frames included).
    pub bytes_sent: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

struct State {
    batch: Vec<SealedBlob>,
    batch_bytes: usize,
    /// Blobs emitted in this run (so `known` answers yes for them).
    emitted: HashSet<BlobId>,
    failed: Option<String>,
}

/// A [`BlobSink`] that uploads to the server.
pub struct UploadSink {
    state: Mutex<State>,
    known_db: Mutex<Catalog>,
    pack_bytes: usize,
    tx: Mutex<Option<SyncSender<Vec<SealedBlob>>>>,
    uploader: Mutex<Option<JoinHandle<Result<(), String>>>>,
    rate: Arc<std::sync::atomic::AtomicU64>,
    verifier: Arc<Mutex<Option<Arc<OrgKeys>>>>,
    /// Counters.
    pub stats: Arc<UploadStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UploadSink {
    /// A sink uploading through `client`, recording server-held blobs in the catalog that
    /// `catalog` opens (its own connections: one for lookups, one for the uploader).
    pub fn new(
        client: Arc<ApiClient>,
        catalog: &CatalogOpener,
        pack_bytes: usize,
    ) -> Result<UploadSink, SinkError> {
        let open = || {
            catalog
                .open()
                .map_err(|e| SinkError::Other(format!("catalog: {e}")))
        };
        let known_db = open()?;
        let mut record_db = open()?;
        let stats = Arc::new(UploadStats::default());
        let (tx, rx): (SyncSender<Vec<SealedBlob>>, Receiver<Vec<SealedBlob>>) = sync_channel(1);
        let st = stats.clone();
        let rate = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let up_rate = rate.clone();
        let verifier: Arc<Mutex<Option<Arc<OrgKeys>>>> = Arc::new(Mutex::new(None));
        let up_verifier = verifier.clone();
        let uploader = std::thread::Builder::new()
            .name("keepsake-upload".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    let started = std::time::Instant::now();
                    let sent_before = st.bytes_sent.load(Ordering::Relaxed);
                    let keys = lock(&up_verifier).clone();
                    upload_batch(&client, &mut record_db, batch, &st, keys.as_deref())?;
                    // Bandwidth limit: wait until the batch took as long as the limit allows.
                    let limit = up_rate.load(Ordering::Relaxed);
                    if limit > 0 {
                        let sent = st.bytes_sent.load(Ordering::Relaxed) - sent_before;
                        let due = std::time::Duration::from_secs_f64(sent as f64 / limit as f64);
                        if let Some(rest) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(rest);
                        }
                    }
                }
                Ok(())
            })
            .map_err(SinkError::Io)?;
        Ok(UploadSink {
            state: Mutex::new(State {
                batch: Vec::new(),
                batch_bytes: 0,
                emitted: HashSet::new(),
                failed: None,
            }),
            known_db: Mutex::new(known_db),
            pack_bytes: pack_bytes.max(1),
            tx: Mutex::new(Some(tx)),
            uploader: Mutex::new(Some(uploader)),
            rate,
            verifier,
            stats,
        })
    }

    /// With the organisation's identity, other machines' copies are checked and adopted instead
    /// of uploading this machine's own (see [`verify`]).
    pub fn with_verifier(self, keys: Option<Arc<OrgKeys>>) -> UploadSink {
        *lock(&self.verifier) = keys;
        self
    }

    /// Limits uploads to `bytes_per_sec` on average (smaller packs, paced).
    pub fn with_rate_limit(mut self, bytes_per_sec: Option<u64>) -> UploadSink {
        if let Some(r) = bytes_per_sec.filter(|r| *r > 0) {
            self.rate.store(r, Ordering::Relaxed);
            // Packs of a few seconds' worth keep the pacing smooth.
            self.pack_bytes = self.pack_bytes.min((r as usize * 4).max(256 * 1024));
        }
        self
    }

    fn send(&self, batch: Vec<SealedBlob>) -> Result<(), SinkError> {
        let sender = lock(&self.tx).clone();
        let Some(sender) = sender else {
            return Err(SinkError::Closed("the uploader has finished".into()));
        };
        if sender.send(batch).is_err() {
            // The uploader stopped: its error is the reason.
            let why = self.join_uploader();
            let msg = why.err().unwrap_or_else(|| "the uploader stopped".into());
            lock(&self.state).failed = Some(msg.clone());
            return Err(SinkError::Closed(msg));
        }
        Ok(())
    }

    fn join_uploader(&self) -> Result<(), String> {
        lock(&self.tx).take();
        match lock(&self.uploader).take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err("the uploader panicked".into())),
            None => Ok(()),
        }
    }
}

impl BlobSink for UploadSink {
    fn known(&self, id: &BlobId) -> bool {
        if lock(&self.state).emitted.contains(id) {
            return true;
        }
        lock(&self.known_db)
            .server_has_blob(id.as_bytes())
            .unwrap_or(false)
    }

    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError> {
        self.stats.blobs_emitted.fetch_add(1, Ordering::Relaxed);
        let full = {
            let mut st = lock(&self.state);
            if let Some(f) = &st.failed {
                return Err(SinkError::Closed(f.clone()));
            }
            if !st.emitted.insert(blob.id) {
                return Ok(());
            }
            st.batch_bytes += blob.ciphertext.len();
            st.batch.push(blob);
            if st.batch_bytes >= self.pack_bytes {
                st.batch_bytes = 0;
                Some(std::mem::take(&mut st.batch))
            } else {
                None
            }
        };
        match full {
            // Blocks while the previous batch is still queued: backpressure on the sealers.
            Some(batch) => self.send(batch),
            None => Ok(()),
        }
    }

    fn flush(&self) -> Result<(), SinkError> {
        let rest = {
            let mut st = lock(&self.state);
            st.batch_bytes = 0;
            std::mem::take(&mut st.batch)
        };
        if !rest.is_empty() {
            self.send(rest)?;
        }
        self.join_uploader().map_err(SinkError::Closed)
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        let _ = self.join_uploader();
    }
}

/// Uploads what the server lacks of `batch` (after adopting other machines' copies that
/// `verifier` checks), then records the whole batch as server-held.
fn upload_batch(
    client: &ApiClient,
    catalog: &mut Catalog,
    batch: Vec<SealedBlob>,
    stats: &UploadStats,
    verifier: Option<&OrgKeys>,
) -> Result<(), String> {
    let ids: Vec<BlobId> = batch.iter().map(|b| b.id).collect();
    let refs: Vec<BlobRef> = batch
        .iter()
        .map(|b| BlobRef {
            id: *b.id.as_bytes(),
            len: u64::from(b.plain_len),
        })
        .collect();
    let (missing, foreign) = client
        .missing_detail(&ids)
        .map_err(|e| format!("asking the server which blobs it lacks: {e}"))?;
    let mut missing: HashSet<BlobId> = missing.into_iter().collect();
    if let (Some(keys), false) = (verifier, foreign.is_empty()) {
        let checked = verify::verify_copies(client, keys, &foreign);
        if !checked.is_empty() {
            match client.adopt(&checked) {
                Ok(_) => {
                    for c in &checked {
                        missing.remove(&c.id);
                    }
                    stats
                        .blobs_adopted
                        .fetch_add(checked.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not adopt checked copies; uploading ours")
                }
            }
        }
    }
    stats
        .blobs_already_present
        .fetch_add((batch.len() - missing.len()) as u64, Ordering::Relaxed);
    let to_send: Vec<&SealedBlob> = batch.iter().filter(|b| missing.contains(&b.id)).collect();
    if !to_send.is_empty() {
        let body = encode_pack(&to_send);
        // The encoded body replaces the batch in memory while it uploads.
        drop(to_send);
        drop(batch);
        let n = body.len() as u64;
        let stored = client
            .upload_pack(body.into())
            .map_err(|e| format!("uploading a pack: {e}"))?;
        stats.packs.fetch_add(1, Ordering::Relaxed);
        stats
            .blobs_uploaded
            .fetch_add(stored.blobs, Ordering::Relaxed);
        stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    catalog
        .record_server_blobs(&refs)
        .map_err(|e| format!("recording uploaded blobs in the catalog: {e}"))?;
    Ok(())
}

/// The framed stream (`keepsake_common::framing`) of `blobs`.
pub fn encode_pack(blobs: &[&SealedBlob]) -> Vec<u8> {
    let total: usize = blobs.iter().map(|b| b.ciphertext.len() + 80).sum::<usize>() + 96;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&StreamHeader::default().encode());
    let mut v = StreamValidator::default();
    for b in blobs {
        let h = FrameHeader::for_blob(b);
        // Default limits are far above one pack.
        let _ = v.observe(&h);
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&b.ciphertext);
    }
    out.extend_from_slice(&v.trailer().encode());
    out
}
