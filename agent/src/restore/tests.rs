//! Unit tests of the restore's small pieces (the whole restore is tested against an in-memory
//! source in `agent/tests/restore_local.rs`).
//!
//! Tests only; they write into temporary folders that are removed when they end.

use super::*;
use keepsake_common::api::BlobCopy;
use keepsake_common::ids::{BlobId, CipherHash};

#[test]
fn modes_are_masked_unless_special_bits_are_kept() {
    // Recorded modes carry the file type bits; only permission bits are restored.
    assert_eq!(effective_mode(Some(0o100644), 0o600, false), 0o644);
    assert_eq!(effective_mode(Some(0o104755), 0o600, false), 0o755);
    assert_eq!(effective_mode(Some(0o041777), 0o600, false), 0o777);
    assert_eq!(effective_mode(Some(0o104755), 0o600, true), 0o4755);
    assert_eq!(effective_mode(Some(0o041777), 0o600, true), 0o1777);
    assert_eq!(effective_mode(None, 0o644, false), 0o644);
}

struct Recorder {
    calls: Mutex<Vec<usize>>,
}

impl RestoreSource for Recorder {
    fn files_page(
        &self,
        _point: Uuid,
        _prefix: &str,
        _after: Option<&str>,
        _limit: usize,
        _chunks: bool,
    ) -> Result<(Vec<FileAtPoint>, bool), ClientError> {
        Ok((Vec::new(), false))
    }

    fn read_blobs(
        &self,
        _ids: &[BlobId],
        _avoid: &[CipherHash],
    ) -> Result<Box<dyn std::io::Read + '_>, ClientError> {
        Err(ClientError::Network("offline".into()))
    }

    fn adopt(&self, copies: &[BlobCopy]) -> Result<u64, ClientError> {
        self.calls.lock().unwrap().push(copies.len());
        if copies.len() > 1000 {
            return Err(ClientError::Network("too many".into()));
        }
        Ok(copies.len() as u64)
    }
}

#[test]
fn verified_copies_are_adopted_in_batches() {
    let src = Recorder {
        calls: Mutex::new(Vec::new()),
    };
    let a = blobs::Adopter::new();
    for i in 0..2500u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        a.record(
            &src,
            BlobCopy {
                id: BlobId(id),
                cipher_hash: CipherHash([1; 32]),
            },
        );
    }
    a.flush(&src);
    assert_eq!(*src.calls.lock().unwrap(), vec![1000, 1000, 500]);
    assert_eq!(a.adopted.load(Ordering::Relaxed), 2500);
}
