//! The PostgreSQL schema against a real database: migrations, the seed's objects, and the
//! behaviour of every function and trigger — including the cases where the seed's versions
//! misbehaved.

mod schema_support;

use keepsake_server::db::migrate;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use schema_support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Migrations and catalog
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_reapply_is_a_no_op() {
    let db = testkit::empty_db().await;
    let mut owner = db.owner().await;
    let applied = migrate::apply(&mut owner).await.expect("first apply");
    let all: Vec<String> = migrate::MIGRATIONS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(applied, all, "every migration applies, in order");
    assert!(all.len() >= 7);
    for name in &all {
        let (num, rest) = name.split_once('_').expect("NNNN_name.sql");
        assert_eq!(num.len(), 4, "{name}");
        assert!(num.chars().all(|c| c.is_ascii_digit()), "{name}");
        assert!(
            rest.ends_with(".sql")
                && rest
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.'),
            "{name}"
        );
    }
    let again = migrate::apply(&mut owner).await.expect("second apply");
    assert!(
        again.is_empty(),
        "second apply is a no-op, applied {again:?}"
    );
    let st = migrate::status(&owner).await.unwrap();
    assert!(st.is_current());
    // Role creation is idempotent: a second database in the same cluster migrates too.
    let db2 = testkit::empty_db().await;
    let mut owner2 = db2.owner().await;
    assert_eq!(
        migrate::apply(&mut owner2)
            .await
            .expect("apply in a second database")
            .len(),
        all.len()
    );
}

#[tokio::test]
async fn migrations_contain_no_transaction_control_or_concurrent_index() {
    for (name, sql) in migrate::MIGRATIONS {
        // Code only: drop `--` comments.
        let code: String = sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let upper = code.to_uppercase();
        for bad in [
            "CONCURRENTLY",
            "\nBEGIN;",
            "\nCOMMIT;",
            "CREATE DATABASE",
            "ROLLBACK;",
            "\nBEGIN TRANSACTION",
            "\nSTART TRANSACTION",
        ] {
            assert!(!upper.contains(bad), "{name} contains {bad:?}");
        }
    }
}

/// Tables the seed names in its requirement lists (25) or defines in SQL (8 more), plus the
/// tables it uses without defining and the engine's identity tables.
const SEED_TABLES: &[&str] = &[
    // configuration
    "backup_strategies",
    "backup_schedules",
    "backup_destinations",
    "retention_policies",
    "backup_exclusions",
    // operations
    "backup_jobs",
    "backup_files",
    "backup_manifests",
    "backup_checksums",
    "backup_logs",
    // recovery
    "recovery_points",
    "recovery_jobs",
    "recovery_validations",
    "recovery_logs",
    "disaster_scenarios",
    // monitoring
    "backup_metrics",
    "storage_usage",
    "alert_configurations",
    "compliance_reports",
    "emergency_contacts",
    // integration
    "backup_integrations",
    "vendor_backup_configs",
    "wedding_critical_data",
    "backup_dependencies",
    "failover_configurations",
    // defined in the seed's SQL
    "storage_analytics",
    "backup_compliance_logs",
    "cloud_backup_integrations",
    "monitoring_integrations",
    "backup_encryption_keys",
    "backup_audit_trail",
    "backup_service_apis",
    "wedding_platform_integrations",
];
const EXTRA_TABLES: &[&str] = &[
    "organizations",
    "user_profiles",
    "agents",
    "backup_sources",
    "api_tokens",
    "emergency_notifications",
];

#[tokio::test]
async fn every_object_the_seed_names_exists() {
    let db = testkit::test_db().await;
    let c = db.owner().await;
    assert_eq!(SEED_TABLES.len(), 33);

    let has = |sql: &'static str| {
        let c = &c;
        move |name: String| async move { c.query_one(sql, &[&name]).await.unwrap().get::<_, bool>(0) }
    };
    let table = has("SELECT to_regclass('public.' || $1) IS NOT NULL");
    for t in SEED_TABLES.iter().chain(EXTRA_TABLES) {
        assert!(table(t.to_string()).await, "table {t} is missing");
    }
    assert!(
        c.query_one("SELECT to_regclass('auth.users') IS NOT NULL", &[])
            .await
            .unwrap()
            .get::<_, bool>(0),
        "auth.users is missing"
    );

    let enum_exists = has(
        "SELECT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                           WHERE n.nspname = 'public' AND t.typname = $1 AND t.typtype = 'e')",
    );
    for e in [
        "backup_strategy_type",
        "backup_frequency_type",
        "backup_destination_type",
        "backup_job_status",
        "recovery_type_enum",
        "health_status_type",
        "compliance_type_enum",
        "compliance_status_enum",
        // used by the seed without a definition
        "backup_job_type",
        "recovery_job_status",
        // identity
        "user_role",
        "token_kind",
    ] {
        assert!(enum_exists(e.to_string()).await, "enum {e} is missing");
    }
    // The seed's enum values are all there.
    let labels: Vec<String> = c
        .query("SELECT enumlabel::text FROM pg_enum WHERE enumtypid = 'backup_job_status'::regtype ORDER BY enumsortorder", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        labels,
        [
            "queued",
            "running",
            "completed",
            "failed",
            "cancelled",
            "paused",
            "verifying"
        ]
    );

    let view =
        has("SELECT EXISTS (SELECT 1 FROM pg_views WHERE schemaname = 'public' AND viewname = $1)");
    for v in [
        "backup_success_analytics",
        "recovery_time_analytics",
        "storage_cost_analysis",
    ] {
        assert!(view(v.to_string()).await, "view {v} is missing");
    }

    let function = has(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                        WHERE n.nspname || '.' || p.proname = $1)",
    );
    for f in [
        "public.cleanup_expired_recovery_points",
        "public.optimize_wedding_season_backups",
        "public.update_destination_usage",
        "public.backup_failure_alert",
        "auth.uid",
        "auth.org_id",
        "auth.org_role",
        "auth.actor",
        "auth.agent_id",
        "auth.resolve_token",
        "public.create_organization",
        "public.is_valid_cron",
        "public.is_valid_timezone",
        "public.backup_files_at",
    ] {
        assert!(function(f.to_string()).await, "function {f} is missing");
    }

    let trigger = has(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal AND tgname = $1 \
                       AND tgrelid = 'public.backup_jobs'::regclass)",
    );
    for t in [
        "backup_job_completion_trigger",
        "backup_failure_alert_trigger",
    ] {
        assert!(trigger(t.to_string()).await, "trigger {t} is missing");
    }

    let index = has(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'public' AND indexname = $1)",
    );
    for i in [
        "idx_backup_jobs_status_date",
        "idx_backup_jobs_organization_wedding",
        "idx_recovery_points_retention",
        "idx_storage_analytics_org_date",
        "idx_backup_files_checksum",
        "idx_backup_strategy_active_priority",
        "idx_backup_jobs_manifest",
        "backup_files_one_live_version",
    ] {
        assert!(index(i.to_string()).await, "index {i} is missing");
    }
    // idx_backup_files_checksum is on the table it names.
    let on: String = c
        .query_one(
            "SELECT tablename::text FROM pg_indexes WHERE indexname = 'idx_backup_files_checksum'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on, "backup_files");

    let policy = has("SELECT EXISTS (SELECT 1 FROM pg_policies WHERE policyname = $1)");
    for p in [
        "Users can access their organization's backup strategies",
        "Users can access their organization's backup destinations",
        "Emergency recovery access",
    ] {
        assert!(policy(p.to_string()).await, "policy {p:?} is missing");
    }
}

