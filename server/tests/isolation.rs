//! Tenant isolation enforced by PostgreSQL itself: two organisations, users of every role and
//! agents, all connected as `keepsake_app` (like the server's pool) with the identity set per
//! transaction. The tables checked are derived from the catalog, so a new table with an
//! organization_id must get a fixture here (and policies) or these tests fail.

mod schema_support;

use std::collections::{BTreeMap, HashMap};

use keepsake_server::db::{self, Actor};
use keepsake_server::testkit::{self, TestDb};
use schema_support::*;
use tokio_postgres::Client;
use uuid::Uuid;

/// Placeholders of the fixtures besides {org}, {n} (instance tag) and {recipient}: each gets a
/// fresh uuid per instance.
const KEYS: &[&str] = &[
    "admin",
    "member",
    "ec",
    "agent",
    "source",
    "strategy",
    "strategy2",
    "destination",
    "destination2",
    "retention",
    "schedule",
    "job",
    "job_done",
    "manifest",
    "rp",
    "rj",
    "rj_done",
    "scenario",
    "pack",
];

/// Minimal valid rows for every table with organisation data, in insertion order. Every instance
/// (organisation + machine) gets its own copy. A table missing here fails `fixtures()` loudly.
const FIXTURES: &[(&str, &str)] = &[
    (
        "auth.users",
        r#"INSERT INTO auth.users (id, email, display_name) VALUES
        ('{admin}', 'admin-{n}@example.test', 'Admin'), ('{member}', 'member-{n}@example.test', 'Member'),
        ('{ec}', 'ec-{n}@example.test', 'Emergency')"#,
    ),
    (
        "public.user_profiles",
        r#"INSERT INTO user_profiles (user_id, organization_id, role) VALUES
        ('{admin}', '{org}', 'admin'), ('{member}', '{org}', 'member'), ('{ec}', '{org}', 'emergency_contact')"#,
    ),
    (
        "public.agents",
        r#"INSERT INTO agents (id, organization_id, name, hostname, platform)
        VALUES ('{agent}', '{org}', 'laptop-{n}', 'host-{n}', 'macos')"#,
    ),
    (
        "public.backup_sources",
        r#"INSERT INTO backup_sources (id, organization_id, agent_id, root_path)
        VALUES ('{source}', '{org}', '{agent}', '/Users/{n}/Shoots')"#,
    ),
    (
        "public.api_tokens",
        r#"INSERT INTO api_tokens (organization_id, kind, user_id, agent_id, token_hash) VALUES
        ('{org}', 'agent', NULL, '{agent}', decode(md5('{n}t1') || md5('{n}t2'), 'hex')),
        ('{org}', 'user', '{admin}', NULL, decode(md5('{n}u1') || md5('{n}u2'), 'hex'))"#,
    ),
    (
        "public.retention_policies",
        r#"INSERT INTO retention_policies (id, organization_id, name, keep_daily, keep_weekly)
        VALUES ('{retention}', '{org}', 'gfs-{n}', 7, 4)"#,
    ),
    (
        "public.backup_strategies",
        r#"INSERT INTO backup_strategies
        (id, organization_id, name, strategy_type, backup_frequency, retention_period, retention_policy_id) VALUES
        ('{strategy}', '{org}', 'main-{n}', 'incremental_backup', 'daily', '30 days', '{retention}'),
        ('{strategy2}', '{org}', 'catalog-{n}', 'continuous_backup', 'real_time', '30 days', NULL)"#,
    ),
    (
        "public.backup_destinations",
        r#"INSERT INTO backup_destinations
        (id, organization_id, name, destination_type, connection_config, credentials_encrypted) VALUES
        ('{destination}', '{org}', 'local-{n}', 'local_storage', '{"kind": "local"}', NULL),
        ('{destination2}', '{org}', 'cloud-{n}', 'cloud_storage', '{"kind": "s3", "bucket": "b"}', '\xdeadbeef')"#,
    ),
    (
        "public.backup_schedules",
        r#"INSERT INTO backup_schedules (id, organization_id, strategy_id, name, cron_expression, timezone)
        VALUES ('{schedule}', '{org}', '{strategy}', 'nightly-{n}', '0 3 * * *', 'Europe/London')"#,
    ),
    (
        "public.backup_exclusions",
        r#"INSERT INTO backup_exclusions (organization_id, scope, agent_id, pattern, rule_order)
        VALUES ('{org}', 'agent', '{agent}', '.DS_Store', 1)"#,
    ),
    (
        "public.backup_jobs",
        r#"INSERT INTO backup_jobs
        (id, organization_id, strategy_id, destination_id, agent_id, source_id, job_type, status, seq, started_at, completed_at, bytes_new, duration_seconds, success_rate) VALUES
        ('{job}', '{org}', '{strategy}', '{destination}', '{agent}', '{source}', 'incremental', 'running', NULL, now(), NULL, 0, NULL, NULL),
        ('{job_done}', '{org}', '{strategy}', '{destination}', '{agent}', '{source}', 'full', 'completed', 1, now(), now(), 100, 1, 100)"#,
    ),
    (
        "public.file_contents",
        r#"INSERT INTO file_contents (organization_id, content_hash, size, chunk_count, agent_id)
        VALUES ('{org}', decode(md5('{n}f') || md5('{n}g'), 'hex'), 10, 1, '{agent}')"#,
    ),
    (
        "public.backup_files",
        r#"INSERT INTO backup_files
        (organization_id, agent_id, source_id, path, size, content_hash, chunk_count, valid_from_seq, created_by_job_id)
        VALUES ('{org}', '{agent}', '{source}', 'Smith/IMG-{n}.CR3', 10, decode(md5('{n}f') || md5('{n}g'), 'hex'), 1, 1, '{job_done}')"#,
    ),
    (
        "public.packs",
        r#"INSERT INTO packs (id, organization_id, destination_id, object_key, size_bytes, blob_count, pack_hash, uploaded_by_agent_id)
        VALUES ('{pack}', '{org}', '{destination}', 'packs/{n}.pack', 112, 1, decode(md5('{n}p') || md5('{n}q'), 'hex'), '{agent}')"#,
    ),
    (
        "public.blobs",
        r#"INSERT INTO blobs (organization_id, blob_id)
        VALUES ('{org}', decode(md5('{n}b') || md5('{n}c'), 'hex'))"#,
    ),
    (
        "public.blob_copies",
        r#"INSERT INTO blob_copies (organization_id, blob_id, pack_id, pack_offset, cipher_length, plain_length, cipher_hash, uploaded_by_agent_id)
        VALUES ('{org}', decode(md5('{n}b') || md5('{n}c'), 'hex'), '{pack}', 16, 80, 10, decode(md5('{n}d') || md5('{n}e'), 'hex'), '{agent}')"#,
    ),
    (
        "public.blob_adoptions",
        r#"INSERT INTO blob_adoptions (organization_id, agent_id, blob_id, pack_id)
        VALUES ('{org}', '{agent}', decode(md5('{n}b') || md5('{n}c'), 'hex'), '{pack}')"#,
    ),
    (
        "public.content_chunks",
        r#"INSERT INTO content_chunks (organization_id, content_hash, agent_id, seq, blob_id, file_offset, plain_length)
        VALUES ('{org}', decode(md5('{n}f') || md5('{n}g'), 'hex'), '{agent}', 0, decode(md5('{n}b') || md5('{n}c'), 'hex'), 0, 10)"#,
    ),
    (
        "public.job_delta_entries",
        r#"INSERT INTO job_delta_entries (organization_id, backup_job_id, agent_id, part, ordinal, op, path, size, content_hash, chunk_count)
        VALUES ('{org}', '{job}', '{agent}', 0, 0, 'upsert', 'Smith/new-{n}.CR3', 10, decode(md5('{n}f') || md5('{n}g'), 'hex'), 1)"#,
    ),
    (
        "public.job_delta_chunks",
        r#"INSERT INTO job_delta_chunks (organization_id, backup_job_id, agent_id, part, ordinal, seq, blob_id, file_offset, plain_length)
        VALUES ('{org}', '{job}', '{agent}', 0, 0, 0, decode(md5('{n}b') || md5('{n}c'), 'hex'), 0, 10)"#,
    ),
    (
        "public.backup_manifests",
        r#"INSERT INTO backup_manifests
        (id, organization_id, backup_job_id, agent_id, source_id, seq, file_count, total_bytes, manifest_digest)
        VALUES ('{manifest}', '{org}', '{job_done}', '{agent}', '{source}', 1, 1, 10, decode(md5('{n}m') || md5('{n}n'), 'hex'))"#,
    ),
    (
        "public.backup_checksums",
        r#"INSERT INTO backup_checksums
        (organization_id, subject_kind, subject_ref, manifest_id, agent_id, expected_digest)
        VALUES ('{org}', 'manifest', '{manifest}', '{manifest}', '{agent}', decode(md5('{n}m') || md5('{n}n'), 'hex'))"#,
    ),
    (
        "public.backup_logs",
        r#"INSERT INTO backup_logs (organization_id, backup_job_id, agent_id, log_level, message)
        VALUES ('{org}', '{job}', '{agent}', 'info', 'scan started {n}')"#,
    ),
    (
        "public.recovery_points",
        r#"INSERT INTO recovery_points
        (id, backup_job_id, organization_id, agent_id, source_id, seq, point_in_time, recovery_type, backup_size_bytes, file_count, retention_expires_at)
        VALUES ('{rp}', '{job_done}', '{org}', '{agent}', '{source}', 1, now(), 'full_recovery', 10, 1, now() + interval '30 days')"#,
    ),
    (
        "public.disaster_scenarios",
        r#"INSERT INTO disaster_scenarios (id, organization_id, name, scenario_kind, steps)
        VALUES ('{scenario}', '{org}', 'stolen-{n}', 'device_theft', '[{"title": "Revoke the machine"}]')"#,
    ),
    (
        "public.recovery_jobs",
        r#"INSERT INTO recovery_jobs
        (id, recovery_point_id, organization_id, initiated_by, recovery_type, target_location, status, is_emergency_recovery, target_agent_id, completed_at, verification_passed) VALUES
        ('{rj}', '{rp}', '{org}', '{ec}', 'emergency_recovery', 'laptop:/Restore', 'queued', true, '{agent}', NULL, NULL),
        ('{rj_done}', '{rp}', '{org}', '{admin}', 'full_recovery', 'laptop:/Restore', 'completed', false, '{agent}', now(), true)"#,
    ),
    (
        "public.recovery_validations",
        r#"INSERT INTO recovery_validations (organization_id, recovery_job_id, agent_id, files_checked, passed)
        VALUES ('{org}', '{rj}', '{agent}', 1, true), ('{org}', '{rj_done}', '{agent}', 1, true)"#,
    ),
    (
        "public.recovery_logs",
        r#"INSERT INTO recovery_logs (organization_id, recovery_job_id, agent_id, step, message)
        VALUES ('{org}', '{rj}', '{agent}', 'download', 'ok'), ('{org}', '{rj_done}', '{agent}', 'download', 'ok')"#,
    ),
    (
        "public.backup_metrics",
        r#"INSERT INTO backup_metrics (organization_id, agent_id, backup_job_id, metric_name, metric_value, unit)
        VALUES ('{org}', '{agent}', '{job}', 'upload.bytes', 1024, 'bytes')"#,
    ),
    (
        "public.storage_usage",
        r#"INSERT INTO storage_usage (organization_id, destination_id, usage_date, logical_bytes, stored_bytes)
        VALUES ('{org}', '{destination}', current_date, 100, 40)"#,
    ),
    (
        "public.storage_analytics",
        r#"INSERT INTO storage_analytics
        (organization_id, destination_id, measurement_date, total_storage_bytes, used_storage_bytes, available_storage_bytes, cost_daily, backup_efficiency_score)
        VALUES ('{org}', '{destination}', current_date, 100, 40, 60, 0.25, 80)"#,
    ),
    (
        "public.alert_configurations",
        r#"INSERT INTO alert_configurations (organization_id, name, event, severity)
        VALUES ('{org}', 'failures-{n}', 'backup_failed', 'critical')"#,
    ),
    (
        "public.compliance_reports",
        r#"INSERT INTO compliance_reports (organization_id, report_type, period_start, period_end)
        VALUES ('{org}', 'gdpr_backup', current_date - 30, current_date)"#,
    ),
    (
        "public.backup_compliance_logs",
        r#"INSERT INTO backup_compliance_logs (organization_id, compliance_type, compliance_date, status, requirements_met)
        VALUES ('{org}', 'wedding_data_protection', current_date, 'compliant', '{"offsite_copy": true}')"#,
    ),
    (
        "public.emergency_contacts",
        r#"INSERT INTO emergency_contacts (organization_id, user_id, name, email, priority_order)
        VALUES ('{org}', '{ec}', 'Ella', 'ec-{n}@example.test', 1)"#,
    ),
    (
        "public.emergency_notifications",
        r#"INSERT INTO emergency_notifications (organization_id, notification_type, severity, message)
        VALUES ('{org}', 'agent_offline', 'warning', 'laptop-{n} offline')"#,
    ),
    (
        "public.backup_integrations",
        r#"INSERT INTO backup_integrations (organization_id, integration_type, provider, name, credentials_encrypted)
        VALUES ('{org}', 'webhook', 'acme', 'hook-{n}', '\x0102')"#,
    ),
    (
        "public.cloud_backup_integrations",
        r#"INSERT INTO cloud_backup_integrations (organization_id, provider_name, service_type, credentials_encrypted, bucket_name)
        VALUES ('{org}', 'AWS', 'S3', 'sealed-secret', 'bucket-{n}')"#,
    ),
    (
        "public.monitoring_integrations",
        r#"INSERT INTO monitoring_integrations (organization_id, monitoring_service, webhook_url)
        VALUES ('{org}', 'pagerduty', 'https://events.example.test/{n}')"#,
    ),
    (
        "public.backup_service_apis",
        r#"INSERT INTO backup_service_apis (organization_id, service_name, api_endpoint, authentication_config)
        VALUES ('{org}', 'svc-{n}', 'https://api.example.test', '{"token": "sealed"}')"#,
    ),
    (
        "public.wedding_platform_integrations",
        r#"INSERT INTO wedding_platform_integrations (organization_id, platform_name, data_types)
        VALUES ('{org}', 'Tave', '["photos", "contracts"]')"#,
    ),
    (
        "public.vendor_backup_configs",
        r#"INSERT INTO vendor_backup_configs (organization_id, supplier_type, agent_id, bandwidth_limit_kbps, settle_window_seconds)
        VALUES ('{org}', 'photographer', '{agent}', 20000, 120)"#,
    ),
    (
        "public.wedding_critical_data",
        r#"INSERT INTO wedding_critical_data (organization_id, wedding_name, wedding_date, path_patterns, agent_id)
        VALUES ('{org}', 'Smith-{n}', current_date, ARRAY['Smith/**'], '{agent}')"#,
    ),
    (
        "public.backup_dependencies",
        r#"INSERT INTO backup_dependencies (organization_id, dependent_strategy_id, depends_on_strategy_id)
        VALUES ('{org}', '{strategy2}', '{strategy}')"#,
    ),
    (
        "public.failover_configurations",
        r#"INSERT INTO failover_configurations (organization_id, name, primary_destination_id, secondary_destination_id, server_urls)
        VALUES ('{org}', 'failover-{n}', '{destination}', '{destination2}', ARRAY['https://a.example.test', 'https://b.example.test'])"#,
    ),
    (
        "public.backup_encryption_keys",
        r#"INSERT INTO backup_encryption_keys
        (organization_id, key_name, recipient, key_hash, key_bundle, next_rotation_date, is_active, retired_at, created_by_agent_id)
        VALUES ('{org}', 'data-{n}', '{recipient}', '0123456789abcdef', 'age-encryption.org/v1 sealed'::bytea, current_date + 365, false, now(), '{agent}')"#,
    ),
    (
        "public.backup_audit_trail",
        r#"INSERT INTO backup_audit_trail (organization_id, actor, action, resource_type)
        VALUES ('{org}', 'system', 'fixture', 'test')"#,
    ),
];

