//! Roles inside one organisation: members read but do not manage configuration, and emergency
//! contacts see emergency recovery jobs only.

use crate::schema_support::*;
use crate::world::*;
use uuid::Uuid;

#[tokio::test]
async fn members_read_but_do_not_manage_configuration() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let before = snapshot(&w, w.a).await;
    let mut t = tx(&mut app, &actor_member(&w)).await;
    for table in [
        "backup_strategies",
        "backup_destinations",
        "retention_policies",
        "backup_exclusions",
        "backup_schedules",
    ] {
        assert!(
            scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await > 0,
            "member reads {table}"
        );
        refused_or_zero(
            attempt(
                &mut t,
                &format!("UPDATE {table} SET organization_id = organization_id"),
            )
            .await,
            table,
        );
        refused_or_zero(
            attempt(&mut t, &format!("DELETE FROM {table}")).await,
            table,
        );
    }
    t.commit().await.unwrap();
    assert_eq!(snapshot(&w, w.a).await, before);
}

#[tokio::test]
async fn emergency_contacts_see_emergency_recovery_jobs_only() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let emergency_in_a = scalar_i64(
        &w.owner,
        &format!("SELECT count(*) FROM recovery_jobs WHERE organization_id = '{}' AND is_emergency_recovery", w.a),
    )
    .await;
    assert_eq!(emergency_in_a, 2);

    let t = tx(&mut app, &actor_ec(&w)).await;
    let rows = t
        .query(
            "SELECT is_emergency_recovery, organization_id FROM recovery_jobs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, emergency_in_a);
    assert!(rows
        .iter()
        .all(|r| r.get::<_, bool>(0) && r.get::<_, Uuid>(1) == w.a));
    // Logs and validations of those jobs only.
    let logs = t
        .query("SELECT j.is_emergency_recovery FROM recovery_logs l JOIN recovery_jobs j ON j.id = l.recovery_job_id", &[])
        .await
        .unwrap();
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_logs").await,
        logs.len() as i64
    );
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_logs").await,
        2
    );
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_validations").await,
        2
    );
    // What an emergency contact needs in a crisis ...
    for table in [
        "emergency_notifications",
        "emergency_contacts",
        "disaster_scenarios",
        "recovery_points",
        "organizations",
    ] {
        assert!(
            scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await > 0,
            "emergency contact cannot read {table}"
        );
    }
    // ... and nothing else.
    for table in [
        "backup_jobs",
        "backup_files",
        "backup_destinations",
        "backup_strategies",
        "api_tokens",
        "backup_audit_trail",
    ] {
        assert_eq!(
            scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "emergency contact reads {table}"
        );
    }
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM user_profiles").await,
        1,
        "only their own profile"
    );
    // The recovery-time view shows no non-emergency recovery.
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_time_analytics").await,
        0
    );
    t.rollback().await.unwrap();

    // They may start an emergency recovery, not a normal one.
    let mut t = tx(&mut app, &actor_ec(&w)).await;
    let ec = w.a1.id("ec");
    let ok = format!(
        "INSERT INTO recovery_jobs (recovery_point_id, organization_id, initiated_by, recovery_type, target_location, is_emergency_recovery, target_agent_id)
         VALUES ('{}', '{}', '{ec}', 'emergency_recovery', 'spare:/Restore', true, '{}')",
        w.a1.id("rp"), w.a, w.a2.id("agent")
    );
    assert_eq!(attempt(&mut t, &ok).await.unwrap(), 1);
    let normal = ok.replace("true, '", "false, '");
    assert_eq!(
        sqlstate(&attempt(&mut t, &normal).await.unwrap_err()),
        "42501"
    );
    t.rollback().await.unwrap();
}
