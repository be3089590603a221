-- 0002 — backup configuration: the seed's enums (created before any table uses them), cron and
-- timezone validation, retention policies, strategies, destinations, schedules and exclusions.

-- ---------------------------------------------------------------------------------------------
-- Enums of the seed, plus the two it uses without defining (backup_job_type, recovery_job_status).
-- ---------------------------------------------------------------------------------------------
CREATE TYPE public.backup_strategy_type AS ENUM (
    'full_backup', 'incremental_backup', 'differential_backup', 'continuous_backup', 'wedding_priority_backup');

-- Ordered from most to least frequent where it matters: see backup_frequency_rank().
CREATE TYPE public.backup_frequency_type AS ENUM (
    'real_time', 'hourly', 'daily', 'weekly', 'monthly', 'wedding_triggered');

CREATE TYPE public.backup_destination_type AS ENUM (
    'local_storage', 'cloud_storage', 'offsite_storage', 'tape_storage', 'hybrid_storage');

CREATE TYPE public.backup_job_status AS ENUM (
    'queued', 'running', 'completed', 'failed', 'cancelled', 'paused', 'verifying');

CREATE TYPE public.backup_job_type AS ENUM (
    'full', 'incremental', 'differential', 'continuous', 'verification', 'manual');

CREATE TYPE public.recovery_type_enum AS ENUM (
    'full_recovery', 'partial_recovery', 'file_recovery', 'point_in_time_recovery', 'emergency_recovery');

CREATE TYPE public.recovery_job_status AS ENUM (
    'initiated', 'queued', 'claimed', 'running', 'verifying', 'completed', 'failed', 'cancelled');

CREATE TYPE public.health_status_type AS ENUM ('healthy', 'warning', 'critical', 'offline');

CREATE TYPE public.compliance_type_enum AS ENUM (
    'gdpr_backup', 'iso27001_backup', 'wedding_data_protection', 'business_continuity');

CREATE TYPE public.compliance_status_enum AS ENUM (
    'compliant', 'non_compliant', 'pending_review', 'remediation_required');

CREATE TYPE public.exclusion_scope AS ENUM ('organization', 'agent', 'source');

-- ---------------------------------------------------------------------------------------------
-- Validation helpers
-- ---------------------------------------------------------------------------------------------

