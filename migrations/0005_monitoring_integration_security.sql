-- 0005 — monitoring & analytics, integrations, and security (encryption keys, audit trail).

CREATE TYPE public.alert_severity AS ENUM ('info', 'warning', 'critical');
CREATE TYPE public.alert_event AS ENUM (
    'backup_failed', 'backup_missed', 'agent_offline', 'destination_unhealthy', 'storage_threshold',
    'checksum_mismatch', 'recovery_failed', 'wedding_critical_at_risk', 'key_rotation_due');
CREATE TYPE public.vendor_supplier_type AS ENUM ('photographer', 'videographer', 'planner', 'venue');
CREATE TYPE public.wedding_data_status AS ENUM ('upcoming', 'active', 'delivered', 'archived');

-- http(s) URLs only.
CREATE FUNCTION public.urls_valid(urls text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT urls IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM unnest(urls) u WHERE u IS NULL OR u !~ '^https?://[^[:space:]/]+[^[:space:]]*$' OR length(u) > 2048)
$$;

-- ---------------------------------------------------------------------------------------------
-- Monitoring & analytics
-- ---------------------------------------------------------------------------------------------

-- backup_metrics — performance and success-rate samples (agents and server).
CREATE TABLE public.backup_metrics (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    agent_id         uuid,
    source_id        uuid,
    backup_job_id    uuid,
    destination_id   uuid,
    metric_name      text NOT NULL CHECK (metric_name ~ '^[a-z][a-z0-9_.]{0,99}$'),
    metric_value     double precision NOT NULL
                     CHECK (metric_value NOT IN ('NaN'::double precision, 'Infinity'::double precision, '-Infinity'::double precision)),
    unit             text CHECK (unit IS NULL OR length(unit) <= 32),
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_metrics_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT backup_metrics_source_fk FOREIGN KEY (source_id, organization_id)
        REFERENCES public.backup_sources (id, organization_id),
    CONSTRAINT backup_metrics_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_metrics_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE
);
CREATE INDEX backup_metrics_org_name_time_idx ON public.backup_metrics (organization_id, metric_name, recorded_at DESC);
CREATE INDEX backup_metrics_job_idx ON public.backup_metrics (backup_job_id) WHERE backup_job_id IS NOT NULL;

-- storage_usage — per destination per day: logical bytes protected vs bytes actually stored.
CREATE TABLE public.storage_usage (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    destination_id   uuid NOT NULL,
    usage_date       date NOT NULL,
    logical_bytes    bigint NOT NULL DEFAULT 0 CHECK (logical_bytes >= 0),
    stored_bytes     bigint NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    capacity_bytes   bigint CHECK (capacity_bytes IS NULL OR capacity_bytes > 0),
    blob_count       bigint NOT NULL DEFAULT 0 CHECK (blob_count >= 0),
    pack_count       bigint NOT NULL DEFAULT 0 CHECK (pack_count >= 0),
    -- logical / stored: the combined gain of deduplication and compression.
    dedup_ratio      numeric(14,4) GENERATED ALWAYS AS (
                         CASE WHEN stored_bytes > 0 THEN round(logical_bytes::numeric / stored_bytes, 4) END) STORED,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT storage_usage_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT storage_usage_destination_day_key UNIQUE (destination_id, usage_date)
);
CREATE INDEX storage_usage_org_date_idx ON public.storage_usage (organization_id, usage_date DESC);

-- storage_analytics (seed) — daily cost/efficiency figures; destination_id NULL = all destinations.
CREATE TABLE public.storage_analytics (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id          uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    destination_id           uuid,
    measurement_date         date NOT NULL,
    total_storage_bytes      bigint NOT NULL CHECK (total_storage_bytes >= 0),
    used_storage_bytes       bigint NOT NULL CHECK (used_storage_bytes >= 0),
    available_storage_bytes  bigint NOT NULL CHECK (available_storage_bytes >= 0),
    growth_rate_daily        numeric(10,2),
    cost_daily               numeric(10,2) CHECK (cost_daily IS NULL OR cost_daily >= 0),
    backup_efficiency_score  numeric(5,2) CHECK (backup_efficiency_score IS NULL OR backup_efficiency_score BETWEEN 0 AND 100),
    deduplication_savings    numeric(10,2) NOT NULL DEFAULT 0,
    compression_savings      numeric(10,2) NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT storage_analytics_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    -- The seed's plain UNIQUE let duplicate (org, NULL, date) rows through.
    CONSTRAINT storage_analytics_org_destination_date_key
        UNIQUE NULLS NOT DISTINCT (organization_id, destination_id, measurement_date)
);
CREATE INDEX idx_storage_analytics_org_date ON public.storage_analytics (organization_id, measurement_date DESC);

