//! The remaining triggers and functions: strategy deletion keeps job history, the audit trail is
//! append-only, backup dependencies refuse self-references and cycles, disaster scenarios create
//! recovery jobs for the emergency contact, and security-definer functions pin `search_path` and
//! are not executable by PUBLIC.

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

#[tokio::test]
async fn deleting_a_strategy_keeps_job_history() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "history", "north").await;
    let s = strategy(&owner, w.org.id, "old", false).await;
    let job: Uuid = owner
        .query_one(
            "INSERT INTO backup_jobs (organization_id, strategy_id, agent_id, job_type, status) VALUES ($1, $2, $3, 'full', 'queued') RETURNING id",
            &[&w.org.id, &s, &w.agent],
        )
        .await
        .unwrap()
        .get(0);
    owner
        .execute("DELETE FROM backup_strategies WHERE id = $1", &[&s])
        .await
        .unwrap();
    let strategy_id: Uuid = owner
        .query_one("SELECT strategy_id FROM backup_jobs WHERE id = $1", &[&job])
        .await
        .expect("the job survives its strategy")
        .get(0);
    assert_eq!(
        strategy_id,
        default_strategy(&owner, w.org.id).await,
        "the job moves to the organisation's default strategy"
    );
}

#[tokio::test]
async fn audit_trail_is_append_only_and_records_configuration_changes() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "audit", "north").await;
    let mut app = db.app().await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    let s: Uuid = t
        .query_one(
            "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period)
             VALUES ($1, 'audited', 'full_backup', 'daily', '90 days') RETURNING id",
            &[&w.org.id],
        )
        .await
        .unwrap()
        .get(0);
    t.execute(
        "UPDATE backup_strategies SET retention_period = '30 days' WHERE id = $1",
        &[&s],
    )
    .await
    .unwrap();
    t.execute("INSERT INTO backup_audit_trail (organization_id, action, resource_type) VALUES ($1, 'login', 'session')", &[&w.org.id])
        .await
        .unwrap();
    t.commit().await.unwrap();

    let rows = owner
        .query(
            "SELECT action, actor, user_id, old_values->>'retention_period', new_values->>'retention_period'
             FROM backup_audit_trail WHERE resource_id = $1 ORDER BY created_at, action",
            &[&s],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "insert");
    assert_eq!(rows[1].get::<_, String>(0), "update");
    assert_eq!(rows[1].get::<_, String>(1), "user");
    assert_eq!(rows[1].get::<_, Option<Uuid>>(2), Some(w.org.owner));
    assert_eq!(
        rows[1].get::<_, Option<String>>(3).as_deref(),
        Some("90 days")
    );
    assert_eq!(
        rows[1].get::<_, Option<String>>(4).as_deref(),
        Some("30 days")
    );
    // Secrets never reach the audit trail.
    let leaked = scalar_i64(&owner, "SELECT count(*) FROM backup_audit_trail WHERE new_values ? 'credentials_encrypted' OR new_values ? 'token_hash' OR new_values ? 'key_bundle'").await;
    assert_eq!(leaked, 0);

    // Nobody updates or deletes audit rows — not the system actor, not the owner connection.
    let mut t = tx(&mut app, &Actor::System { org: w.org.id }).await;
    for sql in [
        "UPDATE backup_audit_trail SET action = 'x'",
        "DELETE FROM backup_audit_trail",
    ] {
        let e = attempt(&mut t, sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    t.rollback().await.unwrap();
    for sql in [
        "UPDATE backup_audit_trail SET action = 'x'",
        "DELETE FROM backup_audit_trail",
    ] {
        let e = owner.execute(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    // A user cannot forge an entry in someone else's name.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    let e = t
        .execute(
            "INSERT INTO backup_audit_trail (organization_id, action, resource_type, actor) VALUES ($1, 'x', 'y', 'system')",
            &[&w.org.id],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();

    // Deleting an organisation goes through delete_organization (audit rows go with it).
    let deleted: bool = owner
        .query_one("SELECT delete_organization($1)", &[&w.org.id])
        .await
        .unwrap()
        .get(0);
    assert!(deleted);
    assert_eq!(
        scalar_i64(&owner, "SELECT count(*) FROM backup_audit_trail").await,
        0
    );
}

#[tokio::test]
async fn backup_dependencies_refuse_self_and_cycles() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "deps", "north").await;
    let a = strategy(&owner, w.org.id, "a", false).await;
    let b = strategy(&owner, w.org.id, "b", false).await;
    let c = strategy(&owner, w.org.id, "c", false).await;
    let dep = |x: Uuid, y: Uuid| {
        let owner = &owner;
        let org = w.org.id;
        async move {
            owner
                .execute(
                    "INSERT INTO backup_dependencies (organization_id, dependent_strategy_id, depends_on_strategy_id) VALUES ($1, $2, $3)",
                    &[&org, &x, &y],
                )
                .await
        }
    };
    dep(a, b).await.unwrap();
    dep(b, c).await.unwrap();
    assert_eq!(sqlstate(&dep(a, a).await.unwrap_err()), "23514");
    assert_eq!(
        sqlstate(&dep(c, a).await.unwrap_err()),
        "23514",
        "a -> b -> c -> a is a cycle"
    );
    assert_eq!(
        sqlstate(&dep(a, b).await.unwrap_err()),
        "23505",
        "duplicate edge"
    );
    let other = add_source(&owner, w.org.id, w.agent, "/Volumes/NAS").await;
    owner
        .execute(
            "INSERT INTO backup_dependencies (organization_id, dependent_source_id, depends_on_source_id, dependency_type)
             VALUES ($1, $2, $3, 'same_recovery_point')",
            &[&w.org.id, &w.source, &other],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn disaster_scenarios_create_recovery_jobs_for_the_emergency_contact() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "disaster", "north").await;
    let ec = add_user(&owner, w.org.id, "ec@disaster.test", "emergency_contact").await;
    let member = add_user(&owner, w.org.id, "m@disaster.test", "member").await;
    let new_laptop = add_agent(&owner, w.org.id, "replacement").await;
    let rp = recovery_point(&owner, &w, 1, "now() + interval '1 year'", false).await;
    let scenario: Uuid = owner
        .query_one(
            "INSERT INTO disaster_scenarios (organization_id, name, scenario_kind, steps, expected_rto, recovery_job_templates, responsible_roles)
             VALUES ($1, 'Laptop stolen at the venue', 'device_theft',
                     '[{\"title\": \"Revoke the laptop\"}, {\"title\": \"Restore to the replacement\"}]', '4 hours',
                     jsonb_build_array(jsonb_build_object('from_agent_id', $2::uuid, 'path_prefixes', jsonb_build_array('2025'))),
                     ARRAY['owner', 'admin', 'emergency_contact']::user_role[])
             RETURNING id",
            &[&w.org.id, &w.agent],
        )
        .await
        .unwrap()
        .get(0);
    let mut app = db.app().await;

    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: member,
        },
    )
    .await;
    let e = t
        .query(
            "SELECT start_disaster_recovery($1, $2, 'replacement:/Restore')",
            &[&scenario, &new_laptop],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "42501",
        "a member is not among the responsible roles"
    );
    t.rollback().await.unwrap();

    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: ec,
        },
    )
    .await;
    let jobs: Vec<Uuid> = t
        .query(
            "SELECT start_disaster_recovery($1, $2, 'replacement:/Restore')",
            &[&scenario, &new_laptop],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(jobs.len(), 1);
    let row = t
        .query_one(
            "SELECT recovery_point_id, is_emergency_recovery, target_agent_id, path_prefixes, initiated_by, disaster_scenario_id
             FROM recovery_jobs WHERE id = $1",
            &[&jobs[0]],
        )
        .await
        .expect("the emergency contact sees the emergency job it started");
    assert_eq!(row.get::<_, Option<Uuid>>(0), Some(rp));
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, Option<Uuid>>(2), Some(new_laptop));
    assert_eq!(row.get::<_, Vec<String>>(3), vec!["2025".to_string()]);
    assert_eq!(row.get::<_, Option<Uuid>>(4), Some(ec));
    assert_eq!(row.get::<_, Option<Uuid>>(5), Some(scenario));
    t.commit().await.unwrap();

    // The replacement machine sees and claims it.
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: new_laptop,
        },
    )
    .await;
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_jobs").await,
        1
    );
    t.rollback().await.unwrap();
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: w.agent,
        },
    )
    .await;
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM recovery_jobs").await,
        0,
        "not targeted at the stolen laptop"
    );
    t.rollback().await.unwrap();
}

