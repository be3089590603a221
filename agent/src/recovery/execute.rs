//! Running one claimed job: the steps of the module documentation (claimed, space_check,
//! restore, validate, finish), with a reporter thread posting progress meanwhile. Every problem
//! ends up in the outcome, the job's log and its finish report. A crash mid-job leaves the job
//! claimed until its lease runs out; it is then claimed again and run from the start, the
//! restore skipping files already complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keepsake_common::api::{RecoveryFinish, RecoveryJobInfo};
use keepsake_common::keys::OrgKeys;
use keepsake_common::prefix::PathPrefixes;
use uuid::Uuid;

use super::outcome::{merge, summarize_failures};
use super::report::{Journal, Reporter, AUX_RETRY};
use super::{check_space, phase, plan_restore, validate, JobProgress, RecoveryOutcome};
use crate::client::ApiClient;
use crate::restore::names::NameRules;
use crate::restore::{self, RestoreOptions, RestoreReport, BESIDE_SUFFIX};

/// Milliseconds between progress reports (default 1000); tests lower it to watch progress.
pub const PROGRESS_INTERVAL_ENV: &str = "KEEPSAKE_RECOVERY_PROGRESS_MS";
/// At most this many per-file failures are logged to the server one by one.
const MAX_FAILURES_LOGGED: usize = 50;

/// Tunables of a job's execution.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// Files restored concurrently.
    pub workers: usize,
    /// Time between progress reports.
    pub progress_interval: Duration,
    /// File-name rules of the target (default: this OS's).
    pub name_rules: NameRules,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        let ms = std::env::var(PROGRESS_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000)
            .clamp(10, 60_000);
        ExecuteOptions {
            workers: 4,
            progress_interval: Duration::from_millis(ms),
            name_rules: NameRules::native(),
        }
    }
}

/// Executes one claimed job (see the module documentation) and reports its end to the server.
/// Never fails: every problem ends up in the outcome, the job's log and its finish report.
pub fn execute(
    client: &ApiClient,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
) -> RecoveryOutcome {
    let started = Instant::now();
    let aux = client.clone_with_retry(AUX_RETRY);
    let journal = Journal::new(&aux, job.id);
    let prefixes = job_walk(&job.path_prefixes);
    let mut out = RecoveryOutcome {
        job_id: job.id,
        recovery_type: job.recovery_type,
        is_emergency: job.is_emergency,
        recovery_point_id: job.recovery_point_id,
        target_directory: job.target_directory.clone(),
        prefixes: match &prefixes {
            Ok(p) => p.clone(),
            Err(_) => job.path_prefixes.clone(),
        },
        status: "failed".into(),
        error: None,
        files_total: 0,
        bytes_total: 0,
        files_recovered: 0,
        bytes_recovered: 0,
        files_beside: 0,
        space: None,
        failures: Vec::new(),
        renamed: Vec::new(),
        renamed_count: 0,
        validation: None,
        finish_reported: false,
        elapsed_ms: 0,
    };
    // Progress about every `progress_interval` from the claim on (each report extends the
    // lease), in its own thread so that a slow or absent server never holds up the work.
    let reporter = Reporter::new(&aux, job.id, progress);
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                reporter.post();
                let until = Instant::now() + opts.progress_interval;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20).min(opts.progress_interval));
                }
            }
        });
        let r = run_job(
            client, &journal, &reporter, keys, job, opts, progress, &prefixes, &mut out,
        );
        stop.store(true, Ordering::Relaxed);
        r
    });
    progress.phase.store(phase::DONE, Ordering::Relaxed);
    let validation_passed = out.validation.as_ref().is_some_and(|v| v.passed());
    let restore_ok = result.is_ok() && out.failures.is_empty();
    let mut error = match &result {
        Err(e) => Some(e.clone()),
        Ok(()) if !out.failures.is_empty() => Some(summarize_failures(&out.failures)),
        Ok(()) => None,
    };
    if error.is_none() {
        if let Some(v) = out.validation.as_ref().filter(|v| !v.passed()) {
            error = Some(format!(
                "validation failed: {} file(s) differ from the backup, {} missing",
                v.mismatches, v.missing
            ));
        }
    }
    out.status = if restore_ok && validation_passed {
        "completed".into()
    } else {
        "failed".into()
    };
    out.error = error.clone();
    journal.log(
        "finish",
        if out.succeeded() { "info" } else { "error" },
        match &error {
            None => format!(
                "recovery completed: {} file(s), {} restored and validated",
                out.files_recovered,
                crate::units::format_bytes(out.bytes_recovered)
            ),
            Some(e) => format!("recovery failed: {e}"),
        },
        None,
    );
    let finish = RecoveryFinish {
        restore_ok,
        error,
        files_recovered: out.files_recovered,
        bytes_recovered: out.bytes_recovered,
        validation: out.validation.clone(),
    };
    match client.recovery_finish(job.id, &finish) {
        Ok(()) => out.finish_reported = true,
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "the finish report did not reach the server; the job will be claimed again when its lease runs out");
        }
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    out
}