-- alert_configurations — which event notifies whom, how, above which threshold.
CREATE TABLE public.alert_configurations (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id            uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                       text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    event                      public.alert_event NOT NULL,
    severity                   public.alert_severity NOT NULL DEFAULT 'warning',
    -- e.g. storage_threshold: percent used; backup_missed: hours since last success.
    threshold                  numeric,
    threshold_unit             text CHECK (threshold_unit IS NULL OR length(threshold_unit) <= 32),
    evaluation_window          interval CHECK (evaluation_window IS NULL OR evaluation_window > interval '0'),
    cooldown                   interval NOT NULL DEFAULT interval '15 minutes' CHECK (cooldown >= interval '0'),
    channels                   text[] NOT NULL DEFAULT ARRAY['email']
                               CHECK (cardinality(channels) >= 1
                                      AND channels <@ ARRAY['email', 'sms', 'webhook', 'push']),
    notify_user_ids            uuid[] NOT NULL DEFAULT '{}',
    notify_emergency_contacts  boolean NOT NULL DEFAULT false,
    webhook_url                text CHECK (webhook_url IS NULL OR public.urls_valid(ARRAY[webhook_url])),
    agent_id                   uuid,
    destination_id             uuid,
    enabled                    boolean NOT NULL DEFAULT true,
    last_triggered_at          timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_configurations_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT alert_configurations_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT alert_configurations_webhook CHECK (NOT ('webhook' = ANY (channels)) OR webhook_url IS NOT NULL)
);
CREATE INDEX alert_configurations_org_event_idx ON public.alert_configurations (organization_id, event) WHERE enabled;

-- compliance_reports — generated data-protection reports for a period.
CREATE TABLE public.compliance_reports (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    report_type        public.compliance_type_enum NOT NULL,
    period_start       date NOT NULL,
    period_end         date NOT NULL,
    status             public.compliance_status_enum NOT NULL DEFAULT 'pending_review',
    summary            jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(summary) = 'object'),
    findings           jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(findings) = 'array'),
    report_object_key  text,
    generated_by       uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    generated_at       timestamptz NOT NULL DEFAULT now(),
    approved_by        uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    approved_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT compliance_reports_period CHECK (period_end >= period_start),
    CONSTRAINT compliance_reports_approval CHECK ((approved_by IS NULL) = (approved_at IS NULL))
);
CREATE INDEX compliance_reports_org_idx ON public.compliance_reports (organization_id, report_type, period_end DESC);

-- backup_compliance_logs (seed) — compliance reviews and their gaps.
CREATE TABLE public.backup_compliance_logs (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    compliance_type    public.compliance_type_enum NOT NULL,
    compliance_date    date NOT NULL,
    status             public.compliance_status_enum NOT NULL,
    requirements_met   jsonb NOT NULL,
    gaps_identified    jsonb,
    remediation_plan   text,
    auditor_notes      text,
    next_review_date   date,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_compliance_logs_review_after CHECK (next_review_date IS NULL OR next_review_date >= compliance_date)
);
CREATE INDEX backup_compliance_logs_org_idx ON public.backup_compliance_logs (organization_id, compliance_date DESC);

