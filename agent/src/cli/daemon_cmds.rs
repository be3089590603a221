//! `keepsake run` (the daemon) and `keepsake status` (what is safe, what is waiting).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::output;
use crate::catalog::FileState;
use crate::daemon::{self, Daemon, DaemonOptions};
use crate::home::Home;
use crate::relpath::RelPath;
use crate::units::format_bytes;

/// `keepsake run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folders to watch and back up (added to those backed up before from this home).
    pub paths: Vec<PathBuf>,
    /// Seconds a file must stay unchanged before it is taken (the organisation's vendor
    /// setting wins when set on the server; `KEEPSAKE_SETTLE_SECS` forces this value).
    #[arg(long, env = "KEEPSAKE_SETTLE_SECS", default_value_t = 5)]
    pub settle: u64,
    /// Full rescan interval in seconds (notifications can be lost).
    #[arg(long, default_value_t = 900)]
    pub rescan_interval: u64,
    /// Seconds between policy refreshes from the server.
    #[arg(long, default_value_t = 60)]
    pub policy_interval: u64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_interval: u64,
    /// Do not use filesystem notifications (network shares): periodic scans only.
    #[arg(long)]
    pub no_watch: bool,
    /// Upload limit in kbit/s (else the organisation's setting).
    #[arg(long)]
    pub bandwidth_kbps: Option<u32>,
    /// Seconds between restore drills (only when the organisation lets this machine keep the
    /// key: `keepsake unlock --remember`); 0 turns them off.
    #[arg(long, default_value_t = 86_400)]
    pub drill_interval: u64,
    /// Write logs to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Exclusion rules (with the organisation's rules and the home's `exclude` file).
    #[command(flatten)]
    pub rules: super::rules::RuleArgs,
}

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

pub(crate) fn cmd_run(home: &Path, args: RunArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let opts = DaemonOptions {
        settle: Duration::from_secs(args.settle),
        rescan_interval: Duration::from_secs(args.rescan_interval.max(1)),
        policy_interval: Duration::from_secs(args.policy_interval.max(1)),
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval.max(1)),
        watch: !args.no_watch,
        bandwidth_kbps: args.bandwidth_kbps,
        drill_interval: (args.drill_interval > 0).then(|| Duration::from_secs(args.drill_interval)),
        rules: args.rules.local(),
        ..DaemonOptions::default()
    };
    let mut d = Daemon::new(Home::new(home), args.paths, opts, stop)?;
    d.run()?;
    writeln!(out, "keepsake daemon stopped")?;
    Ok(0)
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

pub(crate) fn cmd_status(
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
        return Ok(if r.safe_to_format { 0 } else { 4 });
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
