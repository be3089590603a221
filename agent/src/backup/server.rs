//! The server half of one attempt of a pass: the local half ([`super::local`]) into the upload
//! sink, then the server job — start, send the delta parts, commit — and the commit journal
//! applied to the catalog.
//!
//! Crash behaviour: the server job is started only once the delta is complete on disk, and the
//! catalog learns of the commit only after the server confirmed it (each journal batch one
//! transaction; a crash in between leaves files that the next run finds uncommitted: it reads
//! them again and commits them again, without uploading their blobs a second time). A job whose agent died is abandoned by the
//! server when its lease runs out. On a failed request the job is marked failed when the server
//! can still be told.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use keepsake_common::api::{CommitRequest, JobKind};
use keepsake_common::delta::DeltaHeader;
use keepsake_common::keys::OrgPublicKeys;
use uuid::Uuid;

use super::local::{backup_to_sink, BackupObserver, BackupOptions};
use super::{failpoint, BackupSummary, RunError, RunOptions, Selection};
use crate::catalog::Catalog;
use crate::client::{ApiClient, CommitAnswer};
use crate::home::CatalogOpener;
use crate::upload::UploadSink;

/// One pass of a run: what every attempt shares.
pub(super) struct Pass<'a> {
    pub client: &'a Arc<ApiClient>,
    pub catalog_opener: CatalogOpener,
    pub root: &'a Path,
    pub server_source: Uuid,
    pub keys: &'a OrgPublicKeys,
    pub opts: &'a RunOptions,
    pub select: Selection,
    pub wedding_critical: bool,
}

impl Pass<'_> {
    /// One attempt, working in `work`. `Ok(Some(missing))` when the server refused the commit
    /// for blobs it lacks.
    pub fn attempt(
        &self,
        catalog: &mut Catalog,
        work: &Path,
        observer: &mut dyn BackupObserver,
        summary: &mut BackupSummary,
    ) -> Result<Option<Vec<[u8; 32]>>, RunError> {
        let client = self.client;
        let parent = client
            .sources()?
            .into_iter()
            .find(|s| s.id == self.server_source)
            .map(|s| s.last_committed_seq)
            .unwrap_or(0);
        let header = DeltaHeader::new(self.server_source.to_string(), Some(parent.max(0) as u64));
        let mut bopts = BackupOptions::new(work, header);
        bopts.pipeline = self.opts.pipeline.clone();
        bopts.select = self.select.clone();
        bopts.priority = self.opts.classifier.clone();
        let sink = Arc::new(
            UploadSink::new(client.clone(), &self.catalog_opener, self.opts.pack_bytes)
                .map(|s| {
                    s.with_rate_limit(self.opts.bandwidth_kbps.map(|k| u64::from(k) * 1000 / 8))
                        .with_verifier(self.opts.verifier.clone())
                })
                .map_err(|e| RunError::Other(e.to_string()))?,
        );
        let report = backup_to_sink(
            catalog,
            self.root,
            self.opts.matcher.clone(),
            self.keys,
            sink.clone(),
            &bopts,
            observer,
        )?;
        let stats = &sink.stats;
        summary.files = report.delta.entries;
        summary.files_backed_up = report.files_backed_up;
        summary.files_failed = report.files_failed;
        summary.files_deferred = report.files_deferred;
        summary.fifos = report.plan.totals.scan.fifos;
        summary.skipped_count = report.plan.totals.scan.skipped;
        summary.skipped = report.plan.skipped.clone();
        summary.bytes_read += report.bytes_backed_up;
        summary.bytes_new += report.pipeline.cipher_bytes_emitted;
        summary.bytes_sent += stats.bytes_sent.load(Relaxed);
        summary.blobs_already_present += stats.blobs_already_present.load(Relaxed);
        summary.blobs_adopted += stats.blobs_adopted.load(Relaxed);
        summary.packs += stats.packs.load(Relaxed);
        let source = report
            .source_id
            .ok_or_else(|| RunError::Other("the plan did not report its catalog source".into()))?;
        if report.delta.parts.is_empty() {
            // Nothing changed: no job, no recovery point.
            summary.report = Some(report);
            return Ok(None);
        }
        let job = client.start_job(
            self.server_source,
            JobKind::Incremental,
            self.wedding_critical,
        )?;
        let outcome = (|| -> Result<CommitAnswer, RunError> {
            for part in &report.delta.parts {
                client.put_part(job.job_id, part.index, &part.path)?;
            }
            failpoint("before_commit");
            Ok(client.commit(
                job.job_id,
                &CommitRequest {
                    parts: report.delta.parts.len() as u32,
                    files_failed: report.files_failed.min(u64::from(u32::MAX)) as u32,
                    bytes_read: report.bytes_backed_up,
                    bytes_sent: summary.bytes_sent,
                    delta_digest: Some(report.delta.digest),
                },
            )?)
        })();
        match outcome {
            Ok(CommitAnswer::Committed(c)) => {
                failpoint("after_commit");
                if let Some(journal) = &report.delta.journal {
                    for batch in journal
                        .batches(10_000)
                        .map_err(|e| RunError::Other(e.to_string()))?
                    {
                        let batch = batch.map_err(|e| RunError::Other(e.to_string()))?;
                        catalog.record_commit(source, c.seq, &batch)?;
                    }
                }
                summary.committed = Some(c);
                summary.report = Some(report);
                Ok(None)
            }
            Ok(CommitAnswer::Missing(m)) => {
                let _ = client.fail_job(job.job_id, "blobs missing on the server; retrying");
                Ok(Some(m.missing.iter().map(|b| *b.as_bytes()).collect()))
            }
            Err(e) => {
                // Leave the server job to be abandoned; the next run starts a new one.
                let _ = client.fail_job(job.job_id, &e.to_string());
                Err(e)
            }
        }
    }
}