-- emergency_contacts — disaster-recovery escalation list, called in priority order.
CREATE TABLE public.emergency_contacts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    user_id          uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    name             text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    phone            text CHECK (phone IS NULL OR phone ~ '^\+?[0-9 ().-]{3,32}$'),
    email            text CHECK (email IS NULL OR (email = lower(email) AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$')),
    priority_order   integer NOT NULL DEFAULT 1 CHECK (priority_order >= 1),
    notify_on        public.alert_severity[] NOT NULL DEFAULT ARRAY['critical']::public.alert_severity[]
                     CHECK (cardinality(notify_on) >= 1),
    is_active        boolean NOT NULL DEFAULT true,
    notes            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT emergency_contacts_reachable CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE INDEX emergency_contacts_org_idx ON public.emergency_contacts (organization_id, priority_order) WHERE is_active;

-- emergency_notifications — pages sent to the emergency contacts (written by backup_failure_alert
-- and the server's alerting; delivered by the server).
CREATE TABLE public.emergency_notifications (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    notification_type  text NOT NULL CHECK (notification_type ~ '^[a-z][a-z0-9_]{0,63}$'),
    severity           public.alert_severity NOT NULL,
    message            text NOT NULL CHECK (length(message) <= 4000),
    metadata           jsonb,
    backup_job_id      uuid,
    recovery_job_id    uuid,
    delivery_status    text NOT NULL DEFAULT 'pending' CHECK (delivery_status IN ('pending', 'sent', 'failed')),
    delivery_attempts  integer NOT NULL DEFAULT 0 CHECK (delivery_attempts >= 0),
    delivered_at       timestamptz,
    acknowledged_at    timestamptz,
    acknowledged_by    uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT emergency_notifications_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT emergency_notifications_recovery_fk FOREIGN KEY (recovery_job_id, organization_id)
        REFERENCES public.recovery_jobs (id, organization_id) ON DELETE CASCADE
);
-- One notification of a kind per job: a failed job updated again does not page twice.
CREATE UNIQUE INDEX emergency_notifications_job_once ON public.emergency_notifications (backup_job_id, notification_type)
    WHERE backup_job_id IS NOT NULL;
CREATE UNIQUE INDEX emergency_notifications_recovery_once ON public.emergency_notifications (recovery_job_id, notification_type)
    WHERE recovery_job_id IS NOT NULL;
CREATE INDEX emergency_notifications_org_idx ON public.emergency_notifications (organization_id, created_at DESC);
CREATE INDEX emergency_notifications_pending_idx ON public.emergency_notifications (created_at) WHERE delivery_status = 'pending';

-- ---------------------------------------------------------------------------------------------
-- Integrations
-- ---------------------------------------------------------------------------------------------

-- backup_integrations — registry of connected services (any kind), with non-secret config.
CREATE TABLE public.backup_integrations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    integration_type       text NOT NULL CHECK (integration_type IN (
                               'cloud_storage', 'monitoring', 'wedding_platform', 'backup_service', 'webhook', 'other')),
    provider               text NOT NULL CHECK (length(btrim(provider)) BETWEEN 1 AND 100),
    name                   text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    config                 jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    credentials_encrypted  bytea,
    status                 text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'error', 'disconnected')),
    enabled                boolean NOT NULL DEFAULT true,
    last_sync_at           timestamptz,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_integrations_org_name_key UNIQUE (organization_id, name)
);

-- cloud_backup_integrations (seed) — cloud provider accounts.
CREATE TABLE public.cloud_backup_integrations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    provider_name          varchar(100) NOT NULL,
    service_type           varchar(100) NOT NULL,
    credentials_encrypted  text NOT NULL,
    region                 varchar(100),
    bucket_name            varchar(255),
    access_permissions     jsonb,
    bandwidth_limit_mbps   integer CHECK (bandwidth_limit_mbps IS NULL OR bandwidth_limit_mbps > 0),
    cost_configuration     jsonb,
    sync_enabled           boolean NOT NULL DEFAULT true,
    last_sync_at           timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cloud_backup_integrations_org_idx ON public.cloud_backup_integrations (organization_id);

-- monitoring_integrations (seed) — external monitoring/alerting services.
CREATE TABLE public.monitoring_integrations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    monitoring_service     varchar(100) NOT NULL,
    webhook_url            text CHECK (webhook_url IS NULL OR public.urls_valid(ARRAY[webhook_url])),
    alert_thresholds       jsonb,
    notification_channels  jsonb,
    escalation_rules       jsonb,
    is_active              boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX monitoring_integrations_org_idx ON public.monitoring_integrations (organization_id);

