//! Migrations and the catalog: migrations apply to an empty database and re-apply as a no-op,
//! contain no transaction control, and leave every object the seed names in place, with every
//! tenant table carrying a non-null `organization_id` and an index leading by it.

use crate::schema_support::*;
use keepsake_server::db::migrate;
use keepsake_server::testkit;

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