-- One field of a 5-field cron expression: comma-separated items, each `*`, a value, or a range
-- `a-b`, optionally followed by a step `/n`. `names` maps names to lo, lo+1, ... (months from 1,
-- weekdays from 0); names are case-insensitive.
CREATE FUNCTION public.cron_field_valid(field text, lo integer, hi integer, names text[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    item text;
    m text[];
    a integer;
    b integer;
    step integer;
BEGIN
    IF field IS NULL OR field = '' THEN
        RETURN false;
    END IF;
    FOREACH item IN ARRAY pg_catalog.string_to_array(lower(field), ',') LOOP
        m := pg_catalog.regexp_match(item, '^(\*|([0-9]{1,2}|[a-z]{3})(-([0-9]{1,2}|[a-z]{3}))?)(/([0-9]{1,2}))?$');
        IF m IS NULL THEN
            RETURN false;
        END IF;
        IF m[1] = '*' THEN
            a := lo;
            b := hi;
        ELSE
            IF m[2] ~ '^[0-9]+$' THEN
                a := m[2]::integer;
            ELSE
                a := pg_catalog.array_position(names, m[2]);
                IF a IS NULL THEN RETURN false; END IF;
                a := a - 1 + lo;
            END IF;
            IF m[4] IS NULL THEN
                b := a;
            ELSIF m[4] ~ '^[0-9]+$' THEN
                b := m[4]::integer;
            ELSE
                b := pg_catalog.array_position(names, m[4]);
                IF b IS NULL THEN RETURN false; END IF;
                b := b - 1 + lo;
            END IF;
            IF a < lo OR a > hi OR b < lo OR b > hi OR a > b THEN
                RETURN false;
            END IF;
        END IF;
        IF m[6] IS NOT NULL THEN
            step := m[6]::integer;
            IF step < 1 OR step > hi - lo + 1 THEN
                RETURN false;
            END IF;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

-- Standard 5-field cron: minute hour day-of-month month day-of-week. Numbers, `*`, ranges, steps,
-- lists, month names (jan..dec) and weekday names (sun..sat); weekday 0 and 7 are Sunday.
CREATE FUNCTION public.is_valid_cron(expr text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    f text[];
BEGIN
    IF expr IS NULL OR length(expr) > 200 THEN
        RETURN false;
    END IF;
    f := pg_catalog.regexp_split_to_array(btrim(expr, E' \t'), E'[ \t]+');
    IF pg_catalog.array_length(f, 1) IS DISTINCT FROM 5 THEN
        RETURN false;
    END IF;
    RETURN public.cron_field_valid(f[1], 0, 59)
       AND public.cron_field_valid(f[2], 0, 23)
       AND public.cron_field_valid(f[3], 1, 31)
       AND public.cron_field_valid(f[4], 1, 12,
             ARRAY['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec'])
       AND public.cron_field_valid(f[5], 0, 7, ARRAY['sun','mon','tue','wed','thu','fri','sat']);
END
$$;

-- A timezone name PostgreSQL knows (pg_timezone_names), e.g. 'Europe/London'. Abbreviations and
-- POSIX offsets are refused so that schedules mean the same thing to the agent's cron library.
CREATE FUNCTION public.is_valid_timezone(tz text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT tz IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = tz)
$$;

-- Lower is more frequent; 'wedding_triggered' runs on wedding events only and ranks last.
CREATE FUNCTION public.backup_frequency_rank(f public.backup_frequency_type) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE f
        WHEN 'real_time' THEN 0 WHEN 'hourly' THEN 1 WHEN 'daily' THEN 2
        WHEN 'weekly' THEN 3 WHEN 'monthly' THEN 4 ELSE 5 END
$$;

-- ---------------------------------------------------------------------------------------------
-- retention_policies — GFS keep rules with wedding-season rules and legal hold.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.retention_policies (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id             uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    description                 text,
    keep_last                   integer NOT NULL DEFAULT 0 CHECK (keep_last >= 0),
    keep_hourly                 integer NOT NULL DEFAULT 0 CHECK (keep_hourly >= 0),
    keep_daily                  integer NOT NULL DEFAULT 0 CHECK (keep_daily >= 0),
    keep_weekly                 integer NOT NULL DEFAULT 0 CHECK (keep_weekly >= 0),
    keep_monthly                integer NOT NULL DEFAULT 0 CHECK (keep_monthly >= 0),
    keep_yearly                 integer NOT NULL DEFAULT 0 CHECK (keep_yearly >= 0),
    keep_within                 interval CHECK (keep_within IS NULL OR keep_within > interval '0'),
    -- Floor: no recovery point younger than this is ever pruned, whatever the keep rules say.
    min_retention               interval NOT NULL DEFAULT interval '30 days'
                                CHECK (min_retention >= interval '0'),
    -- Recovery points holding wedding-critical data are kept at least this long ...
    wedding_critical_retention  interval NOT NULL DEFAULT interval '2 years'
                                CHECK (wedding_critical_retention >= interval '0'),
    -- ... and at least this many of them per source.
    wedding_critical_min_keep   integer NOT NULL DEFAULT 10 CHECK (wedding_critical_min_keep >= 0),
    -- During the organisation's wedding season every keep_* count is multiplied by this.
    in_season_multiplier        numeric(4,2) NOT NULL DEFAULT 1.5 CHECK (in_season_multiplier BETWEEN 1 AND 10),
    legal_hold                  boolean NOT NULL DEFAULT false,
    legal_hold_reason           text,
    legal_hold_set_at           timestamptz,
    legal_hold_set_by           uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    is_default                  boolean NOT NULL DEFAULT false,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retention_policies_keeps_something CHECK (
        keep_last + keep_hourly + keep_daily + keep_weekly + keep_monthly + keep_yearly > 0
        OR keep_within IS NOT NULL),
    CONSTRAINT retention_policies_legal_hold_reason CHECK (NOT legal_hold OR legal_hold_reason IS NOT NULL),
    CONSTRAINT retention_policies_id_org_key UNIQUE (id, organization_id),
    CONSTRAINT retention_policies_org_name_key UNIQUE (organization_id, name)
);
CREATE UNIQUE INDEX retention_policies_one_default ON public.retention_policies (organization_id) WHERE is_default;

-- ---------------------------------------------------------------------------------------------
-- backup_strategies (seed) — master strategy definitions.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_strategies (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id           uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                      varchar(255) NOT NULL CHECK (length(btrim(name)) > 0),
    description               text,
    strategy_type             public.backup_strategy_type NOT NULL,
    backup_frequency          public.backup_frequency_type NOT NULL,
    retention_period          interval NOT NULL CHECK (retention_period > interval '0'),
    -- File contents are always end-to-end encrypted; the column is kept for the seed's API.
    encryption_enabled        boolean NOT NULL DEFAULT true CHECK (encryption_enabled),
    compression_enabled       boolean NOT NULL DEFAULT true,
    priority_level            integer NOT NULL DEFAULT 1 CHECK (priority_level BETWEEN 1 AND 5),
    is_active                 boolean NOT NULL DEFAULT true,
    wedding_season_optimized  boolean NOT NULL DEFAULT false,
    -- Frequencies optimize_wedding_season_backups() switches between (seed: daily / weekly).
    wedding_season_frequency  public.backup_frequency_type NOT NULL DEFAULT 'daily',
    off_season_frequency      public.backup_frequency_type NOT NULL DEFAULT 'weekly',
    retention_policy_id       uuid,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_strategies_retention_fk FOREIGN KEY (retention_policy_id, organization_id)
        REFERENCES public.retention_policies (id, organization_id) ON DELETE SET NULL (retention_policy_id),
    CONSTRAINT backup_strategies_id_org_key UNIQUE (id, organization_id),
    CONSTRAINT backup_strategies_org_name_key UNIQUE (organization_id, name)
);
CREATE INDEX idx_backup_strategy_active_priority ON public.backup_strategies (organization_id, is_active, priority_level)
    WHERE is_active = true;

-- ---------------------------------------------------------------------------------------------
-- backup_destinations (seed) — local, cloud and offsite storage tiers.
-- connection_config holds non-secret settings ({"kind": "local"|"s3", "path"/"bucket", "endpoint",
-- "region", "prefix"}); secrets go to credentials_encrypted (encrypted by the server).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_destinations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                   varchar(255) NOT NULL CHECK (length(btrim(name)) > 0),
    destination_type       public.backup_destination_type NOT NULL,
    connection_config      jsonb NOT NULL CHECK (jsonb_typeof(connection_config) = 'object'),
    credentials_encrypted  bytea,
    storage_capacity       bigint CHECK (storage_capacity IS NULL OR storage_capacity > 0),
    current_usage          bigint NOT NULL DEFAULT 0 CHECK (current_usage >= 0),
    cost_per_gb            numeric(10,4) CHECK (cost_per_gb IS NULL OR cost_per_gb >= 0),
    availability_zone      varchar(100),
    encryption_key_id      varchar(255),
    is_primary             boolean NOT NULL DEFAULT false,
    is_active              boolean NOT NULL DEFAULT true,
    -- Replication order: lower first.
    priority               integer NOT NULL DEFAULT 100 CHECK (priority >= 0),
    health_status          public.health_status_type NOT NULL DEFAULT 'healthy',
    consecutive_failures   integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_health_error      text,
    last_tested_at         timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_destinations_id_org_key UNIQUE (id, organization_id),
    CONSTRAINT backup_destinations_org_name_key UNIQUE (organization_id, name)
);
CREATE UNIQUE INDEX backup_destinations_one_primary ON public.backup_destinations (organization_id) WHERE is_primary;

-- ---------------------------------------------------------------------------------------------
-- backup_schedules — cron schedules (periodic full scans and scheduled runs) of a strategy,
-- optionally narrowed to one agent or one source, with a wedding-season override.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_schedules (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    strategy_id          uuid NOT NULL,
    name                 text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    cron_expression      text NOT NULL CONSTRAINT backup_schedules_cron_valid CHECK (public.is_valid_cron(cron_expression)),
    timezone             text NOT NULL DEFAULT 'UTC'
                         CONSTRAINT backup_schedules_timezone_valid CHECK (public.is_valid_timezone(timezone)),
    -- Used instead of cron_expression during the organisation's wedding season (NULL = same).
    wedding_season_cron  text CONSTRAINT backup_schedules_season_cron_valid
                         CHECK (wedding_season_cron IS NULL OR public.is_valid_cron(wedding_season_cron)),
    agent_id             uuid,
    source_id            uuid,
    full_scan            boolean NOT NULL DEFAULT true,
    enabled              boolean NOT NULL DEFAULT true,
    next_run_at          timestamptz,
    last_run_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_schedules_strategy_fk FOREIGN KEY (strategy_id, organization_id)
        REFERENCES public.backup_strategies (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_schedules_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_schedules_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_schedules_source_needs_agent CHECK (source_id IS NULL OR agent_id IS NOT NULL),
    CONSTRAINT backup_schedules_id_org_key UNIQUE (id, organization_id)
);
CREATE INDEX backup_schedules_org_idx ON public.backup_schedules (organization_id, strategy_id);
CREATE INDEX backup_schedules_due_idx ON public.backup_schedules (next_run_at) WHERE enabled;

-- ---------------------------------------------------------------------------------------------
-- backup_exclusions — gitignore-style rules. Evaluated organisation rules first, then agent rules,
-- then source rules, each by rule_order (then id); as in gitignore the last matching rule wins and
-- a leading '!' re-includes.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_exclusions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    scope            public.exclusion_scope NOT NULL DEFAULT 'organization',
    agent_id         uuid,
    source_id        uuid,
    pattern          text NOT NULL
                     CONSTRAINT backup_exclusions_pattern_valid CHECK (
                         length(pattern) BETWEEN 1 AND 4096
                         AND btrim(pattern) <> ''
                         AND pattern !~ '[[:cntrl:]]'      -- one pattern per row, no control chars
                         AND left(pattern, 1) <> '#'        -- would be a gitignore comment
                         AND btrim(pattern) NOT IN ('!', '/', '!/')),
    is_negation      boolean GENERATED ALWAYS AS (left(pattern, 1) = '!') STORED,
    reason           text,
    enabled          boolean NOT NULL DEFAULT true,
    rule_order       integer NOT NULL DEFAULT 0,
    created_by       uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_exclusions_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_exclusions_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_exclusions_scope_ids CHECK (
        (scope = 'organization' AND agent_id IS NULL AND source_id IS NULL) OR
        (scope = 'agent' AND agent_id IS NOT NULL AND source_id IS NULL) OR
        (scope = 'source' AND agent_id IS NOT NULL AND source_id IS NOT NULL))
);
CREATE INDEX backup_exclusions_order_idx ON public.backup_exclusions (organization_id, scope, rule_order, id);
