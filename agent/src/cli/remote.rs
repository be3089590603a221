//! The commands that talk to the server: `enroll`, `backup`, `points`, `ls`, `restore`, `whoami`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::ProgressBar;
use keepsake_common::api::FileKind;
use uuid::Uuid;

use super::keys::{unlock_keys, SecretArgs};
use super::output;
use super::progress::{self, Look};
use super::rules::{build_matcher, RuleArgs};
use crate::backup::{BackupObserver, Run, RunOptions};
use crate::client;
use crate::enroll::{self, EnrollOptions};
use crate::home::Home;
use crate::pipeline::FileOutcome;
use crate::restore::{self, RestoreOptions, RestoreProgress};
use crate::units::format_bytes;

/// `keepsake enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Server URL (repeat for failover servers, tried in order).
    #[arg(long = "server", required = true, value_name = "URL")]
    pub servers: Vec<String>,
    /// The single-use enrolment token from the organisation's admin.
    #[arg(long)]
    pub token: String,
    /// This machine's name in the organisation (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// First machine of an organisation: also seal the keys to a new paper key, written to FILE
    /// (print it, store it offline, delete the file).
    #[arg(long, value_name = "FILE")]
    pub paper_key_out: Option<PathBuf>,
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keepsake backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Folder to back up (default: every folder backed up before from this home).
    pub path: Option<PathBuf>,
    /// Mark this backup wedding-critical.
    #[arg(long)]
    pub critical: bool,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// `keepsake points`.
#[derive(Debug, Args)]
pub struct PointsArgs {
    /// Only this machine's points.
    #[arg(long)]
    pub mine: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keepsake ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Recovery point id, or `latest` (this machine's newest).
    #[arg(long)]
    pub point: String,
    /// Path prefix (a file, or a folder and everything under it).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

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
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

fn scrypt_override() -> Option<u8> {
    std::env::var("KEEPSAKE_SCRYPT_LOG_N")
        .ok()
        .and_then(|v| v.parse().ok())
}

pub(crate) fn cmd_enroll(home: &Path, args: EnrollArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let home = Home::new(home);
    let name = match args.name {
        Some(n) => n,
        None => hostname_or_default(),
    };
    let done = enroll::enroll(
        &home,
        &EnrollOptions {
            server_urls: args.servers,
            enroll_token: args.token,
            name,
            secrets: args.secrets.source(),
            paper_key_out: args.paper_key_out,
            scrypt_log_n: scrypt_override(),
        },
    )?;
    if args.json {
        output::json(out, &done)?;
    } else {
        writeln!(
            out,
            "enrolled in {} ({}) as agent {}",
            done.organization_name, done.organization_id, done.agent_id
        )?;
        if done.generated_keys {
            writeln!(
                out,
                "generated the organisation's keys ({}); only the sealed bundle was sent to the server",
                done.key_id
            )?;
        } else {
            writeln!(out, "unlocked the organisation's keys ({})", done.key_id)?;
        }
        if let Some(p) = &done.paper_key_file {
            writeln!(
                out,
                "paper key written to {}: print it, keep it somewhere safe, then delete the file",
                p.display()
            )?;
        }
    }
    Ok(0)
}

fn hostname_or_default() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this-machine".to_string())
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

pub(crate) fn cmd_backup(
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
    Ok(if failed > 0 { super::EXIT_PARTIAL } else { 0 })
}

/// Resolves `latest` to this machine's newest point.
fn resolve_point(
    client: &crate::client::ApiClient,
    agent: Uuid,
    point: &str,
) -> anyhow::Result<Uuid> {
    if point == "latest" {
        let points = client.points(None, Some(agent))?;
        return points
            .first()
            .map(|p| p.id)
            .context("this machine has no recovery point yet");
    }
    Uuid::parse_str(point)
        .with_context(|| format!("`{point}` is not a recovery point id (or `latest`)"))
}

pub(crate) fn cmd_points(home: &Path, args: PointsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let points = client.points(None, args.mine.then_some(cfg.agent_id))?;
    if args.json {
        output::json(out, &points)?;
        return Ok(0);
    }
    if points.is_empty() {
        writeln!(out, "no recovery points yet")?;
    }
    for p in points {
        writeln!(
            out,
            "{}  {}  {:<16} {:>8} files {:>10}  seq {:<5} {}{}",
            p.id,
            p.point_in_time.format("%Y-%m-%d %H:%M:%S"),
            p.agent_name,
            p.file_count,
            format_bytes(p.backup_size_bytes.max(0) as u64),
            p.seq,
            p.root_path,
            if p.is_wedding_critical {
                "  [critical]"
            } else {
                ""
            }
        )?;
    }
    Ok(0)
}

pub(crate) fn cmd_ls(home: &Path, args: LsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let point = resolve_point(&client, cfg.agent_id, &args.point)?;
    let mut after: Option<String> = None;
    loop {
        let (files, more) =
            client.files_page(point, &args.prefix, after.as_deref(), 1000, false)?;
        after = files.last().map(|f| f.path.clone());
        for f in &files {
            if args.json {
                output::json_line(out, f)?;
            } else {
                let kind = match f.kind {
                    FileKind::Directory => "d",
                    FileKind::Symlink => "l",
                    FileKind::File => "-",
                    FileKind::Fifo => "p",
                };
                writeln!(out, "{kind} {:>12}  {}", f.size, f.path)?;
            }
        }
        if !more {
            break;
        }
    }
    Ok(0)
}

pub(crate) fn cmd_restore(
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
        return Ok(1);
    }
    Ok(0)
}

pub(crate) fn cmd_whoami(home: &Path, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let who = client.whoami()?;
    writeln!(
        out,
        "agent {} ({}) of {} ({}) at {}",
        cfg.agent_name,
        cfg.agent_id,
        cfg.organization_name,
        who.organization_id,
        client.url()
    )?;
    Ok(0)
}