-- backup_service_apis (seed) — third-party backup service endpoints.
CREATE TABLE public.backup_service_apis (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id         uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    service_name            varchar(255) NOT NULL,
    api_endpoint            text NOT NULL CHECK (public.urls_valid(ARRAY[api_endpoint])),
    authentication_config   jsonb NOT NULL,
    rate_limits             jsonb,
    supported_operations    jsonb,
    health_check_url        text CHECK (health_check_url IS NULL OR public.urls_valid(ARRAY[health_check_url])),
    last_health_check       timestamptz,
    last_health_status      public.health_status_type,
    is_active               boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backup_service_apis_org_idx ON public.backup_service_apis (organization_id);

-- wedding_platform_integrations (seed) — studio-management platforms (Tave, HoneyBook, ...) that
-- tell us which weddings are coming, for prioritisation.
CREATE TABLE public.wedding_platform_integrations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    platform_name          varchar(255) NOT NULL,
    data_types             jsonb NOT NULL,
    credentials_encrypted  text,
    external_account_id    text,
    backup_priority        integer NOT NULL DEFAULT 1 CHECK (backup_priority BETWEEN 1 AND 5),
    sync_frequency         public.backup_frequency_type NOT NULL DEFAULT 'daily',
    last_sync_at           timestamptz,
    sync_status            varchar(100) NOT NULL DEFAULT 'active'
                           CHECK (sync_status IN ('active', 'paused', 'error', 'disconnected')),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wedding_platform_integrations_org_idx ON public.wedding_platform_integrations (organization_id);

-- vendor_backup_configs — per supplier type (and optionally per machine) agent behaviour.
CREATE TABLE public.vendor_backup_configs (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    supplier_type          public.vendor_supplier_type NOT NULL,
    agent_id               uuid,            -- NULL = default for this supplier type
    strategy_id            uuid,
    bandwidth_limit_kbps   integer CHECK (bandwidth_limit_kbps IS NULL OR bandwidth_limit_kbps > 0),
    -- A file is taken only once size and mtime have been stable this long (card dumps).
    settle_window_seconds  integer NOT NULL DEFAULT 60 CHECK (settle_window_seconds BETWEEN 0 AND 86400),
    -- Daily window for bulk uploads (may wrap midnight); NULL = any time.
    schedule_window_start  time,
    schedule_window_end    time,
    realtime_enabled       boolean NOT NULL DEFAULT true,
    max_file_size_bytes    bigint CHECK (max_file_size_bytes IS NULL OR max_file_size_bytes > 0),
    -- File extensions uploaded first (e.g. RAW before previews).
    priority_extensions    text[] NOT NULL DEFAULT '{}',
    extra_settings         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(extra_settings) = 'object'),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT vendor_backup_configs_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT vendor_backup_configs_strategy_fk FOREIGN KEY (strategy_id, organization_id)
        REFERENCES public.backup_strategies (id, organization_id) ON DELETE SET NULL (strategy_id),
    CONSTRAINT vendor_backup_configs_window CHECK ((schedule_window_start IS NULL) = (schedule_window_end IS NULL)
                                                   AND (schedule_window_start IS NULL OR schedule_window_start <> schedule_window_end)),
    CONSTRAINT vendor_backup_configs_scope_key UNIQUE NULLS NOT DISTINCT (organization_id, supplier_type, agent_id)
);

-- wedding_critical_data — what to protect first: the folders of a wedding in the days around it.
CREATE TABLE public.wedding_critical_data (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    wedding_name        text NOT NULL CHECK (length(btrim(wedding_name)) BETWEEN 1 AND 200),
    couple_names        text,
    wedding_date        date NOT NULL,
    -- gitignore-style patterns relative to the source roots, e.g. '2025/2025-06-14 Smith/**'.
    path_patterns       text[] NOT NULL CHECK (cardinality(path_patterns) >= 1
                                               AND array_position(path_patterns, NULL) IS NULL
                                               AND array_position(path_patterns, '') IS NULL),
    agent_id            uuid,
    source_id           uuid,
    window_before_days  integer NOT NULL DEFAULT 7 CHECK (window_before_days BETWEEN 0 AND 365),
    window_after_days   integer NOT NULL DEFAULT 30 CHECK (window_after_days BETWEEN 0 AND 3650),
    critical_from       date GENERATED ALWAYS AS (wedding_date - window_before_days) STORED,
    critical_until      date GENERATED ALWAYS AS (wedding_date + window_after_days) STORED,
    priority            integer NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 5),   -- 1 = highest
    delivery_date       date,
    status              public.wedding_data_status NOT NULL DEFAULT 'upcoming',
    notes               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wedding_critical_data_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT wedding_critical_data_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id) ON DELETE CASCADE,
    CONSTRAINT wedding_critical_data_source_needs_agent CHECK (source_id IS NULL OR agent_id IS NOT NULL)
);
CREATE INDEX wedding_critical_data_window_idx ON public.wedding_critical_data (organization_id, critical_from, critical_until);