/// One organisation + one machine worth of fixture rows.
struct Inst {
    org: Uuid,
    tag: String,
    ids: HashMap<&'static str, Uuid>,
}

impl Inst {
    fn new(org: Uuid, tag: &str) -> Inst {
        Inst {
            org,
            tag: tag.to_string(),
            ids: KEYS.iter().map(|k| (*k, Uuid::new_v4())).collect(),
        }
    }
    fn id(&self, key: &str) -> Uuid {
        self.ids[key]
    }
    fn render(&self, sql: &str) -> String {
        let mut s = sql
            .replace("{org}", &self.org.to_string())
            .replace("{n}", &self.tag)
            .replace("{recipient}", &age_recipient(&self.tag));
        for k in KEYS {
            s = s.replace(&format!("{{{k}}}"), &self.ids[k].to_string());
        }
        s
    }
}

struct World {
    db: TestDb,
    owner: Client,
    a: Uuid,
    b: Uuid,
    a1: Inst,
    a2: Inst,
    b1: Inst,
    /// Catalog-derived: every table (schema-qualified) with organization_id.
    tables: Vec<String>,
    views: Vec<String>,
}

async fn tenant_tables(c: &Client) -> Vec<String> {
    c.query(
        "SELECT n.nspname || '.' || c.relname
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'auth')
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped)
         ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn setup() -> World {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let tables = tenant_tables(&owner).await;
    let missing: Vec<&String> = tables
        .iter()
        .filter(|t| !FIXTURES.iter().any(|(f, _)| f == t))
        .collect();
    assert!(
        missing.is_empty(),
        "tables with organisation data but no isolation fixture (add one to FIXTURES): {missing:?}"
    );
    let views: Vec<String> = owner
        .query(
            "SELECT 'public.' || viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(views.len() >= 3);

    let a = create_org(&owner, "iso-a", "north").await.id;
    let b = create_org(&owner, "iso-b", "south").await.id;
    let (a1, a2, b1) = (Inst::new(a, "a1"), Inst::new(a, "a2"), Inst::new(b, "b1"));
    for inst in [&a1, &a2, &b1] {
        for (table, sql) in FIXTURES {
            let sql = inst.render(sql);
            owner
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("fixture {table} ({}): {}", inst.tag, describe(&e)));
        }
    }
    World {
        db,
        owner,
        a,
        b,
        a1,
        a2,
        b1,
        tables,
        views,
    }
}

