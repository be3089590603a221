//! The triggers that keep derived state: `update_destination_usage` (stored bytes counted exactly
//! once per destination) and `backup_failure_alert` (one alert per failed wedding-critical job, in
//! the job's organisation).

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

async fn usage(owner: &tokio_postgres::Client, destination: Uuid) -> i64 {
    owner
        .query_one(
            "SELECT current_usage FROM backup_destinations WHERE id = $1",
            &[&destination],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn destination_usage_counts_stored_bytes_exactly_once() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "usage", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

    // The agent runs a job; logical bytes 10 000, stored (new, after dedup) 1 200.
    let t = tx(&mut app, &agent).await;
    let job: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, destination_id, job_type, status, started_at)
             VALUES ($1, $2, $3, $4, 'incremental', 'running', now()) RETURNING id",
            &[&w.org.id, &w.agent, &w.source, &w.destination],
        )
        .await
        .unwrap()
        .get(0);
    t.commit().await.unwrap();
    assert_eq!(
        usage(&owner, w.destination).await,
        0,
        "nothing counted while running"
    );

    let t = tx(&mut app, &agent).await;
    let n = t
        .execute(
            "UPDATE backup_jobs SET status = 'completed', completed_at = now(), bytes_processed = 10000, bytes_new = 1200
             WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    t.commit().await.unwrap();
    assert_eq!(
        usage(&owner, w.destination).await,
        1200,
        "stored bytes, credited although agents cannot write destinations"
    );

    // Updated twice more after completing (checksum flag, success rate): still counted once.
    owner
        .execute(
            "UPDATE backup_jobs SET checksum_verification_passed = true WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    owner
        .execute(
            "UPDATE backup_jobs SET success_rate = 100 WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1200);

    // completed -> running -> completed (a re-run): no double count.
    owner
        .execute(
            "UPDATE backup_jobs SET status = 'running' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    owner
        .execute(
            "UPDATE backup_jobs SET status = 'completed' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1200);

    // A caller cannot reset the bookkeeping to get counted again.
    owner
        .execute(
            "UPDATE backup_jobs SET usage_counted_bytes = NULL, status = 'completed' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1200);

    // A correction of the stored bytes adjusts by the difference.
    owner
        .execute(
            "UPDATE backup_jobs SET bytes_new = 1000 WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1000);

    // Once counted, the job cannot move to another destination.
    let other = add_destination(&owner, w.org.id, "usage-cloud").await;
    let e = owner
        .execute(
            "UPDATE backup_jobs SET destination_id = $2 WHERE id = $1",
            &[&job, &other],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23000", "{}", describe(&e));

    // A job inserted already completed is counted (the seed's AFTER UPDATE trigger missed it).
    owner
        .execute(
            "INSERT INTO backup_jobs (organization_id, agent_id, destination_id, job_type, status, bytes_processed, bytes_new, usage_counted_bytes)
             VALUES ($1, $2, $3, 'full', 'completed', 5000, 300, 999999)",
            &[&w.org.id, &w.agent, &w.destination],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1300);

    // Failed and cancelled jobs add nothing.
    owner
        .execute(
            "INSERT INTO backup_jobs (organization_id, agent_id, destination_id, job_type, status, bytes_new)
             VALUES ($1, $2, $3, 'full', 'failed', 777)",
            &[&w.org.id, &w.agent, &w.destination],
        )
        .await
        .unwrap();
    assert_eq!(usage(&owner, w.destination).await, 1300);
}

#[tokio::test]
async fn wedding_critical_failure_alerts_exactly_once_with_the_jobs_organization() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "alerts", "north").await;
    let other = world(&owner, "alerts-other", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

    // A wedding-critical job WITHOUT a strategy (the seed took the organisation from the strategy).
    let t = tx(&mut app, &agent).await;
    let job: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status, wedding_critical_priority)
             VALUES ($1, $2, $3, 'incremental', 'running', true) RETURNING id",
            &[&w.org.id, &w.agent, &w.source],
        )
        .await
        .unwrap()
        .get(0);
    let n = t
        .execute(
            "UPDATE backup_jobs SET status = 'failed', completed_at = now(), error_message = 'disk full' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    t.commit().await.unwrap();

    // Updated again while failed (by the server adding details): no second page.
    owner
        .execute(
            "UPDATE backup_jobs SET error_message = 'disk full (retry 1)' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    owner
        .execute(
            "UPDATE backup_jobs SET files_failed = 3 WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    // Retried and failed again: still one page for this job.
    owner
        .execute(
            "UPDATE backup_jobs SET status = 'running' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    owner
        .execute(
            "UPDATE backup_jobs SET status = 'failed' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();

    let rows = owner
        .query(
            "SELECT organization_id, severity::text, notification_type, message, metadata->>'backup_job_id'
             FROM emergency_notifications WHERE backup_job_id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one emergency notification");
    assert_eq!(
        rows[0].get::<_, Uuid>(0),
        w.org.id,
        "carries the job's organisation"
    );
    assert_eq!(rows[0].get::<_, String>(1), "critical");
    assert_eq!(rows[0].get::<_, String>(2), "backup_failure");
    assert_eq!(
        rows[0].get::<_, String>(3),
        "Wedding-critical backup failed: disk full"
    );
    assert_eq!(rows[0].get::<_, String>(4), job.to_string());

    // A job inserted already failed alerts too; a non-critical failure does not.
    owner
        .execute(
            "INSERT INTO backup_jobs (organization_id, agent_id, job_type, status, wedding_critical_priority)
             VALUES ($1, $2, 'full', 'failed', true), ($1, $2, 'full', 'failed', false)",
            &[&other.org.id, &other.agent],
        )
        .await
        .unwrap();
    let per_org: Vec<(Uuid, i64)> = owner
        .query(
            "SELECT organization_id, count(*) FROM emergency_notifications GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = vec![(w.org.id, 1), (other.org.id, 1)];
    expected.sort();
    assert_eq!(per_org, expected);

    // The emergency contact of the organisation sees the page; the other organisation's does not.
    let ec = add_user(&owner, w.org.id, "ec@alerts.test", "emergency_contact").await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: ec,
        },
    )
    .await;
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM emergency_notifications").await,
        1
    );
    t.rollback().await.unwrap();
}