#[tokio::test]
async fn every_tenant_table_has_organization_id_not_null_and_an_index_leading_by_it() {
    let db = testkit::test_db().await;
    let c = db.owner().await;
    for t in SEED_TABLES
        .iter()
        .chain(EXTRA_TABLES)
        .filter(|t| **t != "organizations")
    {
        let row = c
            .query_one(
                "SELECT a.attnotnull,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum)
                 FROM pg_attribute a WHERE a.attrelid = to_regclass('public.' || $1) AND a.attname = 'organization_id'",
                &[&t.to_string()],
            )
            .await
            .unwrap_or_else(|e| panic!("{t} has no organization_id: {}", describe(&e)));
        assert!(
            row.get::<_, bool>(0),
            "{t}.organization_id must be NOT NULL"
        );
        assert!(
            row.get::<_, bool>(1),
            "{t} has no index leading by organization_id"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures for behaviour tests
// ---------------------------------------------------------------------------------------------

struct World {
    org: Org,
    agent: Uuid,
    source: Uuid,
    destination: Uuid,
}

async fn world(owner: &tokio_postgres::Client, slug: &str, hemisphere: &str) -> World {
    let org = create_org(owner, slug, hemisphere).await;
    let agent = add_agent(owner, org.id, &format!("{slug}-laptop")).await;
    let source = add_source(owner, org.id, agent, "/Users/me/Shoots").await;
    let destination = add_destination(owner, org.id, &format!("{slug}-local")).await;
    World {
        org,
        agent,
        source,
        destination,
    }
}

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

// ---------------------------------------------------------------------------------------------
// update_destination_usage
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// backup_failure_alert
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// cleanup_expired_recovery_points
// ---------------------------------------------------------------------------------------------

async fn recovery_point(
    owner: &tokio_postgres::Client,
    w: &World,
    seq: i64,
    expires: &str,
    legal_hold: bool,
) -> Uuid {
    owner
        .query_one(
            &format!(
                "INSERT INTO recovery_points (organization_id, agent_id, source_id, seq, point_in_time, recovery_type,
                     backup_size_bytes, file_count, retention_expires_at, legal_hold)
                 VALUES ($1, $2, $3, $4, now() - interval '400 days', 'full_recovery', 10, 1, {expires}, $5) RETURNING id"
            ),
            &[&w.org.id, &w.agent, &w.source, &seq, &legal_hold],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn cleanup_keeps_referenced_and_held_points_and_logs_per_organisation() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let mut worlds = Vec::new();
    for slug in ["clean-a", "clean-b"] {
        let w = world(&owner, slug, "north").await;
        let expired = recovery_point(&owner, &w, 1, "now() - interval '1 day'", false).await;
        let referenced = recovery_point(&owner, &w, 2, "now() - interval '1 day'", false).await;
        let held = recovery_point(&owner, &w, 3, "now() - interval '1 day'", true).await;
        let live = recovery_point(&owner, &w, 4, "now() + interval '1 day'", false).await;
        owner
            .execute(
                "INSERT INTO recovery_jobs (recovery_point_id, organization_id, initiated_by, recovery_type, target_location, status)
                 VALUES ($1, $2, $3, 'full_recovery', '/restore', 'completed')",
                &[&referenced, &w.org.id, &w.org.owner],
            )
            .await
            .unwrap_err(); // completed requires completed_at
        owner
            .execute(
                "INSERT INTO recovery_jobs (recovery_point_id, organization_id, initiated_by, recovery_type, target_location, status, completed_at)
                 VALUES ($1, $2, $3, 'full_recovery', '/restore', 'completed', now())",
                &[&referenced, &w.org.id, &w.org.owner],
            )
            .await
            .unwrap();
        worlds.push((w, expired, referenced, held, live));
    }

    // Scoped entry point: the system actor of org A cleans org A only.
    let (wa, ..) = &worlds[0];
    let mut app = db.app().await;
    let t = tx(&mut app, &Actor::System { org: wa.org.id }).await;
    let n: i32 = t
        .query_one("SELECT cleanup_expired_recovery_points()", &[])
        .await
        .unwrap()
        .get(0);
    t.commit().await.unwrap();
    assert_eq!(n, 1);
    let remaining_b = scalar_i64(
        &owner,
        &format!(
            "SELECT count(*) FROM recovery_points WHERE organization_id = '{}'",
            worlds[1].0.org.id
        ),
    )
    .await;
    assert_eq!(remaining_b, 4, "org B untouched by org A's cleanup");

    // Cross-organisation maintenance (owner only) handles the rest.
    let n: i32 = owner
        .query_one("SELECT cleanup_expired_recovery_points_all_orgs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "only org B's unreferenced expired point is left to delete"
    );

    for (w, expired, referenced, held, live) in &worlds {
        let exists = |id: Uuid| {
            let owner = &owner;
            async move {
                owner
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM recovery_points WHERE id = $1)",
                        &[&id],
                    )
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            }
        };
        assert!(!exists(*expired).await, "expired point deleted");
        assert!(
            exists(*referenced).await,
            "point referenced by a recovery job kept"
        );
        assert!(exists(*held).await, "point under legal hold kept");
        assert!(exists(*live).await, "unexpired point kept");
        let logs = owner
            .query(
                "SELECT message, details FROM backup_logs WHERE organization_id = $1 AND component = 'retention' ORDER BY id",
                &[&w.org.id],
            )
            .await
            .unwrap();
        assert!(!logs.is_empty(), "a log row for each organisation");
        let first: String = logs[0].get(0);
        assert_eq!(first, "Cleaned up 1 expired recovery points");
        let details: serde_json::Value = logs[0].get(1);
        assert_eq!(details["kept_referenced_by_recovery_jobs"], 1);
        assert_eq!(details["kept_legal_hold"], 1);
    }
    assert_eq!(
        scalar_i64(
            &owner,
            "SELECT count(*) FROM backup_logs WHERE organization_id IS NULL"
        )
        .await,
        0
    );

    // Who may call it: system or admin/owner; not a member, not an agent, not without identity.
    let (wa, ..) = &worlds[0];
    let member = add_user(&owner, wa.org.id, "member@clean-a.test", "member").await;
    for (actor, ok) in [
        (
            Actor::User {
                org: wa.org.id,
                user: wa.org.owner,
            },
            true,
        ),
        (
            Actor::User {
                org: wa.org.id,
                user: member,
            },
            false,
        ),
        (
            Actor::Agent {
                org: wa.org.id,
                agent: wa.agent,
            },
            false,
        ),
        (Actor::Anonymous, false),
    ] {
        let t = tx(&mut app, &actor).await;
        let r = t
            .query_one("SELECT cleanup_expired_recovery_points()", &[])
            .await;
        assert_eq!(
            r.is_ok(),
            ok,
            "{actor:?}: {:?}",
            r.err().map(|e| describe(&e))
        );
        if let Err(e) = r {
            assert_eq!(sqlstate(&e), "42501");
        }
        t.rollback().await.unwrap();
    }
    // The cross-organisation variant is not executable by the application role.
    let t = tx(&mut app, &Actor::System { org: wa.org.id }).await;
    let e = t
        .query_one("SELECT cleanup_expired_recovery_points_all_orgs()", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// optimize_wedding_season_backups
// ---------------------------------------------------------------------------------------------

async fn strategy(owner: &tokio_postgres::Client, org: Uuid, name: &str, optimized: bool) -> Uuid {
    owner
        .query_one(
            "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period, wedding_season_optimized)
             VALUES ($1, $2, 'incremental_backup', 'monthly', '1 year', $3) RETURNING id",
            &[&org, &name, &optimized],
        )
        .await
        .unwrap()
        .get(0)
}

async fn frequency(owner: &tokio_postgres::Client, id: Uuid) -> String {
    owner
        .query_one(
            "SELECT backup_frequency::text FROM backup_strategies WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn wedding_season_optimisation_respects_hemisphere_and_touches_only_the_calling_org() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let north = world(&owner, "north", "north").await;
    let south = world(&owner, "south", "south").await;
    let n_opt = strategy(&owner, north.org.id, "season", true).await;
    let n_plain = strategy(&owner, north.org.id, "plain", false).await;
    let s_opt = strategy(&owner, south.org.id, "season", true).await;

    // Wedding-critical data of the north studio: the Smith wedding on 2025-07-12, folder pattern.
    owner
        .execute(
            "INSERT INTO wedding_critical_data (organization_id, wedding_name, wedding_date, path_patterns, agent_id, source_id)
             VALUES ($1, 'Smith', DATE '2025-07-12', ARRAY['2025/2025-07-12 Smith/**'], $2, $3)",
            &[&north.org.id, &north.agent, &north.source],
        )
        .await
        .unwrap();
    let other_source = add_source(&owner, north.org.id, north.agent, "/Volumes/Archive").await;
    let mk_job = |org: Uuid, agent: Uuid, source: Uuid, status: &'static str| {
        let owner = &owner;
        async move {
            owner
                .query_one(
                    &format!(
                        "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status)
                         VALUES ($1, $2, $3, 'incremental', '{status}') RETURNING id"
                    ),
                    &[&org, &agent, &source],
                )
                .await
                .unwrap()
                .get::<_, Uuid>(0)
        }
    };
    let queued = mk_job(north.org.id, north.agent, north.source, "queued").await;
    let running = mk_job(north.org.id, north.agent, north.source, "running").await;
    let failed = mk_job(north.org.id, north.agent, north.source, "failed").await;
    let unrelated = mk_job(north.org.id, north.agent, other_source, "running").await;
    let south_job = mk_job(south.org.id, south.agent, south.source, "running").await;

    // July: northern wedding season. The north studio's admin runs the optimisation.
    let mut app = db.app().await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: north.org.id,
            user: north.org.owner,
        },
    )
    .await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2025-07-14')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, n_opt).await,
        "daily",
        "north, July: in season"
    );
    assert_eq!(
        frequency(&owner, n_plain).await,
        "monthly",
        "not optimised: untouched"
    );
    assert_eq!(
        frequency(&owner, s_opt).await,
        "monthly",
        "another organisation: untouched"
    );

    let flagged = |id: Uuid| {
        let owner = &owner;
        async move {
            owner
                .query_one(
                    "SELECT wedding_critical_priority FROM backup_jobs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    assert!(
        flagged(queued).await && flagged(running).await,
        "in-flight jobs of the wedding's source flagged"
    );
    assert!(!flagged(failed).await, "finished jobs are never rewritten");
    assert!(
        !flagged(unrelated).await,
        "a source without wedding-critical data is not flagged"
    );
    assert!(
        !flagged(south_job).await,
        "another organisation's jobs are not flagged"
    );
    assert_eq!(
        scalar_i64(&owner, "SELECT count(*) FROM emergency_notifications").await,
        0,
        "flagging does not re-fire failure alerts"
    );
    let status: String = owner
        .query_one(
            "SELECT status::text FROM wedding_critical_data WHERE organization_id = $1",
            &[&north.org.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "active");

    // July is off-season in the southern hemisphere; January is in season there.
    let t = tx(&mut app, &Actor::System { org: south.org.id }).await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2025-07-14')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, s_opt).await,
        "weekly",
        "south, July: off season"
    );
    assert_eq!(
        frequency(&owner, n_opt).await,
        "daily",
        "north untouched by the south's run"
    );
    let t = tx(&mut app, &Actor::System { org: south.org.id }).await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2026-01-10')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, s_opt).await,
        "daily",
        "south, January: in season"
    );

    // Explicit season months override the hemisphere.
    owner
        .execute(
            "UPDATE organizations SET settings = settings || '{\"wedding_season_months\": [9, 10]}' WHERE id = $1",
            &[&north.org.id],
        )
        .await
        .unwrap();
    owner
        .execute(
            "SELECT optimize_wedding_season_backups_for_org($1, DATE '2025-07-14')",
            &[&north.org.id],
        )
        .await
        .unwrap();
    assert_eq!(frequency(&owner, n_opt).await, "weekly");

    // Members and agents may not run it; settings are validated.
    let member = add_user(&owner, north.org.id, "member@north.test", "member").await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: north.org.id,
            user: member,
        },
    )
    .await;
    let e = t
        .execute("SELECT optimize_wedding_season_backups()", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
    for bad in [
        r#"{"hemisphere": "east"}"#,
        r#"{"wedding_season_months": [13]}"#,
        r#"{"wedding_season_months": [5, 5]}"#,
        r#"{"allow_unsealed_key_on_disk": "yes"}"#,
        "[]",
    ] {
        let e = owner
            .execute(
                &format!("UPDATE organizations SET settings = '{bad}' WHERE id = $1"),
                &[&north.org.id],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: cron, timezone, exclusions, keys, storage_analytics uniqueness
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cron_expressions_are_validated() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let good = [
        "* * * * *",
        "0 3 * * *",
        "*/15 * * * *",
        "0 0-23/2 * * *",
        "5,35 9-17 * * mon-fri",
        "0 23 1,15 * *",
        "30 2 * jan,jun,DEC sun",
        "0 0 * * 7",
        "0 0 * * 0",
        "5/10 * * * *",
        "0 12 1-31/2 feb-nov SAT",
        "  0  1 * * 1  ",
    ];
    let bad = [
        "",
        "garbage",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "1,,2 * * * *",
        "* * * foo *",
        "* * * * fun",
        "@daily",
        "0 23 L * *",
        "0 0 ? * *",
        "-1 * * * *",
        "0 0 * * mon-",
        "0 0 * jan-mon *",
        "0 0 * * 1#2",
    ];
    for e in good {
        let ok: bool = owner
            .query_one("SELECT is_valid_cron($1)", &[&e])
            .await
            .unwrap()
            .get(0);
        assert!(ok, "{e:?} should be valid");
    }
    for e in bad {
        let ok: bool = owner
            .query_one("SELECT is_valid_cron($1)", &[&e])
            .await
            .unwrap()
            .get(0);
        assert!(!ok, "{e:?} should be invalid");
    }

    let org = create_org(&owner, "cron", "north").await;
    let strat = strategy(&owner, org.id, "s", false).await;
    let insert = |cron: &'static str, tz: &'static str| {
        let owner = &owner;
        async move {
            owner
                .execute(
                    "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, timezone)
                     VALUES ($1, $2, 'nightly', $3, $4)",
                    &[&org.id, &strat, &cron, &tz],
                )
                .await
        }
    };
    insert("0 3 * * *", "Europe/London")
        .await
        .expect("valid schedule");
    insert("0 3 * * *", "Australia/Sydney")
        .await
        .expect("valid schedule");
    let e = insert("0 3 * *", "UTC").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "CHECK rejects a malformed cron");
    assert!(
        describe(&e).contains("backup_schedules_cron_valid"),
        "{}",
        describe(&e)
    );
    let e = insert("0 3 * * *", "Mars/Olympus_Mons").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    assert!(
        describe(&e).contains("backup_schedules_timezone_valid"),
        "{}",
        describe(&e)
    );
    let e = owner
        .execute(
            "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, wedding_season_cron)
             VALUES ($1, $2, 'season', '0 3 * * *', '*/5 * * * * *')",
            &[&org.id, &strat],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "23514",
        "the wedding-season override is validated too"
    );
}

#[tokio::test]
async fn exclusion_patterns_are_validated_and_negation_is_derived() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "excl", "north").await;
    for (p, neg) in [
        (".DS_Store", false),
        ("!keep.lrcat", true),
        ("**/Lightroom Previews.lrdata/", false),
        ("\\#raw", false),
    ] {
        let got: bool = owner
            .query_one(
                "INSERT INTO backup_exclusions (organization_id, pattern, rule_order) VALUES ($1, $2, 1) RETURNING is_negation",
                &[&w.org.id, &p],
            )
            .await
            .unwrap_or_else(|e| panic!("{p}: {}", describe(&e)))
            .get(0);
        assert_eq!(got, neg, "{p}");
    }
    for p in ["", "   ", "# comment", "!", "a\nb", "tab\there"] {
        let e = owner
            .execute(
                "INSERT INTO backup_exclusions (organization_id, pattern) VALUES ($1, $2)",
                &[&w.org.id, &p],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{p:?}");
    }
    // Scope must match the ids given.
    let e = owner
        .execute(
            "INSERT INTO backup_exclusions (organization_id, scope, pattern) VALUES ($1, 'agent', '*.tmp')",
            &[&w.org.id],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    owner
        .execute(
            "INSERT INTO backup_exclusions (organization_id, scope, agent_id, source_id, pattern) VALUES ($1, 'source', $2, $3, '*.tmp')",
            &[&w.org.id, &w.agent, &w.source],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn storage_analytics_rejects_duplicate_organisation_wide_rows() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "analytics", "north").await;
    let ins = "INSERT INTO storage_analytics (organization_id, destination_id, measurement_date, total_storage_bytes,
               used_storage_bytes, available_storage_bytes) VALUES ($1, $2, DATE '2025-06-01', 10, 5, 5)";
    let none: Option<Uuid> = None;
    owner.execute(ins, &[&w.org.id, &none]).await.unwrap();
    let e = owner.execute(ins, &[&w.org.id, &none]).await.unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "23505",
        "NULL destination no longer lets duplicates through"
    );
    owner
        .execute(ins, &[&w.org.id, &Some(w.destination)])
        .await
        .unwrap();
    let e = owner
        .execute(ins, &[&w.org.id, &Some(w.destination)])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
}

