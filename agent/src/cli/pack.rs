//! `keepsake pack`: an offline backup of a folder into encrypted packs and the job delta,
//! without a server.
//!
//! Crash behaviour: `keepsake pack` plans against an empty in-memory catalog and records nothing in
//! the home; a killed run leaves the files written so far in the output folder, and running it
//! again starts over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::ProgressBar;
use keepsake_common::delta::DeltaHeader;
use serde::Serialize;

use super::keys::read_public_keys;
use super::progress::{self, Look};
use super::rules::{build_matcher, parse_size_arg, RuleArgs};
use super::{output, EXIT_PARTIAL};
use crate::backup::{backup_to_sink, BackupObserver, BackupOptions, BackupReport};
use crate::catalog::Catalog;
use crate::detect::plan::PlanTotals;
use crate::pipeline::{DeltaLimits, FileOutcome, FramedFileSink};
use crate::units::format_bytes;

/// `keepsake pack`
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The folder to back up (a source root)
    pub path: PathBuf,
    /// Output folder (created if needed; must be empty)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The organisation's keys: the secret-keys JSON or the public-keys JSON
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// Source identifier written in the delta header [default: the root path]
    #[arg(long, value_name = "ID")]
    pub source: Option<String>,
    /// Target size of each pack file
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size_arg)]
    pub pack_size: u64,
    /// Most entries per delta part
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub part_entries: u64,
    /// Most bytes per delta part
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size_arg)]
    pub part_size: u64,
    /// Reader threads and sealer threads [default: one of each per CPU]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Descend into folders on other file systems
    #[arg(long)]
    pub cross_filesystems: bool,
    /// Exclusion rules.
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// The `manifest.json` of a `keepsake pack` folder.
#[derive(Serialize)]
struct PackManifest<'a> {
    format: &'static str,
    version: u32,
    root: String,
    source: &'a str,
    key_id: &'a str,
    created_at_ms: i64,
    packs: Vec<ManifestFile>,
    delta_parts: Vec<ManifestFile>,
    report: &'a BackupReport,
}

#[derive(Serialize)]
struct ManifestFile {
    file: String,
    blobs: Option<u64>,
    entries: Option<u64>,
    bytes: u64,
}

struct PackProgress {
    bar: ProgressBar,
    files: u64,
    bytes: u64,
    failed: u64,
}

impl BackupObserver for PackProgress {
    fn on_plan_progress(&mut self, t: &PlanTotals) {
        self.bar.set_message(format!(
            "scanned {} files — packed {} files, {}{}",
            t.scan.files,
            self.files,
            format_bytes(self.bytes),
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            }
        ));
    }
    fn on_file(&mut self, o: &FileOutcome) {
        match o {
            FileOutcome::Done(r) => {
                self.files += 1;
                self.bytes += r.size;
            }
            FileOutcome::Failed(_) => self.failed += 1,
        }
        if self.files % 64 == 0 {
            self.bar.set_message(format!(
                "packed {} files, {}",
                self.files,
                format_bytes(self.bytes)
            ));
        }
    }
}

