//! Recovery points and browsing them: a point's summary and the files, links and folders live
//! at it, with the metadata each entry's MAC covers.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delta::ChunkRef;
use crate::ids::{ContentHash, EntryMac};
use crate::mac::{EntryFacts, FactKind};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryPointInfo {
    pub id: Uuid,
    pub source_id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub root_path: String,
    pub seq: i64,
    pub point_in_time: chrono::DateTime<chrono::Utc>,
    pub file_count: i64,
    pub backup_size_bytes: i64,
    pub is_wedding_critical: bool,
}

/// One line of `GET /v1/points/{id}/files` (NDJSON): a file, link or directory live at the point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileAtPoint {
    pub path: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::delta::b64_opt"
    )]
    pub raw_path: Option<Vec<u8>>,
    pub kind: FileKind,
    pub size: u64,
    #[serde(default)]
    pub mtime_ns: Option<i64>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Content hash and chunk list (files only; omitted with `chunks=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<ContentHash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Hard-link group (files recorded with more than one name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
    /// The agent's MAC over the entry's metadata ([`crate::mac`]); restore refuses an entry
    /// whose MAC is absent or does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<EntryMac>,
}

impl FileAtPoint {
    /// The metadata the entry's MAC covers.
    pub fn facts(&self) -> EntryFacts<'_> {
        let file = self.kind == FileKind::File;
        EntryFacts {
            kind: match self.kind {
                FileKind::File => FactKind::File,
                FileKind::Directory => FactKind::Dir,
                FileKind::Symlink => FactKind::Symlink,
                FileKind::Fifo => FactKind::Fifo,
            },
            path: &self.path,
            mode: if self.kind == FileKind::Symlink {
                0
            } else {
                self.mode.unwrap_or(0)
            },
            size: if file { self.size } else { 0 },
            content_hash: if file {
                self.content_hash.as_ref()
            } else {
                None
            },
            target: self.symlink_target.as_deref(),
            link: if file { self.link } else { None },
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Symlink,
    Directory,
    /// A named pipe.
    Fifo,
}
