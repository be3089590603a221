//! `keepsake restore`: restore a recovery point (or part of it) into a folder.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;

use super::keys::{unlock_keys, SecretArgs};
use super::points::resolve_point;
use super::progress::{self, Look};
use super::{output, EXIT_FAILED};
use crate::client;
use crate::home::Home;
use crate::restore::{self, RestoreOptions, RestoreProgress};
use crate::units::format_bytes;

/// `keepsake restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Recovery point id, or `latest` (this machine's newest).
    #[arg(long)]
    pub point: String,
    /// Only this path (a file, or a folder and everything under it).
    #[arg(long, default_value = "")]
    pub path: String,
    /// Target folder.
    #[arg(long)]
    pub to: PathBuf,
    /// Replace existing files with different content (default: restore beside them).
    #[arg(long)]
    pub overwrite: bool,
    /// Files restored in parallel.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Keep set-user-ID, set-group-ID and sticky bits (honoured only when running as root;
    /// otherwise modes are restored masked to rwxrwxrwx).
    #[arg(long)]
    pub keep_special_bits: bool,
    /// Passphrase or paper key.
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_restore(
    home_dir: &Path,
    args: RestoreArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    let (cfg, client) = client::connect(&home, None)?;
    let point = resolve_point(&client, cfg.agent_id, &args.point)?;
    let keys = unlock_keys(&home, &args.secrets.source())?;
    let mut opts = RestoreOptions::new(point, &args.to);
    opts.prefix = args.path.clone();
    opts.overwrite = args.overwrite;
    opts.workers = args.workers.max(1);
    opts.keep_special_bits = args.keep_special_bits;
    let progress = RestoreProgress::default();
    let pb = progress::bar(args.json, &Look::RESTORE);
    let report = progress::while_running(
        Duration::from_millis(200),
        || {
            pb.set_message(format!(
                "{} files, {}",
                progress.files.load(Ordering::Relaxed),
                format_bytes(progress.bytes.load(Ordering::Relaxed))
            ))
        },
        || restore::restore(&client, &keys, &opts, &progress),
    )?;
    pb.finish_and_clear();
    if args.json {
        output::json(out, &report)?;
    } else {
        writeln!(
            out,
            "restored {} files ({}) into {} in {:.2?}; {} already complete, {} beside existing files, {} folders, {} links, {} hard links, {} named pipes",
            report.files_restored,
            format_bytes(report.bytes),
            args.to.display(),
            report.elapsed,
            report.files_skipped,
            report.files_beside,
            report.dirs,
            report.symlinks,
            report.hard_links,
            report.fifos
        )?;
        if report.refused > 0 {
            writeln!(
                out,
                "REFUSED {} entries whose metadata is not authenticated (not restored)",
                report.refused
            )?;
        }
        if report.renamed_count > 0 {
            writeln!(
                out,
                "{} paths restored under another name (see --json for the list)",
                report.renamed_count
            )?;
        }
        for f in &report.failures {
            writeln!(out, "FAILED {}: {}", f.path, f.error)?;
        }
    }
    if !report.failures.is_empty() {
        return Ok(EXIT_FAILED);
    }
    Ok(0)
}