fn relative_name(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

pub(super) fn cmd_pack(home: &Path, args: PackArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let root = std::fs::canonicalize(&args.path)
        .with_context(|| format!("cannot back up {}", args.path.display()))?;
    if !root.is_dir() {
        bail!("cannot back up {}: not a folder", root.display());
    }
    let keys = read_public_keys(&args.keys)?;
    keys.current_recipient()
        .context("the keys have no usable current recipient")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out_dir = std::fs::canonicalize(&args.out)?;
    if std::fs::read_dir(&out_dir)?.next().is_some() {
        bail!(
            "{} is not empty; pack into a new or empty folder",
            out_dir.display()
        );
    }
    if out_dir.starts_with(&root) {
        bail!(
            "the output folder {} is inside the folder being packed",
            out_dir.display()
        );
    }
    let matcher = Arc::new(build_matcher(&root, home, &args.rules, None)?);
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| root.display().to_string());
    let sink = Arc::new(FramedFileSink::new(&out_dir.join("packs"), args.pack_size)?);
    let mut opts = BackupOptions::new(&out_dir.join("delta"), DeltaHeader::new(&source, None));
    // A full snapshot: plan against an empty catalog, record nothing.
    opts.plan.update_catalog = false;
    opts.journal = false;
    opts.scan.cross_filesystems = args.cross_filesystems;
    opts.delta_limits = DeltaLimits {
        max_entries: args.part_entries.max(1),
        max_bytes: args.part_size,
    };
    if let Some(n) = args.threads {
        opts.pipeline.readers = n.max(1);
        opts.pipeline.sealers = n.max(1);
    }
    let mut catalog = Catalog::open_in_memory()?;
    let bar = progress::bar(args.json, &Look::SPINNER);
    let mut progress = PackProgress {
        bar: bar.clone(),
        files: 0,
        bytes: 0,
        failed: 0,
    };
    let report = backup_to_sink(
        &mut catalog,
        &root,
        matcher,
        &keys,
        sink.clone(),
        &opts,
        &mut progress,
    )?;
    bar.finish_and_clear();
    let packs: Vec<ManifestFile> = sink
        .files()
        .iter()
        .map(|f| ManifestFile {
            file: relative_name(&out_dir, &f.path),
            blobs: Some(f.blobs),
            entries: None,
            bytes: f.bytes,
        })
        .collect();
    let parts: Vec<ManifestFile> = report
        .delta
        .parts
        .iter()
        .map(|p| ManifestFile {
            file: relative_name(&out_dir, &p.path),
            blobs: None,
            entries: Some(p.entries),
            bytes: p.bytes,
        })
        .collect();
    let manifest = PackManifest {
        format: "keepsake-offline-pack",
        version: 1,
        root: root.display().to_string(),
        source: &source,
        key_id: &keys.current_key_id,
        created_at_ms: crate::catalog::now_ms(),
        packs,
        delta_parts: parts,
        report: &report,
    };
    let manifest_path = out_dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    if args.json {
        output::json(out, &manifest)?;
    } else {
        print_pack(out, &report, &out_dir, sink.files().len())?;
    }
    let partial = report.files_failed > 0 || report.entry_errors > 0 || report.plan.has_issues();
    Ok(if partial { EXIT_PARTIAL } else { 0 })
}

fn print_pack(
    out: &mut dyn Write,
    r: &BackupReport,
    dir: &Path,
    pack_files: usize,
) -> std::io::Result<()> {
    let secs = r.elapsed.as_secs_f64();
    let p = &r.pipeline;
    writeln!(out, "Source:   {}", r.plan.root)?;
    writeln!(
        out,
        "Packed:   {} files ({}), {} folders, {} symlinks in {:.1} s ({}/s)",
        r.files_backed_up,
        format_bytes(r.bytes_backed_up),
        r.delta.dirs,
        r.delta.symlinks,
        secs,
        format_bytes((p.bytes_read as f64 / secs.max(1e-9)) as u64)
    )?;
    writeln!(
        out,
        "Blobs:    {} sealed ({} encrypted, {} compressed), {} chunks deduplicated",
        p.blobs_emitted,
        format_bytes(p.cipher_bytes_emitted),
        p.blobs_compressed,
        p.chunks_deduped + p.chunks_known
    )?;
    writeln!(
        out,
        "Output:   {} pack files, {} delta parts ({} entries) in {}",
        pack_files,
        r.delta.parts.len(),
        r.delta.entries,
        dir.display()
    )?;
    if let Some(cpu) = r.cpu {
        writeln!(
            out,
            "CPU:      {:.1} s ({} threads reading, {} sealing)",
            cpu.as_secs_f64(),
            r.threads.0,
            r.threads.1
        )?;
    }
    if r.files_failed > 0 || r.entry_errors > 0 {
        writeln!(
            out,
            "Failed:   {} files (not in the pack; run again later)",
            r.files_failed + r.entry_errors
        )?;
        for f in &r.failures {
            writeln!(out, "  {}: {}", f.rel, f.message)?;
        }
        output::and_more(out, "  ", r.failures.len(), r.files_failed)?;
    } else {
        writeln!(out, "Failed:   none")?;
    }
    if r.plan.has_issues() {
        writeln!(
            out,
            "Errors:   {} paths could not be scanned",
            r.plan.totals.scan.issues
        )?;
        for i in &r.plan.issues {
            writeln!(out, "  {}: {}", i.rel, i.message)?;
        }
    }
    Ok(())
}