#[tokio::test]
async fn security_definer_functions_pin_search_path_and_are_not_public() {
    let db = testkit::test_db().await;
    let c = db.owner().await;
    let rows = c
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(p.proconfig::text, ''),
                    has_function_privilege('public', p.oid, 'EXECUTE')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname IN ('public', 'auth') AND p.prosecdef",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.len() >= 15,
        "expected the definer functions, got {}",
        rows.len()
    );
    for r in &rows {
        let (f, cfg, public): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        assert!(
            cfg.contains("search_path=pg_catalog, pg_temp"),
            "{f} has no pinned search_path: {cfg}"
        );
        assert!(!public, "{f} is executable by PUBLIC");
    }
    // Owner-only maintenance functions are not executable by keepsake_app.
    for f in [
        "public.create_organization(text,text,text,text,jsonb)",
        "public.delete_organization(uuid)",
        "public.cleanup_expired_recovery_points_all_orgs()",
        "public.cleanup_expired_recovery_points_for_org(uuid)",
        "public.optimize_wedding_season_backups_all_orgs(date)",
        "public.optimize_wedding_season_backups_for_org(uuid,date)",
    ] {
        let can: bool = c
            .query_one(
                "SELECT has_function_privilege('keepsake_app', $1::text::regprocedure, 'EXECUTE')",
                &[&f],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!can, "keepsake_app can execute {f}");
    }
    for f in [
        "auth.resolve_token(bytea)",
        "public.cleanup_expired_recovery_points()",
        "auth.org_id()",
    ] {
        let can: bool = c
            .query_one(
                "SELECT has_function_privilege('keepsake_app', $1::text::regprocedure, 'EXECUTE')",
                &[&f],
            )
            .await
            .unwrap()
            .get(0);
        assert!(can, "keepsake_app cannot execute {f}");
    }
}
