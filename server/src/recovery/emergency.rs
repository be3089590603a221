//! Emergency pages: when an emergency recovery job is created (directly or by a disaster
//! scenario), one `emergency_notifications` row lists the organisation's active emergency
//! contacts who take critical pages, in priority order. The row is written as the system actor
//! (only the server writes these); nothing is sent from here.
//!
//! The row is inserted in the transaction that created the job, which the caller commits: a
//! crash before the commit leaves neither the job nor its page, so a page never names a job
//! that does not exist.

use keepsake_common::api::RecoveryJobInfo;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{type_to_db, Result};
use crate::db::{self, Actor};

/// Pages the emergency contacts about an emergency job: one `emergency_notifications` row
/// (written by the server, i.e. the system actor) listing the active contacts who take critical
/// pages, in priority order.
pub(super) async fn notify_emergency(
    tx: &Transaction<'_>,
    actor: &Actor,
    org: Uuid,
    job: &RecoveryJobInfo,
    target_name: &str,
) -> Result<()> {
    db::set_identity(tx, &Actor::System { org }).await?;
    let contacts: serde_json::Value = tx
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'email', email, 'phone', phone, \
                     'priority_order', priority_order, 'user_id', user_id) ORDER BY priority_order, name, id), '[]'::jsonb) \
             FROM emergency_contacts WHERE is_active AND 'critical' = ANY (notify_on)",
            &[],
        )
        .await?
        .get(0);
    let requested_by: Option<String> = match actor {
        Actor::User { user, .. } => tx
            .query_opt("SELECT email FROM auth.users WHERE id = $1", &[user])
            .await?
            .map(|r| r.get(0)),
        _ => None,
    };
    let what = if job.path_prefixes.is_empty() {
        "the whole source".to_string()
    } else {
        job.path_prefixes.join(", ")
    };
    let mut message = format!(
        "Emergency recovery {} requested by {}: restore {} onto {}:{}",
        job.id,
        requested_by
            .as_deref()
            .unwrap_or("the server administrator"),
        what,
        target_name,
        job.target_directory.as_deref().unwrap_or("")
    );
    if message.len() > 3900 {
        let mut cut = 3900;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let metadata = serde_json::json!({
        "recovery_job_id": job.id,
        "recovery_type": type_to_db(job.recovery_type),
        "recovery_point_id": job.recovery_point_id,
        "source_id": job.source_id,
        "target_agent_id": job.target_agent_id,
        "target_agent_name": target_name,
        "target_directory": job.target_directory,
        "path_prefixes": job.path_prefixes,
        "disaster_scenario_id": job.disaster_scenario_id,
        "requested_by": requested_by,
        "contacts": contacts,
    });
    tx.execute(
        "INSERT INTO emergency_notifications (organization_id, notification_type, severity, message, metadata, recovery_job_id) \
         VALUES ($1, 'emergency_recovery', 'critical', $2, $3, $4)",
        &[&org, &message, &metadata, &job.id],
    )
    .await?;
    db::set_identity(tx, actor).await?;
    Ok(())
}