-- backup_dependencies — "A depends on B": between two sources (e.g. a Lightroom catalog and the
-- RAW folder it indexes) or two strategies. No self-dependency; cycles refused by trigger.
CREATE TABLE public.backup_dependencies (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id         uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    dependent_source_id     uuid,
    depends_on_source_id    uuid,
    dependent_strategy_id   uuid,
    depends_on_strategy_id  uuid,
    dependency_type         text NOT NULL DEFAULT 'completes_before'
                            CHECK (dependency_type IN ('completes_before', 'same_recovery_point', 'consistent_snapshot')),
    description             text,
    is_active               boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_dependencies_dependent_source_fk FOREIGN KEY (dependent_source_id, organization_id)
        REFERENCES public.backup_sources (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_dependencies_depends_on_source_fk FOREIGN KEY (depends_on_source_id, organization_id)
        REFERENCES public.backup_sources (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_dependencies_dependent_strategy_fk FOREIGN KEY (dependent_strategy_id, organization_id)
        REFERENCES public.backup_strategies (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_dependencies_depends_on_strategy_fk FOREIGN KEY (depends_on_strategy_id, organization_id)
        REFERENCES public.backup_strategies (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_dependencies_one_pair CHECK (
        (dependent_source_id IS NOT NULL AND depends_on_source_id IS NOT NULL
         AND dependent_strategy_id IS NULL AND depends_on_strategy_id IS NULL)
        OR
        (dependent_strategy_id IS NOT NULL AND depends_on_strategy_id IS NOT NULL
         AND dependent_source_id IS NULL AND depends_on_source_id IS NULL)),
    CONSTRAINT backup_dependencies_not_self CHECK (
        (dependent_source_id IS NULL OR dependent_source_id <> depends_on_source_id)
        AND (dependent_strategy_id IS NULL OR dependent_strategy_id <> depends_on_strategy_id)),
    CONSTRAINT backup_dependencies_edge_key UNIQUE NULLS NOT DISTINCT
        (organization_id, dependent_source_id, depends_on_source_id, dependent_strategy_id, depends_on_strategy_id)
);
CREATE INDEX backup_dependencies_source_idx ON public.backup_dependencies (depends_on_source_id) WHERE depends_on_source_id IS NOT NULL;
CREATE INDEX backup_dependencies_strategy_idx ON public.backup_dependencies (depends_on_strategy_id) WHERE depends_on_strategy_id IS NOT NULL;

-- failover_configurations — primary/secondary destination pairs, health thresholds, and the
-- ordered list of server URLs agents fail over between.
CREATE TABLE public.failover_configurations (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id           uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                      text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    primary_destination_id    uuid NOT NULL,
    secondary_destination_id  uuid NOT NULL,
    health_check_interval     interval NOT NULL DEFAULT interval '1 minute' CHECK (health_check_interval > interval '0'),
    failure_threshold         integer NOT NULL DEFAULT 3 CHECK (failure_threshold >= 1),
    recovery_threshold        integer NOT NULL DEFAULT 3 CHECK (recovery_threshold >= 1),
    max_latency_ms            integer CHECK (max_latency_ms IS NULL OR max_latency_ms > 0),
    auto_failover             boolean NOT NULL DEFAULT false,
    auto_failback             boolean NOT NULL DEFAULT false,
    server_urls               text[] NOT NULL DEFAULT '{}' CONSTRAINT failover_configurations_urls_valid CHECK (public.urls_valid(server_urls)),
    current_state             text NOT NULL DEFAULT 'primary' CHECK (current_state IN ('primary', 'failed_over', 'degraded')),
    last_failover_at          timestamptz,
    last_failback_at          timestamptz,
    is_active                 boolean NOT NULL DEFAULT true,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT failover_configurations_primary_fk FOREIGN KEY (primary_destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT failover_configurations_secondary_fk FOREIGN KEY (secondary_destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT failover_configurations_distinct CHECK (primary_destination_id <> secondary_destination_id),
    CONSTRAINT failover_configurations_org_name_key UNIQUE (organization_id, name)
);

-- ---------------------------------------------------------------------------------------------
-- Security
-- ---------------------------------------------------------------------------------------------

-- backup_encryption_keys (seed, adapted to age) — the organisation's data-key recipients and the
-- sealed key bundle. The server never holds a private key: the bundle is age ciphertext (sealed to
-- a passphrase and optional paper-key recipients) and a plaintext age identity is refused.
CREATE TABLE public.backup_encryption_keys (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    key_name             varchar(255) NOT NULL,
    key_type             varchar(100) NOT NULL DEFAULT 'age-x25519' CHECK (key_type = 'age-x25519'),
    -- age X25519 recipient (public key) new data is encrypted to.
    recipient            text NOT NULL CHECK (recipient ~ '^age1[02-9ac-hj-np-z]{58}$'),
    -- Fingerprint of the recipient, for verification (hex).
    key_hash             text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{16,128}$'),
    -- age-encrypted bundle {identity, chunk-ID key}, or a reference to where it is stored.
    key_bundle           bytea CONSTRAINT backup_encryption_keys_bundle_is_age CHECK (
                             key_bundle IS NULL OR (
                                 (substring(key_bundle FROM 1 FOR 21) = 'age-encryption.org/v1'::bytea
                                  OR substring(key_bundle FROM 1 FOR 34) = '-----BEGIN AGE ENCRYPTED FILE-----'::bytea)
                                 AND position('AGE-SECRET-KEY-'::bytea IN key_bundle) = 0
                                 AND octet_length(key_bundle) <= 65536)),
    key_bundle_ref       text,
    -- Extra recipients the bundle is sealed to (paper key), public keys only.
    extra_recipients     text[] NOT NULL DEFAULT '{}'
                         CHECK (array_to_string(extra_recipients, ',') ~ '^(age1[02-9ac-hj-np-z]{58}(,age1[02-9ac-hj-np-z]{58})*)?$'),
    rotation_date        date NOT NULL DEFAULT CURRENT_DATE,
    next_rotation_date   date NOT NULL,
    is_active            boolean NOT NULL DEFAULT true,
    retired_at           timestamptz,
    compliance_level     varchar(100),
    created_by_agent_id  uuid,
    created_by_user_id   uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_encryption_keys_agent_fk FOREIGN KEY (created_by_agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT backup_encryption_keys_bundle_present CHECK (key_bundle IS NOT NULL OR key_bundle_ref IS NOT NULL),
    CONSTRAINT backup_encryption_keys_rotation_order CHECK (next_rotation_date >= rotation_date),
    CONSTRAINT backup_encryption_keys_retired CHECK (is_active = (retired_at IS NULL)),
    CONSTRAINT backup_encryption_keys_org_recipient_key UNIQUE (organization_id, recipient)
);
-- New data goes to exactly one recipient at a time; rotation retires the old key and adds a new one.
CREATE UNIQUE INDEX backup_encryption_keys_one_active ON public.backup_encryption_keys (organization_id) WHERE is_active;

-- backup_audit_trail (seed) — append-only record of who did what.
CREATE TABLE public.backup_audit_trail (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    user_id          uuid REFERENCES auth.users (id) DEFAULT auth.uid(),
    agent_id         uuid DEFAULT auth.agent_id(),
    actor            text NOT NULL DEFAULT coalesce(auth.actor(), 'system')
                     CHECK (actor IN ('user', 'agent', 'system')),
    action           varchar(100) NOT NULL,
    resource_type    varchar(100) NOT NULL,
    resource_id      uuid,
    old_values       jsonb,
    new_values       jsonb,
    ip_address       inet,
    user_agent       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_audit_trail_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);
CREATE INDEX backup_audit_trail_org_time_idx ON public.backup_audit_trail (organization_id, created_at DESC);
CREATE INDEX backup_audit_trail_resource_idx ON public.backup_audit_trail (organization_id, resource_type, resource_id);