/// The prefixes a job walks ([`PathPrefixes::walk`]), or, when the server sent prefixes that
/// break the shared rules, the job's error message.
pub(super) fn job_walk(prefixes: &[String]) -> Result<Vec<String>, String> {
    PathPrefixes::parse(prefixes)
        .map(|p| p.walk())
        .map_err(|e| format!("the job's path prefixes cannot be restored: {e}"))
}

/// The steps up to the validation; `Err` is the job's error message.
#[allow(clippy::too_many_arguments)]
fn run_job(
    client: &ApiClient,
    journal: &Journal<'_>,
    reporter: &Reporter<'_>,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
    prefixes: &Result<Vec<String>, String>,
    out: &mut RecoveryOutcome,
) -> Result<(), String> {
    let prefixes = match prefixes {
        Ok(p) => p.as_slice(),
        Err(msg) => {
            journal.log("claimed", "error", msg.clone(), None);
            return Err(msg.clone());
        }
    };
    let what = if prefixes == [String::new()] {
        "everything".to_string()
    } else {
        prefixes.join(", ")
    };
    let Some(point) = job.recovery_point_id else {
        let msg = "the server resolved no recovery point for this job".to_string();
        journal.log("claimed", "error", msg.clone(), None);
        return Err(msg);
    };
    let target_str = job.target_directory.clone().unwrap_or_default();
    let target = PathBuf::from(&target_str);
    journal.log(
        "claimed",
        if job.is_emergency { "warning" } else { "info" },
        format!(
            "{}{:?} claimed: restoring {what} of recovery point {point} into {target_str}{}",
            if job.is_emergency { "EMERGENCY " } else { "" },
            job.recovery_type,
            if job.overwrite {
                " (overwriting different local files)"
            } else {
                " (different local files are kept; restored copies go beside them)"
            },
        ),
        Some(serde_json::json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "attempt": job.attempts,
        })),
    );
    if target_str.is_empty() || !target.is_absolute() {
        let msg = format!("the target folder {target_str:?} is not an absolute path");
        journal.log("claimed", "error", msg.clone(), None);
        return Err(msg);
    }

    // Space, before anything is written.
    let plan = plan_restore(client, point, prefixes, &target, opts.name_rules).map_err(|e| {
        let msg = format!("cannot list the recovery point: {e}");
        journal.log("space_check", "error", msg.clone(), None);
        msg
    })?;
    progress.files_total.store(plan.files, Ordering::Relaxed);
    progress.bytes_total.store(plan.bytes, Ordering::Relaxed);
    out.files_total = plan.files;
    out.bytes_total = plan.bytes;
    if plan.files == 0 && plan.dirs == 0 {
        let msg = format!("the recovery point has nothing under {what}");
        journal.log("space_check", "error", msg.clone(), None);
        return Err(msg);
    }
    let space = check_space(&target, plan.bytes_needed).map_err(|e| {
        let msg = format!("cannot measure the free space for {target_str}: {e}");
        journal.log("space_check", "error", msg.clone(), None);
        msg
    })?;
    let details = serde_json::to_value(&space).ok();
    out.space = Some(space.clone());
    if !space.ok {
        let msg = format!(
            "not enough free space for {target_str}: {} needed (plus {} headroom), {} free; nothing was written",
            crate::units::format_bytes(space.needed),
            crate::units::format_bytes(space.margin),
            crate::units::format_bytes(space.free)
        );
        journal.log("space_check", "error", msg.clone(), details);
        return Err(msg);
    }
    journal.log(
        "space_check",
        "info",
        format!(
            "{} file(s), {} to restore ({} still to write); {} free",
            plan.files,
            crate::units::format_bytes(plan.bytes),
            crate::units::format_bytes(space.needed),
            crate::units::format_bytes(space.free)
        ),
        details,
    );

    // Restore, then validate.
    reporter.enter(phase::RESTORING);
    let mut total = RestoreReport::default();
    let outcome = restore_all(
        client, keys, job, opts, progress, prefixes, point, &target, journal, &mut total,
    )
    .and_then(|()| {
        // The restore's last report, then the validation.
        reporter.post();
        reporter.enter(phase::VERIFYING);
        reporter.post();
        journal.log(
            "validate",
            "info",
            "re-reading every restored file and comparing it with the backup".into(),
            None,
        );
        validate(
            client,
            &keys.chunk_id_key,
            point,
            prefixes,
            &target,
            opts.name_rules,
            &progress.validate,
        )
        .map_err(|e| {
            let msg = format!("validation could not run: {e}");
            journal.log("validate", "error", msg.clone(), None);
            msg
        })
    });
    out.files_recovered = total.files_restored + total.files_skipped + total.symlinks + total.fifos;
    out.bytes_recovered = total.bytes + total.bytes_skipped;
    out.files_beside = total.files_beside;
    out.renamed = total.renamed.clone();
    out.renamed_count = total.renamed_count;
    out.failures = total.failures.iter().take(500).cloned().collect();
    let v = outcome?;
    let level = if v.passed() { "info" } else { "error" };
    journal.log(
        "validate",
        level,
        format!(
            "{}: {} file(s), {} re-read; {} mismatched, {} missing, {} extra",
            if v.passed() {
                "validation passed"
            } else {
                "validation FAILED"
            },
            v.files_checked,
            crate::units::format_bytes(v.bytes_checked),
            v.mismatches,
            v.missing,
            v.extra
        ),
        v.details.clone(),
    );
    out.validation = Some(v);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restore_all(
    client: &ApiClient,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
    prefixes: &[String],
    point: Uuid,
    target: &Path,
    journal: &Journal<'_>,
    total: &mut RestoreReport,
) -> Result<(), String> {
    for prefix in prefixes {
        let mut ro = RestoreOptions::new(point, target);
        ro.prefix = prefix.clone();
        ro.overwrite = job.overwrite;
        ro.workers = opts.workers.max(1);
        ro.name_rules = opts.name_rules;
        journal.log(
            "restore",
            "info",
            format!(
                "restoring {}",
                if prefix.is_empty() {
                    "everything"
                } else {
                    prefix
                }
            ),
            None,
        );
        let r = restore::restore(client, keys, &ro, &progress.restore).map_err(|e| {
            let msg = format!("restore failed: {e}");
            journal.log("restore", "error", msg.clone(), None);
            msg
        })?;
        for (i, f) in r.failures.iter().enumerate() {
            if i == MAX_FAILURES_LOGGED {
                journal.log(
                    "restore",
                    "error",
                    format!(
                        "... and {} more file(s) could not be restored",
                        r.failures.len() - MAX_FAILURES_LOGGED
                    ),
                    None,
                );
                break;
            }
            journal.log(
                "restore",
                "error",
                format!("{}: {}", f.path, f.error),
                Some(serde_json::json!({"path": f.path})),
            );
        }
        if r.renamed_count > 0 {
            journal.log(
                "restore",
                "warning",
                format!(
                    "{} path(s) have names this system cannot hold and were restored under safe names",
                    r.renamed_count
                ),
                serde_json::to_value(&r.renamed).ok(),
            );
        }
        if r.files_beside > 0 {
            journal.log(
                "restore",
                "warning",
                format!(
                    "{} file(s) differed from existing local files, which were kept; the restored copies are beside them ({BESIDE_SUFFIX})",
                    r.files_beside
                ),
                None,
            );
        }
        journal.log(
            "restore",
            if r.failures.is_empty() { "info" } else { "error" },
            format!(
                "{}: {} file(s) written ({}), {} already complete, {} folder(s), {} link(s), {} failed, in {:.1} s",
                if prefix.is_empty() { "everything" } else { prefix },
                r.files_restored,
                crate::units::format_bytes(r.bytes),
                r.files_skipped,
                r.dirs,
                r.symlinks,
                r.failures.len(),
                r.elapsed.as_secs_f64()
            ),
            None,
        );
        merge(total, r);
    }
    Ok(())
}
