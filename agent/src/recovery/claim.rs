//! Asking the server for work: [`claim`] takes the next job for this machine under a lease, and
//! [`daemon_tick`] is the daemon's loop over claim-and-execute on each policy refresh. A claim
//! that is not followed by progress reports (the process died) expires after the lease, and the
//! job is handed out again by the next claim.

use std::sync::atomic::{AtomicBool, Ordering};

use keepsake_common::api::{AgentPolicy, ClaimRecoveryRequest, RecoveryJobInfo};

use super::{execute, ExecuteOptions, JobProgress, RecoveryOutcome};
use crate::client::{ApiClient, ClientError};
use crate::home::Home;

/// How long a claim holds without a progress report.
pub const DEFAULT_LEASE_SECONDS: u32 = 300;

/// Claims the next job for this machine (`None`: nothing to do).
pub fn claim(
    client: &ApiClient,
    can_decrypt: bool,
) -> Result<Option<RecoveryJobInfo>, ClientError> {
    client.claim_recovery(&ClaimRecoveryRequest {
        can_decrypt,
        lease_seconds: DEFAULT_LEASE_SECONDS,
    })
}

/// The daemon's part, on each policy refresh: with an unsealed key kept in the home *and* the
/// organisation's `agents_keep_unsealed_key`, claim and execute every job for this machine
/// (the server hands out emergency jobs first), until none is left or `stop` is set; otherwise
/// only tell the server that jobs wait for the key to be unlocked here (`can_decrypt: false`).
/// Returns the outcomes of the jobs executed.
pub fn daemon_tick(
    home: &Home,
    client: &ApiClient,
    policy: &AgentPolicy,
    stop: &AtomicBool,
) -> Vec<RecoveryOutcome> {
    let keys = if policy.agents_keep_unsealed_key {
        match home.stored_secret_keys() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kept key; recovery requests wait");
                None
            }
        }
    } else {
        None
    };
    let Some(keys) = keys else {
        if let Err(e) = claim(client, false) {
            tracing::debug!(error = %e, "recovery requests not checked");
        }
        return Vec::new();
    };
    let mut done = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match claim(client, true) {
            Ok(Some(job)) => {
                tracing::info!(job = %job.id, emergency = job.is_emergency, "executing a recovery request");
                let out = execute(
                    client,
                    &keys,
                    &job,
                    &ExecuteOptions::default(),
                    &JobProgress::default(),
                );
                tracing::info!(job = %job.id, status = %out.status, error = ?out.error, "recovery request finished");
                let reported = out.finish_reported;
                done.push(out);
                if !reported {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "recovery requests not checked");
                break;
            }
        }
    }
    done
}