fn actor_admin(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("admin"),
    }
}
fn actor_member(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("member"),
    }
}
fn actor_ec(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("ec"),
    }
}
fn actor_agent(w: &World) -> Actor {
    Actor::Agent {
        org: w.a,
        agent: w.a1.id("agent"),
    }
}
fn actor_system(w: &World) -> Actor {
    Actor::System { org: w.a }
}

/// (rows of org A, rows of any other organisation) visible in `table` in this transaction.
async fn visible(t: &tokio_postgres::Transaction<'_>, table: &str, a: Uuid) -> (i64, i64) {
    let col = if table == "public.organizations" {
        "id"
    } else {
        "organization_id"
    };
    let r = t
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE {col} = $1), count(*) FILTER (WHERE {col} IS DISTINCT FROM $1) FROM {table}"),
            &[&a],
        )
        .await
        .unwrap_or_else(|e| panic!("select {table}: {}", describe(&e)));
    (r.get(0), r.get(1))
}

/// A digest of every row of `org` in every tenant table (taken as the owner), to prove that
/// refused or zero-row writes changed nothing.
async fn snapshot(w: &World, org: Uuid) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in w
        .tables
        .iter()
        .chain(std::iter::once(&"public.organizations".to_string()))
    {
        let col = if t == "public.organizations" {
            "id"
        } else {
            "organization_id"
        };
        let d: String = w
            .owner
            .query_one(
                &format!("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x WHERE {col} = $1"),
                &[&org],
            )
            .await
            .unwrap()
            .get(0);
        out.insert(t.clone(), d);
    }
    let users: String = w
        .owner
        .query_one(
            "SELECT md5(coalesce(string_agg(u::text, '|' ORDER BY u::text), '')) FROM auth.users u",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.insert("auth.users".into(), users);
    out
}

