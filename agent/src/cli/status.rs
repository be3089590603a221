//! `keepsake status`: the daemon's state, or whether every file of a folder is safe on the
//! server (`--path`).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{output, EXIT_NOT_SAFE};
use crate::catalog::FileState;
use crate::daemon;
use crate::home::Home;
use crate::relpath::RelPath;
use crate::units::format_bytes;

/// `keepsake status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A folder (e.g. just copied from a card): is every file in it safe on the server?
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct PathReport {
    path: PathBuf,
    source_root: PathBuf,
    files: u64,
    committed: u64,
    waiting: u64,
    not_yet_seen: u64,
    changed_since_backup: u64,
    safe_to_format: bool,
    copies: Copies,
    waiting_examples: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Copies {
    local: u32,
    server: u32,
}

fn path_report(home: &Home, dir: &Path) -> anyhow::Result<PathReport> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let catalog = home
        .existing_catalog()?
        .context("no catalog yet: nothing backed up")?;
    let source = catalog
        .sources()?
        .into_iter()
        .filter(|s| dir.starts_with(&s.root))
        .max_by_key(|s| s.root.as_os_str().len())
        .with_context(|| {
            format!(
                "{} is not inside a folder this agent backs up",
                dir.display()
            )
        })?;
    let mut r = PathReport {
        path: dir.clone(),
        source_root: source.root.clone(),
        files: 0,
        committed: 0,
        waiting: 0,
        not_yet_seen: 0,
        changed_since_backup: 0,
        safe_to_format: false,
        copies: Copies {
            local: 1,
            server: 0,
        },
        waiting_examples: Vec::new(),
    };
    for e in walkdir::WalkDir::new(&dir).follow_links(false) {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        r.files += 1;
        let rel = RelPath::strip_root(&source.root, e.path())?;
        let meta = e.metadata()?;
        let waiting = match catalog.lookup(source.id, &rel)? {
            None => {
                r.not_yet_seen += 1;
                true
            }
            Some(rec) => {
                let same = rec.size == meta.len()
                    && rec.mtime_ns == meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
                    && rec.inode == meta.ino();
                if rec.state == FileState::Committed && same {
                    r.committed += 1;
                    false
                } else {
                    if rec.state == FileState::Committed {
                        r.changed_since_backup += 1;
                    }
                    true
                }
            }
        };
        if waiting {
            r.waiting += 1;
            if r.waiting_examples.len() < 10 {
                r.waiting_examples.push(rel.display().into_owned());
            }
        }
    }
    r.safe_to_format = r.files > 0 && r.waiting == 0;
    r.copies.server = u32::from(r.safe_to_format);
    Ok(r)
}

pub(super) fn cmd_status(
    home_dir: &Path,
    args: StatusArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    if let Some(p) = &args.path {
        let r = path_report(&home, p)?;
        if args.json {
            output::json(out, &r)?;
        } else if r.safe_to_format {
            writeln!(
                out,
                "SAFE: all {} files in {} are committed on the server (copies: this disk + {} on the server)",
                r.files,
                r.path.display(),
                r.copies.server
            )?;
        } else {
            writeln!(
                out,
                "NOT YET: {} of {} files in {} are waiting ({} never backed up, {} changed since); do not format the card",
                r.waiting,
                r.files,
                r.path.display(),
                r.not_yet_seen,
                r.changed_since_backup
            )?;
            for ex in &r.waiting_examples {
                writeln!(out, "  waiting: {ex}")?;
            }
        }
        return Ok(if r.safe_to_format { 0 } else { EXIT_NOT_SAFE });
    }
    let (status, running) = daemon::read_status(&home);
    if args.json {
        output::json(
            out,
            &serde_json::json!({"daemon_running": running, "status": status}),
        )?;
        return Ok(0);
    }
    match status {
        Some(s) => {
            writeln!(
                out,
                "daemon: {} ({}), last success {}",
                if running { "running" } else { "not running" },
                s.state,
                s.last_success_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            )?;
            for src in &s.sources {
                writeln!(
                    out,
                    "  {}: {} waiting ({}), last commit {}{}{}",
                    src.root.display(),
                    src.pending_files,
                    format_bytes(src.pending_bytes),
                    src.last_commit_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "never".into()),
                    if src.watched {
                        ""
                    } else {
                        ", not watched (periodic scans)"
                    },
                    src.last_error
                        .as_ref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                )?;
                let q = &src.queue;
                if src.pending_files > 0 {
                    writeln!(
                        out,
                        "    queue: {} wedding-critical ({}), {} originals ({}), {} sidecars ({}){}",
                        q.critical.files,
                        format_bytes(q.critical.bytes),
                        q.originals.files,
                        format_bytes(q.originals.bytes),
                        q.sidecars.files,
                        format_bytes(q.sidecars.bytes),
                        if q.unclassified > 0 {
                            format!(" ({} not classified yet)", q.unclassified)
                        } else {
                            String::new()
                        }
                    )?;
                }
            }
        }
        None => writeln!(
            out,
            "daemon: {}; no status yet",
            if running { "running" } else { "not running" }
        )?,
    }
    Ok(0)
}