#[tokio::test]
async fn encryption_keys_hold_only_public_recipients_and_sealed_bundles() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "keys", "north").await;
    let mut app = db.app().await;
    let recipient = age_recipient("keys-1");
    let sealed = b"age-encryption.org/v1\n-> scrypt salt 18\nbody".to_vec();
    let ins = "INSERT INTO backup_encryption_keys (organization_id, key_name, recipient, key_hash, key_bundle,
               next_rotation_date, created_by_agent_id) VALUES ($1, 'data', $2, 'a1b2c3d4e5f60718', $3, current_date + 365, $4)";

    // A plaintext identity in the bundle is refused, even inside an age header.
    let leaked = b"age-encryption.org/v1\nAGE-SECRET-KEY-1QQQQ".to_vec();
    let e = owner
        .execute(ins, &[&w.org.id, &recipient, &leaked, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = owner
        .execute(
            ins,
            &[&w.org.id, &recipient, &b"not age".to_vec(), &w.agent],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = owner
        .execute(ins, &[&w.org.id, &"age1notvalid", &sealed, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");

    // The first machine registers the key (generated there).
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: w.agent,
        },
    )
    .await;
    t.execute(ins, &[&w.org.id, &recipient, &sealed, &w.agent])
        .await
        .unwrap();
    t.commit().await.unwrap();
    // Only one active key at a time: a second active key is refused until the first is retired.
    let second = age_recipient("keys-2");
    let e = owner
        .execute(ins, &[&w.org.id, &second, &sealed, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    // An agent cannot retire a key (rotation is an admin decision).
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: w.agent,
        },
    )
    .await;
    let n = t
        .execute(
            "UPDATE backup_encryption_keys SET is_active = false, retired_at = now()",
            &[],
        )
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    t.rollback().await.unwrap();
    // The owner rotates: retire + add.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    t.execute(
        "UPDATE backup_encryption_keys SET is_active = false, retired_at = now()",
        &[],
    )
    .await
    .unwrap();
    t.execute(
        "INSERT INTO backup_encryption_keys (organization_id, key_name, recipient, key_hash, key_bundle, next_rotation_date, created_by_user_id)
         VALUES ($1, 'data-2', $2, 'a1b2c3d4e5f60719', $3, current_date + 365, $4)",
        &[&w.org.id, &second, &sealed, &w.org.owner],
    )
    .await
    .unwrap();
    // The recipient of a registered key never changes.
    let e = t
        .execute(
            "UPDATE backup_encryption_keys SET recipient = $1 WHERE key_name = 'data-2'",
            &[&age_recipient("x")],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// backup_files: history guard, one live version, state queries
// ---------------------------------------------------------------------------------------------

/// Commits a job for `w.source` as its agent: bumps the source's sequence, assigns it to the job,
/// and returns (job id, seq).
async fn commit_job(t: &tokio_postgres::Transaction<'_>, w: &World) -> (Uuid, i64) {
    let seq: i64 = t
        .query_one(
            "UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1 WHERE id = $1 RETURNING last_committed_seq",
            &[&w.source],
        )
        .await
        .unwrap()
        .get(0);
    let job: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status, seq, parent_seq)
             VALUES ($1, $2, $3, 'incremental', 'running', $4, $5) RETURNING id",
            &[&w.org.id, &w.agent, &w.source, &seq, &(seq - 1)],
        )
        .await
        .unwrap()
        .get(0);
    (job, seq)
}

async fn add_version(
    t: &tokio_postgres::Transaction<'_>,
    w: &World,
    path: &str,
    content: &str,
    seq: i64,
    job: Uuid,
) -> Result<i64, tokio_postgres::Error> {
    t.execute(
        "INSERT INTO file_contents (organization_id, content_hash, size, chunk_count, agent_id)
         VALUES ($1, $2, 100, 1, $3) ON CONFLICT DO NOTHING",
        &[&w.org.id, &digest(content), &w.agent],
    )
    .await?;
    t.query_one(
        "INSERT INTO backup_files (organization_id, agent_id, source_id, path, size, content_hash, chunk_count,
             valid_from_seq, created_by_job_id)
         VALUES ($1, $2, $3, $4, 100, $5, 1, $6, $7) RETURNING id",
        &[&w.org.id, &w.agent, &w.source, &path, &digest(content), &seq, &job],
    )
    .await
    .map(|r| r.get(0))
}