/// Users that belong only to organisation B.
async fn users_only_in(w: &World, org: Uuid, other: Uuid) -> Vec<Uuid> {
    w.owner
        .query(
            "SELECT user_id FROM user_profiles WHERE organization_id = $1
             EXCEPT SELECT user_id FROM user_profiles WHERE organization_id = $2",
            &[&org, &other],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn refused_or_zero(r: Result<u64, tokio_postgres::Error>, what: &str) {
    match r {
        Ok(n) => assert_eq!(n, 0, "{what} affected {n} rows"),
        Err(e) => assert_eq!(
            sqlstate(&e),
            "42501",
            "{what}: unexpected error {}",
            describe(&e)
        ),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_table_with_organisation_data_has_a_fixture() {
    let w = setup().await;
    assert!(
        w.tables.len() >= 38,
        "found only {} tenant tables",
        w.tables.len()
    );
    // And every fixture names a real table.
    for (t, _) in FIXTURES {
        assert!(
            *t == "auth.users" || w.tables.iter().any(|x| x == t),
            "fixture for unknown table {t}"
        );
    }
}

#[tokio::test]
async fn each_actor_sees_only_its_own_organisation() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let b_users = users_only_in(&w, w.b, w.a).await;
    assert!(!b_users.is_empty());

    for (name, actor) in [
        ("admin", actor_admin(&w)),
        ("member", actor_member(&w)),
        ("emergency_contact", actor_ec(&w)),
        ("agent", actor_agent(&w)),
        ("system", actor_system(&w)),
    ] {
        let t = tx(&mut app, &actor).await;
        let mut own_total = 0;
        for table in w
            .tables
            .iter()
            .chain(std::iter::once(&"public.organizations".to_string()))
        {
            let (own, other) = visible(&t, table, w.a).await;
            assert_eq!(
                other, 0,
                "{name} sees {other} rows of another organisation in {table}"
            );
            own_total += own;
            if name == "admin" || name == "system" {
                assert!(
                    own > 0,
                    "{name} should see its organisation's rows in {table}"
                );
            }
        }
        assert!(own_total > 0, "{name} sees nothing at all");
        for view in &w.views {
            let (own, other) = visible(&t, view, w.a).await;
            assert_eq!(
                other, 0,
                "{name} sees {other} rows of another organisation in view {view}"
            );
            if name == "admin" {
                assert!(own > 0, "admin should see rows in view {view}");
            }
        }
        let leaked = t
            .query_one(
                "SELECT count(*) FROM auth.users WHERE id = ANY($1)",
                &[&b_users],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(leaked, 0, "{name} sees users of another organisation");
        t.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn writes_against_another_organisation_are_refused() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let before_b = snapshot(&w, w.b).await;
    let b_users = users_only_in(&w, w.b, w.a).await;
    let b_user_list = b_users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");

    for (name, actor) in [
        ("admin", actor_admin(&w)),
        ("member", actor_member(&w)),
        ("emergency_contact", actor_ec(&w)),
        ("agent", actor_agent(&w)),
        ("system", actor_system(&w)),
    ] {
        let mut t = tx(&mut app, &actor).await;
        for table in &w.tables {
            let upd = format!(
                "UPDATE {table} SET organization_id = organization_id WHERE organization_id = '{}'",
                w.b
            );
            refused_or_zero(attempt(&mut t, &upd).await, &format!("{name}: {upd}"));
            let del = format!("DELETE FROM {table} WHERE organization_id = '{}'", w.b);
            refused_or_zero(attempt(&mut t, &del).await, &format!("{name}: {del}"));
            // The other organisation's fixture, re-inserted by this actor: refused by the
            // policies (or by missing privileges) — SQLSTATE 42501 either way.
            let (_, sql) = FIXTURES.iter().find(|(f, _)| f == table).unwrap();
            match attempt(&mut t, &w.b1.render(sql)).await {
                Ok(n) => panic!("{name} inserted {n} rows into {table} for another organisation"),
                Err(e) => assert_eq!(
                    sqlstate(&e),
                    "42501",
                    "{name}: insert into {table}: {}",
                    describe(&e)
                ),
            }
            // Moving one of its own rows to the other organisation is refused too.
            let mv = format!(
                "UPDATE {table} SET organization_id = '{}' WHERE organization_id = '{}'",
                w.b, w.a
            );
            refused_or_zero_or_check(attempt(&mut t, &mv).await, &format!("{name}: {mv}"));
        }
        for sql in [
            format!(
                "UPDATE organizations SET name = 'pwned' WHERE id = '{}'",
                w.b
            ),
            format!("DELETE FROM organizations WHERE id = '{}'", w.b),
            format!("UPDATE auth.users SET display_name = 'pwned' WHERE id IN ({b_user_list})"),
            format!("DELETE FROM auth.users WHERE id IN ({b_user_list})"),
        ] {
            refused_or_zero(attempt(&mut t, &sql).await, &format!("{name}: {sql}"));
        }
        let e = attempt(
            &mut t,
            "INSERT INTO organizations (name, slug) VALUES ('Evil', 'evil')",
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{name} created an organisation");
        let e = attempt(
            &mut t,
            "INSERT INTO auth.users (email) VALUES ('evil@example.test')",
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{name} created a user directly");
        t.commit().await.unwrap();
    }
    assert_eq!(snapshot(&w, w.b).await, before_b, "organisation B changed");
}

/// Moving a row to another organisation must never succeed: refused by WITH CHECK (42501), by a
/// guard (42501), by a composite foreign key (23503) or by affecting no row.
fn refused_or_zero_or_check(r: Result<u64, tokio_postgres::Error>, what: &str) {
    match r {
        Ok(n) => assert_eq!(n, 0, "{what} moved {n} rows"),
        Err(e) => assert!(
            ["42501", "23503"].contains(&sqlstate(&e).as_str()),
            "{what}: unexpected error {}",
            describe(&e)
        ),
    }
}

#[tokio::test]
async fn agents_never_delete_and_never_update_other_machines_rows() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let before_a = snapshot(&w, w.a).await;
    let me = w.a1.id("agent");
    let cols: HashMap<String, Vec<String>> = {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for r in w
            .owner
            .query(
                "SELECT n.nspname || '.' || c.relname, a.attname::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname IN ('public', 'auth') AND a.attnum > 0 AND NOT a.attisdropped",
                &[],
            )
            .await
            .unwrap()
        {
            m.entry(r.get(0)).or_default().push(r.get(1));
        }
        m
    };

    let mut t = tx(&mut app, &actor_agent(&w)).await;
    for table in w
        .tables
        .iter()
        .chain(std::iter::once(&"public.organizations".to_string()))
    {
        let del = format!("DELETE FROM {table}");
        refused_or_zero(attempt(&mut t, &del).await, &format!("agent: {del}"));
        // Rows that are not this machine's own.
        let c = &cols[table];
        let not_mine = if table == "public.agents" {
            format!("id <> '{me}'")
        } else if table == "public.recovery_jobs" {
            format!("target_agent_id IS DISTINCT FROM '{me}'")
        } else if c.iter().any(|x| x == "agent_id") {
            format!("agent_id IS DISTINCT FROM '{me}'")
        } else {
            "true".to_string()
        };
        let set = if table == "public.organizations" {
            "name = name"
        } else {
            "organization_id = organization_id"
        };
        let upd = format!("UPDATE {table} SET {set} WHERE {not_mine}");
        refused_or_zero(attempt(&mut t, &upd).await, &format!("agent: {upd}"));
    }
    // The other machine's rows in the same organisation are visible (restore onto a replacement)
    // but not writable.
    let other_job = w.a2.id("job");
    let n = t
        .query_one(
            "SELECT count(*) FROM backup_jobs WHERE id = $1",
            &[&other_job],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(n, 1, "an agent reads its organisation's catalog");
    refused_or_zero(
        attempt(
            &mut t,
            &format!("UPDATE backup_jobs SET status = 'cancelled' WHERE id = '{other_job}'"),
        )
        .await,
        "agent cancels another machine's job",
    );
    // Inserting rows in another machine's name is refused.
    let e = attempt(
        &mut t,
        &format!(
            "INSERT INTO backup_logs (organization_id, agent_id, message) VALUES ('{}', '{}', 'forged')",
            w.a,
            w.a2.id("agent")
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.commit().await.unwrap();
    assert_eq!(
        snapshot(&w, w.a).await,
        before_a,
        "the agent changed its organisation's data"
    );

    // Agents do not read secrets: destinations, tokens, integrations, alerting, audit.
    let t = tx(&mut app, &actor_agent(&w)).await;
    for table in [
        "public.backup_destinations",
        "public.api_tokens",
        "public.backup_integrations",
        "public.cloud_backup_integrations",
        "public.monitoring_integrations",
        "public.backup_service_apis",
        "public.wedding_platform_integrations",
        "public.alert_configurations",
        "public.emergency_contacts",
        "public.backup_audit_trail",
        "public.user_profiles",
        "auth.users",
    ] {
        let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "an agent reads {table}");
    }
    // ... but reads the configuration it needs.
    for table in [
        "public.backup_strategies",
        "public.backup_schedules",
        "public.backup_exclusions",
        "public.retention_policies",
        "public.wedding_critical_data",
        "public.vendor_backup_configs",
        "public.failover_configurations",
        "public.backup_encryption_keys",
        "public.backup_files",
        "public.recovery_points",
    ] {
        let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
        assert!(n > 0, "an agent cannot read {table}");
    }
    t.rollback().await.unwrap();
}

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

#[tokio::test]
async fn nothing_is_visible_without_a_verified_identity() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let revoked = w.a2.id("agent");
    w.owner
        .execute(
            "UPDATE agents SET revoked_at = now() WHERE id = $1",
            &[&revoked],
        )
        .await
        .unwrap();
    let raw = |actor: &'static str, org: Uuid, user: Uuid, agent: Uuid| {
        (actor, org.to_string(), user.to_string(), agent.to_string())
    };
    type Settings = (&'static str, String, String, String);
    let cases: Vec<(&str, Option<Settings>)> = vec![
        ("no settings at all", None),
        (
            "anonymous",
            Some(("", String::new(), String::new(), String::new())),
        ),
        (
            "unknown actor",
            Some(("root", w.a.to_string(), String::new(), String::new())),
        ),
        (
            "user of B claiming org A",
            Some(raw("user", w.a, w.b1.id("admin"), Uuid::nil())),
        ),
        (
            "agent of B claiming org A",
            Some(raw("agent", w.a, Uuid::nil(), w.b1.id("agent"))),
        ),
        (
            "revoked agent",
            Some(("agent", w.a.to_string(), String::new(), revoked.to_string())),
        ),
        (
            "user without org",
            Some((
                "user",
                String::new(),
                w.a1.id("admin").to_string(),
                String::new(),
            )),
        ),
        (
            "system without org",
            Some(("system", String::new(), String::new(), String::new())),
        ),
        (
            "system of a non-existent org",
            Some((
                "system",
                Uuid::new_v4().to_string(),
                String::new(),
                String::new(),
            )),
        ),
    ];
    for (name, settings) in cases {
        let t = app.transaction().await.unwrap();
        if let Some((actor, org, user, agent)) = settings {
            t.execute(
                "SELECT set_config('keepsake.actor', $1, true), set_config('keepsake.org_id', $2, true),
                        set_config('keepsake.user_id', $3, true), set_config('keepsake.agent_id', $4, true)",
                &[&actor, &org, &user, &agent],
            )
            .await
            .unwrap();
        }
        let org: Option<Uuid> = t
            .query_one("SELECT auth.org_id()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(org, None, "{name}: auth.org_id()");
        for table in w
            .tables
            .iter()
            .chain(&w.views)
            .chain(["public.organizations".to_string(), "auth.users".to_string()].iter())
        {
            let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
            assert_eq!(n, 0, "{name}: {table} shows {n} rows");
        }
        t.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn identity_does_not_survive_the_transaction_on_a_pooled_connection() {
    let w = setup().await;
    let check_clean = |label: &'static str| {
        move |row: tokio_postgres::Row| {
            let uid: Option<Uuid> = row.get(0);
            let org: Option<Uuid> = row.get(1);
            let raw: Option<String> = row.get(2);
            let jobs: i64 = row.get(3);
            assert_eq!(uid, None, "{label}: auth.uid()");
            assert_eq!(org, None, "{label}: auth.org_id()");
            assert!(
                raw.as_deref().unwrap_or("").is_empty(),
                "{label}: keepsake.org_id = {raw:?}"
            );
            assert_eq!(jobs, 0, "{label}: backup_jobs visible");
        }
    };
    const PROBE: &str =
        "SELECT auth.uid(), auth.org_id(), current_setting('keepsake.org_id', true),
                                (SELECT count(*) FROM backup_jobs)";

    // A single connection, as db.app() gives it.
    let mut app = w.db.app().await;
    let t = tx(&mut app, &actor_admin(&w)).await;
    assert!(scalar_i64(&t, "SELECT count(*) FROM backup_jobs").await > 0);
    t.commit().await.unwrap();
    check_clean("after commit")(app.query_one(PROBE, &[]).await.unwrap());
    let t = app.transaction().await.unwrap();
    check_clean("next transaction")(t.query_one(PROBE, &[]).await.unwrap());
    t.rollback().await.unwrap();
    let t = tx(&mut app, &actor_admin(&w)).await;
    t.rollback().await.unwrap();
    check_clean("after rollback")(app.query_one(PROBE, &[]).await.unwrap());

    // The server's own pool with one connection, so the second checkout reuses the first.
    let pool = db::Db::new(w.db.config(), 1).expect("pool");
    {
        let mut c = pool.client().await.unwrap();
        let t = db::begin(&mut c, &actor_admin(&w)).await.unwrap();
        assert!(
            t.query_one("SELECT count(*) FROM backup_jobs", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0
        );
        t.commit().await.unwrap();
    }
    {
        let c = pool.client().await.unwrap();
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "keepsake_app");
        check_clean("pooled connection reused")(c.query_one(PROBE, &[]).await.unwrap());
    }
}

#[tokio::test]
async fn the_application_role_is_unprivileged_and_owns_nothing() {
    let w = setup().await;
    let r = w
        .owner
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin, rolinherit FROM pg_roles WHERE rolname = 'keepsake_app'",
            &[],
        )
        .await
        .unwrap();
    for (i, attr) in [
        "SUPERUSER",
        "BYPASSRLS",
        "CREATEROLE",
        "CREATEDB",
        "LOGIN",
        "INHERIT",
    ]
    .iter()
    .enumerate()
    {
        assert!(!r.get::<_, bool>(i), "keepsake_app has {attr}");
    }
    for (what, sql) in [
        (
            "relations",
            "SELECT count(*) FROM pg_class WHERE relowner = 'keepsake_app'::regrole",
        ),
        (
            "functions",
            "SELECT count(*) FROM pg_proc WHERE proowner = 'keepsake_app'::regrole",
        ),
        (
            "types",
            "SELECT count(*) FROM pg_type WHERE typowner = 'keepsake_app'::regrole",
        ),
        (
            "schemas",
            "SELECT count(*) FROM pg_namespace WHERE nspowner = 'keepsake_app'::regrole",
        ),
    ] {
        assert_eq!(
            scalar_i64(&w.owner, sql).await,
            0,
            "keepsake_app owns {what}"
        );
    }
    // No privilege beyond SELECT/INSERT/UPDATE/DELETE on any table, and no CREATE anywhere.
    let extra = scalar_i64(
        &w.owner,
        "SELECT count(*) FROM information_schema.role_table_grants
         WHERE grantee = 'keepsake_app' AND privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')",
    )
    .await;
    assert_eq!(
        extra, 0,
        "keepsake_app holds TRUNCATE/REFERENCES/TRIGGER somewhere"
    );
    let create = w
        .owner
        .query_one(
            "SELECT has_schema_privilege('keepsake_app', 'public', 'CREATE') OR has_schema_privilege('keepsake_app', 'auth', 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(!create);
    let app = w.db.app().await;
    let who: String = app
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "keepsake_app");
    let e = app
        .batch_execute("ALTER TABLE backup_jobs DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = app
        .batch_execute("SET row_security = off; SELECT count(*) FROM backup_jobs")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "42501",
        "row_security=off must error, not bypass: {}",
        describe(&e)
    );
}

#[tokio::test]
async fn every_organisation_table_forces_row_level_security_with_policies() {
    let db = testkit::test_db().await;
    let c = db.owner().await;
    let mut tables = tenant_tables(&c).await;
    tables.push("public.organizations".into());
    tables.push("auth.users".into());
    assert!(tables.len() >= 40);
    for t in &tables {
        let r = c
            .query_one(
                "SELECT c.relrowsecurity, c.relforcerowsecurity,
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 'keepsake_app'::regrole = ANY (p.polroles)),
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 'keepsake_app'::regrole = ANY (p.polroles)
                            AND coalesce(pg_get_expr(p.polqual, p.polrelid), '') NOT LIKE '%auth.org_id()%'
                            AND coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') NOT LIKE '%auth.org_id()%'),
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 0::oid = ANY (p.polroles))
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[t],
            )
            .await
            .unwrap();
        assert!(r.get::<_, bool>(0), "{t}: row-level security not enabled");
        assert!(r.get::<_, bool>(1), "{t}: row-level security not forced");
        assert!(r.get::<_, i64>(2) > 0, "{t}: no policies for keepsake_app");
        assert_eq!(
            r.get::<_, i64>(3),
            0,
            "{t}: a keepsake_app policy is not scoped by auth.org_id()"
        );
        assert_eq!(r.get::<_, i64>(4), 0, "{t}: a policy applies to PUBLIC");
    }
    // Policies exist per command (not FOR ALL) so each command is decided explicitly.
    let all = scalar_i64(
        &c,
        "SELECT count(*) FROM pg_policies WHERE 'keepsake_app' = ANY (roles) AND cmd = 'ALL'",
    )
    .await;
    assert_eq!(all, 0);
    // Views read with the caller's rights.
    let rows = c
        .query(
            "SELECT c.relname::text, coalesce(c.reloptions::text, '') FROM pg_class c
             WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 3);
    for r in rows {
        let (v, opts): (String, String) = (r.get(0), r.get(1));
        assert!(
            opts.contains("security_invoker=true"),
            "view {v} is not security_invoker ({opts})"
        );
    }
}
