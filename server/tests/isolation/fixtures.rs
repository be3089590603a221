//! The fixture rows: minimal valid rows for every table with organisation data, in insertion
//! order, and `Inst` — one organisation + one machine worth of them, with fresh ids per instance.

use std::collections::HashMap;

use crate::schema_support::*;
use uuid::Uuid;

/// Placeholders of the fixtures besides {org}, {n} (instance tag) and {recipient}: each gets a
/// fresh uuid per instance.
pub const KEYS: &[&str] = &[
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
/// (organisation + machine) gets its own copy. A table missing here fails `setup()` loudly.
pub const FIXTURES: &[(&str, &str)] = &[
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
pub struct Inst {
    pub org: Uuid,
    pub tag: String,
    pub ids: HashMap<&'static str, Uuid>,
}

impl Inst {
    pub fn new(org: Uuid, tag: &str) -> Inst {
        Inst {
            org,
            tag: tag.to_string(),
            ids: KEYS.iter().map(|k| (*k, Uuid::new_v4())).collect(),
        }
    }
    pub fn id(&self, key: &str) -> Uuid {
        self.ids[key]
    }
    pub fn render(&self, sql: &str) -> String {
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
