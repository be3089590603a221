//! `keepsake recover`: execute the recovery requests made for this machine (restore, validate,
//! report), or list them (`--list`).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use keepsake_common::api::RecoveryJobInfo;
use keepsake_common::keys::OrgKeys;

use super::keys::{keys_for, SecretArgs};
use super::progress::{self, Look};
use super::{output, EXIT_FAILED};
use crate::client;
use crate::client::ClientError;
use crate::home::Home;
use crate::recovery::{self, phase, ExecuteOptions, JobProgress, RecoveryOutcome};
use crate::units::format_bytes;

/// `keepsake recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Keep waiting for new recovery requests (polling) until interrupted.
    #[arg(long)]
    pub wait: bool,
    /// Only show this machine's pending recovery requests.
    #[arg(long, conflicts_with = "wait")]
    pub list: bool,
    /// Seconds between polls with `--wait`.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub poll_interval: u64,
    /// Files restored in parallel.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Passphrase or paper key.
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn job_line(j: &RecoveryJobInfo) -> String {
    format!(
        "{}  {:<22} {:<10} {}{}  -> {}{}",
        j.id,
        format!("{:?}", j.recovery_type),
        j.status,
        if j.is_emergency { "EMERGENCY " } else { "" },
        if j.path_prefixes.is_empty() {
            "everything".to_string()
        } else {
            j.path_prefixes.join(", ")
        },
        j.target_directory.as_deref().unwrap_or("?"),
        j.waiting_reason
            .as_ref()
            .map(|w| format!("  (waiting: {w})"))
            .unwrap_or_default()
    )
}

fn not_supported(e: &ClientError) -> bool {
    matches!(e.status(), Some(404) | Some(405))
}

fn cmd_list(home: &Home, args: &RecoverArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(home, None)?;
    // Users list recovery jobs; an agent may be refused (403): then the claim endpoint in its
    // "cannot decrypt" form marks this machine's jobs as waiting and shows the next one.
    let jobs: Vec<RecoveryJobInfo> = match client.recovery_jobs() {
        Ok(all) => all
            .into_iter()
            .filter(|j| j.target_agent_id == Some(cfg.agent_id))
            .filter(|j| {
                matches!(
                    j.status.as_str(),
                    "initiated" | "queued" | "claimed" | "running" | "verifying"
                )
            })
            .collect(),
        Err(e) if matches!(e.status(), Some(401) | Some(403)) => {
            recovery::claim(&client, false)?.into_iter().collect()
        }
        Err(e) if not_supported(&e) => bail!("this server does not support recovery requests"),
        Err(e) => return Err(e.into()),
    };
    if args.json {
        output::json(out, &jobs)?;
    } else if jobs.is_empty() {
        writeln!(out, "no pending recovery requests for this machine")?;
    } else {
        for j in &jobs {
            writeln!(out, "{}", job_line(j))?;
        }
    }
    Ok(0)
}

fn run_one(
    client: &crate::client::ApiClient,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    json: bool,
) -> RecoveryOutcome {
    let progress = JobProgress::default();
    let pb = progress::bar(json, &Look::RECOVERY);
    let outcome = progress::while_running(
        Duration::from_millis(150),
        || {
            let ph = progress.phase.load(Ordering::Relaxed);
            let total = progress.bytes_total.load(Ordering::Relaxed);
            pb.set_length(total);
            let (label, pos) = match ph {
                phase::PLANNING => ("checking space", 0),
                phase::RESTORING => ("restoring", progress.bytes_done()),
                _ => (
                    "verifying",
                    progress.validate.bytes.load(Ordering::Relaxed).min(total),
                ),
            };
            pb.set_position(pos);
            pb.set_message(format!(
                "{label} {} files",
                if ph >= phase::VERIFYING {
                    progress.validate.files.load(Ordering::Relaxed)
                } else {
                    progress.files_done()
                }
            ));
        },
        || recovery::execute(client, keys, job, opts, &progress),
    );
    pb.finish_and_clear();
    outcome
}

fn print_outcome(out: &mut dyn Write, o: &RecoveryOutcome) -> std::io::Result<()> {
    let target = o.target_directory.as_deref().unwrap_or("?");
    if o.succeeded() {
        writeln!(
            out,
            "recovery {} ({:?}{}): completed: {} files ({}) restored into {target} and validated",
            o.job_id,
            o.recovery_type,
            if o.is_emergency { ", emergency" } else { "" },
            o.files_recovered,
            format_bytes(o.bytes_recovered),
        )?;
    } else {
        writeln!(
            out,
            "recovery {} ({:?}{}): FAILED: {}",
            o.job_id,
            o.recovery_type,
            if o.is_emergency { ", emergency" } else { "" },
            o.error.as_deref().unwrap_or("unknown error")
        )?;
    }
    if o.files_beside > 0 {
        writeln!(
            out,
            "  {} file(s) differed from local files, which were kept; the restored copies are beside them (.restored)",
            o.files_beside
        )?;
    }
    if o.renamed_count > 0 {
        writeln!(
            out,
            "  {} path(s) restored under safe names:",
            o.renamed_count
        )?;
        for r in o.renamed.iter().take(20) {
            writeln!(out, "    {} -> {}", r.original, r.restored_as)?;
        }
    }
    for f in o.failures.iter().take(20) {
        writeln!(out, "  FAILED {}: {}", f.path, f.error)?;
    }
    if let Some(v) = &o.validation {
        writeln!(
            out,
            "  validation: {} files, {} re-read; {} mismatched, {} missing, {} extra",
            v.files_checked,
            format_bytes(v.bytes_checked),
            v.mismatches,
            v.missing,
            v.extra
        )?;
    }
    if !o.finish_reported {
        writeln!(
            out,
            "  the server did not get the result; the request will be retried"
        )?;
    }
    Ok(())
}

pub(super) fn cmd_recover(
    home_dir: &Path,
    args: RecoverArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    if args.list {
        return cmd_list(&home, &args, out);
    }
    let (_, client) = client::connect(&home, None)?;
    // Unlock first: a wrong passphrase claims nothing and writes nothing.
    let keys = keys_for(&home, &args.secrets.source())?;
    let stop = Arc::new(AtomicBool::new(false));
    if args.wait {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone())
                .context("cannot install signal handlers")?;
        }
    }
    let opts = ExecuteOptions {
        workers: args.workers.max(1),
        ..ExecuteOptions::default()
    };
    let mut outcomes: Vec<RecoveryOutcome> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let job = match recovery::claim(&client, true) {
            Ok(j) => j,
            Err(e) if not_supported(&e) => bail!("this server does not support recovery requests"),
            Err(e) if args.wait && e.is_transient() => {
                tracing::warn!(error = %e, "cannot reach the server; retrying");
                None
            }
            Err(e) => return Err(e.into()),
        };
        match job {
            Some(job) => {
                if !args.json {
                    writeln!(out, "claimed {}", job_line(&job))?;
                }
                let o = run_one(&client, &keys, &job, &opts, args.json);
                if !args.json {
                    print_outcome(out, &o)?;
                }
                outcomes.push(o);
            }
            None if args.wait => {
                let until = Instant::now() + Duration::from_secs(args.poll_interval.max(1));
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            None => break,
        }
    }
    if args.json {
        output::json(out, &outcomes)?;
    } else if outcomes.is_empty() {
        writeln!(out, "no recovery requests for this machine")?;
    }
    Ok(if outcomes.iter().all(RecoveryOutcome::succeeded) {
        0
    } else {
        EXIT_FAILED
    })
}
