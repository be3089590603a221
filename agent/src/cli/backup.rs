//! `keepsake backup`: back up a folder (or every folder backed up before) to the server now.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::ProgressBar;

use super::progress::{self, Look};
use super::rules::{build_matcher, RuleArgs};
use super::{output, EXIT_PARTIAL};
use crate::backup::{BackupObserver, Run, RunOptions};
use crate::client;
use crate::home::Home;
use crate::pipeline::FileOutcome;
use crate::units::format_bytes;

/// `keepsake backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Folder to back up (default: every folder backed up before from this home).
    pub path: Option<PathBuf>,
    /// Mark this backup wedding-critical.
    #[arg(long)]
    pub critical: bool,
    /// Exclusion rules (with the organisation's rules and the home's `exclude` file).
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

struct BarObserver {
    pb: ProgressBar,
}

impl BackupObserver for BarObserver {
    fn on_file(&mut self, outcome: &FileOutcome) {
        self.pb.inc(1);
        if let FileOutcome::Failed(e) = outcome {
            self.pb.println(format!(
                "could not back up {}: {}",
                e.rel.display(),
                e.message
            ));
        }
    }
}

pub(super) fn cmd_backup(
    home_dir: &Path,
    args: BackupArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    home.config()?;
    let roots: Vec<PathBuf> = match &args.path {
        Some(p) => vec![p.clone()],
        None => {
            let Some(catalog) = home.existing_catalog()? else {
                bail!("nothing to back up yet: give a folder, e.g. `keepsake backup ~/Pictures/Weddings`");
            };
            let roots: Vec<PathBuf> = catalog.sources()?.into_iter().map(|s| s.root).collect();
            if roots.is_empty() {
                bail!("nothing to back up yet: give a folder");
            }
            roots
        }
    };
    // The organisation's rules apply to this backup as to the daemon's.
    let (_, client) = client::connect(&home, None)?;
    let policy = client
        .policy()
        .context("cannot fetch the organisation's policy")?;
    if let Err(e) = home.save_policy(&policy) {
        tracing::warn!(error = %e, "cannot keep the policy in the home");
    }
    let mut summaries = Vec::new();
    let mut failed = 0u64;
    for root in roots {
        let root = std::fs::canonicalize(&root)
            .with_context(|| format!("cannot back up {}", root.display()))?;
        if !root.is_dir() {
            bail!("cannot back up {}: not a folder", root.display());
        }
        let matcher = Arc::new(build_matcher(&root, home_dir, &args.rules, Some(&policy))?);
        let mut opts = RunOptions::new(matcher);
        opts.wedding_critical = args.critical;
        opts.verifier = home.stored_secret_keys()?.map(Arc::new);
        let pb = progress::bar(args.json, &Look::BACKUP);
        let mut obs = BarObserver { pb: pb.clone() };
        let s = Run::new(&home, &root, opts).execute(&mut obs)?.main;
        pb.finish_and_clear();
        failed += s.files_failed;
        if !args.json {
            match &s.committed {
                Some(c) => writeln!(
                    out,
                    "{}: committed recovery point {} (seq {}): {} added, {} changed, {} deleted; {} files live",
                    root.display(),
                    c.recovery_point_id,
                    c.seq,
                    c.files_added,
                    c.files_changed,
                    c.files_deleted,
                    c.file_count
                )?,
                None => writeln!(out, "{}: no changes since the last backup", root.display())?,
            }
            writeln!(
                out,
                "  files {}, read {}, new after dedup {}, sent {}, in {:.2?}{}",
                s.files,
                format_bytes(s.bytes_read),
                format_bytes(s.bytes_new),
                format_bytes(s.bytes_sent),
                s.elapsed,
                if s.files_failed > 0 {
                    format!(
                        "; {} file(s) could not be read (will retry)",
                        s.files_failed
                    )
                } else {
                    String::new()
                }
            )?;
            if s.skipped_count > 0 {
                writeln!(
                    out,
                    "  not backed up because of their kind: {}",
                    s.skipped_count
                )?;
                for k in &s.skipped {
                    writeln!(out, "    {}: {}", k.rel, k.detail)?;
                }
                output::and_more(out, "    ", s.skipped.len(), s.skipped_count)?;
            }
        }
        summaries.push(serde_json::json!({"root": root, "summary": s}));
    }
    if args.json {
        output::json(out, &summaries)?;
    }
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}