async fn close_version(
    t: &tokio_postgres::Transaction<'_>,
    id: i64,
    seq: i64,
    job: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    t.execute(
        "UPDATE backup_files SET valid_to_seq = $2, valid_to = now(), closed_by_job_id = $3 WHERE id = $1",
        &[&id, &seq, &job],
    )
    .await
}

#[tokio::test]
async fn file_versions_form_append_only_history_with_one_live_version_per_path() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "files", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

    // Commit 1: two files.
    let mut t = tx(&mut app, &agent).await;
    let (j1, s1) = commit_job(&t, &w).await;
    let a1 = add_version(&t, &w, "2025/Smith/IMG_0001.CR3", "a1", s1, j1)
        .await
        .unwrap();
    let b1 = add_version(&t, &w, "2025/Smith/IMG_0002.CR3", "b1", s1, j1)
        .await
        .unwrap();
    // At most one live version per path.
    let sp = t.savepoint("dup").await.unwrap();
    let e = add_version(&sp, &w, "2025/Smith/IMG_0001.CR3", "a1-dup", s1, j1)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505", "{}", describe(&e));
    sp.rollback().await.unwrap();
    t.commit().await.unwrap();

    // Commit 2: IMG_0001 changed, IMG_0002 deleted, a sidecar added.
    let t = tx(&mut app, &agent).await;
    let (j2, s2) = commit_job(&t, &w).await;
    assert_eq!(close_version(&t, a1, s2, j2).await.unwrap(), 1);
    add_version(&t, &w, "2025/Smith/IMG_0001.CR3", "a2", s2, j2)
        .await
        .unwrap();
    assert_eq!(close_version(&t, b1, s2, j2).await.unwrap(), 1);
    add_version(&t, &w, "2025/Smith/IMG_0001.xmp", "x2", s2, j2)
        .await
        .unwrap();
    t.commit().await.unwrap();

    // The history guard: a closed version cannot be reopened or re-closed, content never changes.
    let mut t = tx(&mut app, &agent).await;
    for sql in [
        format!("UPDATE backup_files SET valid_to_seq = NULL, valid_to = NULL, closed_by_job_id = NULL WHERE id = {a1}"),
        format!("UPDATE backup_files SET valid_to_seq = 5 WHERE id = {a1}"),
        "UPDATE backup_files SET content_hash = decode(repeat('00', 32), 'hex') WHERE valid_to_seq IS NULL AND path LIKE '%IMG_0001.CR3'".to_string(),
        format!("UPDATE backup_files SET path = 'renamed' WHERE id = {a1}"),
    ] {
        let r = attempt(&mut t, &sql).await;
        match r {
            Ok(n) => assert_eq!(n, 0, "{sql} must not change history"),
            Err(e) => assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e)),
        }
    }
    // An agent can only write at its source's newest commit: not into a past state.
    let sp = t.savepoint("past").await.unwrap();
    let e = add_version(&sp, &w, "2025/Smith/backdated.CR3", "bd", s1, j1)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    sp.rollback().await.unwrap();
    // ... and never delete.
    assert_eq!(
        attempt(&mut t, "DELETE FROM backup_files")
            .await
            .unwrap_or(0),
        0
    );
    t.rollback().await.unwrap();

    // Even the owner/system cannot rewrite a closed version (only explicit maintenance can).
    let e = owner
        .execute(
            "UPDATE backup_files SET valid_to_seq = 9 WHERE id = $1",
            &[&a1],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");

    // State queries: seq 1 had IMG_0001 (a1) and IMG_0002; seq 2 has IMG_0001 (a2) and the xmp.
    let at = |seq: i64, prefixes: Vec<&'static str>| {
        let owner = &owner;
        let source = w.source;
        async move {
            owner
                .query(
                    "SELECT path, content_hash FROM backup_files_at($1, $2, $3) ORDER BY path",
                    &[&source, &seq, &prefixes],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        at(1, vec![]).await,
        vec![
            ("2025/Smith/IMG_0001.CR3".to_string(), digest("a1")),
            ("2025/Smith/IMG_0002.CR3".to_string(), digest("b1"))
        ]
    );
    assert_eq!(
        at(2, vec![]).await,
        vec![
            ("2025/Smith/IMG_0001.CR3".to_string(), digest("a2")),
            ("2025/Smith/IMG_0001.xmp".to_string(), digest("x2"))
        ]
    );
    assert_eq!(at(2, vec!["2025/Smith"]).await.len(), 2, "directory prefix");
    assert_eq!(
        at(2, vec!["2025/Smi"]).await.len(),
        0,
        "prefixes match whole path components"
    );
    assert_eq!(
        at(1, vec!["2025/Smith/IMG_0002.CR3"]).await.len(),
        1,
        "a single file"
    );
    assert_eq!(
        at(2, vec!["2025/Smith", "2025"]).await.len(),
        2,
        "overlapping prefixes do not duplicate"
    );

    // Paths must be relative and normalised.
    for bad in ["/abs", "a/../b", "./a", "a//b", "a/.", ".."] {
        let e = owner
            .execute(
                "INSERT INTO backup_files (organization_id, agent_id, source_id, path, size, content_hash, valid_from_seq, created_by_job_id)
                 VALUES ($1, $2, $3, $4, 1, $5, 2, $6)",
                &[&w.org.id, &w.agent, &w.source, &bad, &digest(bad), &j2],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{bad}");
    }
}

#[tokio::test]
async fn agents_update_only_their_own_in_flight_rows() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "inflight", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

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
    // Progress while running: fine. Lowering the wedding-critical priority: refused.
    assert_eq!(
        t.execute(
            "UPDATE backup_jobs SET files_processed = 10 WHERE id = $1",
            &[&job]
        )
        .await
        .unwrap(),
        1
    );
    t.commit().await.unwrap();
    let mut t = tx(&mut app, &agent).await;
    let e = attempt(
        &mut t,
        &format!("UPDATE backup_jobs SET wedding_critical_priority = false WHERE id = '{job}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(attempt(&mut t, &format!("UPDATE backup_jobs SET status = 'completed', completed_at = now() WHERE id = '{job}'")).await.unwrap(), 1);
    // Finished: no more updates from the agent.
    assert_eq!(
        attempt(
            &mut t,
            &format!("UPDATE backup_jobs SET status = 'running' WHERE id = '{job}'")
        )
        .await
        .unwrap(),
        0
    );
    // Its own heartbeat: yes; its revocation or name: no.
    assert_eq!(attempt(&mut t, &format!("UPDATE agents SET last_seen_at = now(), last_heartbeat = '{{\"queue\": 3}}' WHERE id = '{}'", w.agent)).await.unwrap(), 1);
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE agents SET revoked_at = NULL, name = 'x' WHERE id = '{}'",
            w.agent
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Its source's sequence only moves forward.
    assert_eq!(attempt(&mut t, &format!("UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1 WHERE id = '{}'", w.source)).await.unwrap(), 1);
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE backup_sources SET last_committed_seq = 0 WHERE id = '{}'",
            w.source
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE backup_sources SET root_path = '/' WHERE id = '{}'",
            w.source
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.commit().await.unwrap();

    // Recovery jobs targeted at the agent: progress yes, retargeting no.
    let rj: Uuid = owner
        .query_one(
            "INSERT INTO recovery_jobs (organization_id, source_id, point_in_time, initiated_by, recovery_type, target_location, target_agent_id, status)
             VALUES ($1, $2, now(), $3, 'full_recovery', '/restore', $4, 'queued') RETURNING id",
            &[&w.org.id, &w.source, &w.org.owner, &w.agent],
        )
        .await
        .unwrap()
        .get(0);
    let mut t = tx(&mut app, &agent).await;
    assert_eq!(
        attempt(&mut t, &format!("UPDATE recovery_jobs SET status = 'running', claimed_by = '{}', claimed_at = now(), lease_expires_at = now() + interval '5 minutes', progress_percentage = 10 WHERE id = '{rj}'", w.agent)).await.unwrap(),
        1
    );
    let e = attempt(
        &mut t,
        &format!("UPDATE recovery_jobs SET target_location = '/elsewhere' WHERE id = '{rj}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = attempt(
        &mut t,
        &format!("UPDATE recovery_jobs SET path_prefixes = ARRAY['x'] WHERE id = '{rj}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(attempt(&mut t, &format!("UPDATE recovery_jobs SET status = 'completed', completed_at = now(), progress_percentage = 100 WHERE id = '{rj}'")).await.unwrap(), 1);
    assert_eq!(
        attempt(
            &mut t,
            &format!("UPDATE recovery_jobs SET progress_percentage = 50 WHERE id = '{rj}'")
        )
        .await
        .unwrap(),
        0,
        "finished"
    );
    t.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tokens, users, organisations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn resolve_token_returns_only_usable_tokens() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "tokens", "north").await;
    let member = add_user(&owner, w.org.id, "member@tokens.test", "member").await;
    let revoked_agent = add_agent(&owner, w.org.id, "old-laptop").await;
    owner
        .execute(
            "UPDATE agents SET revoked_at = now() WHERE id = $1",
            &[&revoked_agent],
        )
        .await
        .unwrap();

    let tok = |kind: &'static str,
               user: Option<Uuid>,
               agent: Option<Uuid>,
               extra: &'static str,
               seed: &'static str| {
        let owner = &owner;
        let org = w.org.id;
        async move {
            owner
                .query_one(
                    &format!(
                        "INSERT INTO api_tokens (organization_id, kind, user_id, agent_id, token_hash, expires_at, used_at, revoked_at)
                         SELECT $1, '{kind}', $2, $3, $4, e, u, r FROM (SELECT {extra}) AS x(e, u, r) RETURNING id"
                    ),
                    &[&org, &user, &agent, &digest(seed)],
                )
                .await
                .unwrap_or_else(|e| panic!("{seed}: {}", describe(&e)))
                .get::<_, Uuid>(0)
        }
    };
    let none = "NULL::timestamptz, NULL::timestamptz, NULL::timestamptz";
    let user_tok = tok("user", Some(member), None, none, "user").await;
    let agent_tok = tok("agent", None, Some(w.agent), none, "agent").await;
    let enroll_tok = tok(
        "enroll",
        None,
        None,
        "now() + interval '1 hour', NULL::timestamptz, NULL::timestamptz",
        "enroll",
    )
    .await;
    tok(
        "enroll",
        None,
        None,
        "now() + interval '1 hour', now(), NULL::timestamptz",
        "enroll-used",
    )
    .await;
    tok(
        "user",
        Some(member),
        None,
        "now() - interval '1 second', NULL::timestamptz, NULL::timestamptz",
        "expired",
    )
    .await;
    tok(
        "user",
        Some(member),
        None,
        "NULL::timestamptz, NULL::timestamptz, now()",
        "revoked",
    )
    .await;
    tok("agent", None, Some(revoked_agent), none, "revoked-agent").await;

    let mut app = db.app().await;
    let t = tx(&mut app, &Actor::Anonymous).await;
    let resolve = |seed: &'static str| {
        let t = &t;
        async move {
            t.query("SELECT token_id, kind::text, organization_id, user_id, agent_id FROM auth.resolve_token($1)", &[&digest(seed)])
                .await
                .unwrap()
        }
    };
    let r = resolve("user").await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, Uuid>(0), user_tok);
    assert_eq!(r[0].get::<_, String>(1), "user");
    assert_eq!(r[0].get::<_, Uuid>(2), w.org.id);
    assert_eq!(r[0].get::<_, Option<Uuid>>(3), Some(member));
    let r = resolve("agent").await;
    assert_eq!(
        (r[0].get::<_, Uuid>(0), r[0].get::<_, Option<Uuid>>(4)),
        (agent_tok, Some(w.agent))
    );
    assert_eq!(resolve("enroll").await[0].get::<_, Uuid>(0), enroll_tok);
    for unusable in [
        "enroll-used",
        "expired",
        "revoked",
        "revoked-agent",
        "unknown",
    ] {
        assert!(
            resolve(unusable).await.is_empty(),
            "{unusable} must not resolve"
        );
    }
    // Anonymous callers see no token rows directly.
    assert_eq!(scalar_i64(&t, "SELECT count(*) FROM api_tokens").await, 0);
    t.commit().await.unwrap();
    let used: bool = owner
        .query_one(
            "SELECT last_used_at IS NOT NULL FROM api_tokens WHERE id = $1",
            &[&user_tok],
        )
        .await
        .unwrap()
        .get(0);
    assert!(used, "last_used_at recorded");

    // A disabled user's token stops working, and so does the user's organisation scope.
    owner
        .execute(
            "UPDATE auth.users SET disabled_at = now() WHERE id = $1",
            &[&member],
        )
        .await
        .unwrap();
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: member,
        },
    )
    .await;
    assert!(t
        .query("SELECT 1 FROM auth.resolve_token($1)", &[&digest("user")])
        .await
        .unwrap()
        .is_empty());
    let org: Option<Uuid> = t
        .query_one("SELECT auth.org_id()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(org, None);
    t.rollback().await.unwrap();

    // Token kinds must carry the right ids; hashes are 32 bytes.
    for (kind, user, agent) in [
        ("user", None, None),
        ("agent", Some(member), None),
        ("enroll", None, Some(w.agent)),
    ] {
        let e = owner
            .execute(
                &format!("INSERT INTO api_tokens (organization_id, kind, user_id, agent_id, token_hash, expires_at) VALUES ($1, '{kind}', $2, $3, $4, now())"),
                &[&w.org.id, &user, &agent, &digest(&format!("bad-{kind}"))],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{kind}");
    }
    // A used or revoked token cannot be reactivated, even by an admin.
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
            "UPDATE api_tokens SET used_at = NULL WHERE token_hash = $1",
            &[&digest("enroll-used")],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}

#[tokio::test]
async fn users_see_their_organisations_and_roles_are_protected() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let a = create_org(&owner, "roles-a", "north").await;
    let b = create_org(&owner, "roles-b", "south").await;
    // The owner of A is also a member of B.
    owner
        .execute(
            "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, 'member')",
            &[&a.owner, &b.id],
        )
        .await
        .unwrap();
    let admin = add_user(&owner, a.id, "admin@roles-a.test", "admin").await;
    let mut app = db.app().await;

    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: a.owner,
        },
    )
    .await;
    let orgs: Vec<(Uuid, String)> = t
        .query(
            "SELECT organization_id, role::text FROM auth.my_organizations()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        orgs,
        vec![(a.id, "owner".to_string()), (b.id, "member".to_string())]
    );
    let role: String = t
        .query_one("SELECT auth.org_role()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "owner");
    t.rollback().await.unwrap();

    // An admin cannot make someone owner, nor demote the owner; the owner can.
    let mut t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: admin,
        },
    )
    .await;
    let e = attempt(
        &mut t,
        &format!("UPDATE user_profiles SET role = 'owner' WHERE user_id = '{admin}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(
        attempt(
            &mut t,
            &format!(
                "UPDATE user_profiles SET role = 'member' WHERE user_id = '{}'",
                a.owner
            )
        )
        .await
        .unwrap(),
        0
    );
    // Admins invite users through auth.ensure_user (idempotent).
    let u1: Uuid = t
        .query_one("SELECT auth.ensure_user('New@Roles-A.test')", &[])
        .await
        .unwrap()
        .get(0);
    let u2: Uuid = t
        .query_one("SELECT auth.ensure_user('new@roles-a.test')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(u1, u2);
    t.execute(
        "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, 'member')",
        &[&u1, &a.id],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: a.owner,
        },
    )
    .await;
    assert_eq!(
        t.execute(
            "UPDATE user_profiles SET role = 'owner' WHERE user_id = $1",
            &[&admin]
        )
        .await
        .unwrap(),
        1
    );
    t.rollback().await.unwrap();

    // Members cannot invite.
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: u1,
        },
    )
    .await;
    let e = t
        .query_one("SELECT auth.ensure_user('x@y.test')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();

    // Emails are stored lower-case only.
    let e = owner
        .execute(
            "INSERT INTO auth.users (email) VALUES ('Upper@Case.test')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
}

// ---------------------------------------------------------------------------------------------
// Other triggers and functions
// ---------------------------------------------------------------------------------------------

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
    let strategy_id: Option<Uuid> = owner
        .query_one("SELECT strategy_id FROM backup_jobs WHERE id = $1", &[&job])
        .await
        .expect("the job survives its strategy")
        .get(0);
    assert_eq!(strategy_id, None);
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
