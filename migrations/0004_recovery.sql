-- 0004 — recovery management: recovery points, disaster scenarios, recovery jobs, validations and
-- logs.

CREATE TYPE public.disaster_scenario_kind AS ENUM (
    'device_loss', 'device_theft', 'hardware_failure', 'ransomware', 'accidental_deletion',
    'site_disaster', 'destination_outage', 'server_outage');

-- Relative, '/'-separated paths without '.'/'..' components ('' is not allowed: an empty prefix
-- list already means "everything").
CREATE FUNCTION public.relative_paths_valid(paths text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT paths IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM unnest(paths) p
        WHERE p IS NULL OR length(p) NOT BETWEEN 1 AND 32768 OR left(p, 1) = '/'
           OR p ~ '(^|/)\.\.?(/|$)' OR p ~ '//' OR p ~ '[[:cntrl:]]')
$$;

-- ---------------------------------------------------------------------------------------------
-- recovery_points (seed) — a restorable state: source S at commit seq N (the file versions live
-- at N), with its retention deadline.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.recovery_points (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    backup_job_id            uuid,
    organization_id          uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    agent_id                 uuid,
    source_id                uuid,
    seq                      bigint CHECK (seq IS NULL OR seq > 0),
    point_in_time            timestamptz NOT NULL,
    recovery_type            public.recovery_type_enum NOT NULL,
    data_integrity_verified  boolean NOT NULL DEFAULT false,
    backup_size_bytes        bigint NOT NULL CHECK (backup_size_bytes >= 0),
    compressed_size_bytes    bigint CHECK (compressed_size_bytes IS NULL OR compressed_size_bytes >= 0),
    file_count               integer NOT NULL CHECK (file_count >= 0),
    retention_expires_at     timestamptz NOT NULL,
    is_wedding_critical      boolean NOT NULL DEFAULT false,
    -- Never removed by cleanup while set (litigation, insurance claims).
    legal_hold               boolean NOT NULL DEFAULT false,
    metadata                 jsonb,
    created_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recovery_points_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id),
    CONSTRAINT recovery_points_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id),
    CONSTRAINT recovery_points_source_seq CHECK ((source_id IS NULL) = (seq IS NULL)
                                                 AND (source_id IS NULL OR agent_id IS NOT NULL)),
    CONSTRAINT recovery_points_source_seq_key UNIQUE (source_id, seq),
    CONSTRAINT recovery_points_id_org_key UNIQUE (id, organization_id)
);
-- The seed's partial predicate (retention_expires_at > CURRENT_TIMESTAMP) is not immutable and
-- cannot be used in an index; a plain index serves the expiry scan of cleanup.
CREATE INDEX idx_recovery_points_retention ON public.recovery_points (organization_id, retention_expires_at);
CREATE INDEX recovery_points_org_time_idx ON public.recovery_points (organization_id, point_in_time DESC);
CREATE INDEX recovery_points_source_time_idx ON public.recovery_points (source_id, point_in_time DESC)
    WHERE source_id IS NOT NULL;
CREATE INDEX recovery_points_job_idx ON public.recovery_points (backup_job_id) WHERE backup_job_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- disaster_scenarios — predefined recovery procedures ("laptop stolen at a venue").
-- recovery_job_templates: JSON array of objects, each creating recovery jobs when the scenario is
-- started (start_disaster_recovery()):
--   {"source_id": uuid}            restore that source, or
--   {"from_agent_id": uuid}        restore every source of that (lost) machine, or
--   {}                             restore every source of the organisation;
--   optional "path_prefixes": [..], "recovery_type": "...".
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.disaster_scenarios (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id         uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name                    text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    scenario_kind           public.disaster_scenario_kind NOT NULL,
    description             text,
    -- Ordered human procedure: [{"title": "...", "instructions": "...", "role": "..."}].
    steps                   jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(steps) = 'array'),
    -- Who may execute the procedure.
    responsible_roles       public.user_role[] NOT NULL DEFAULT ARRAY['owner', 'admin', 'emergency_contact']::public.user_role[],
    expected_rto            interval CHECK (expected_rto IS NULL OR expected_rto > interval '0'),
    expected_rpo            interval CHECK (expected_rpo IS NULL OR expected_rpo >= interval '0'),
    recovery_type           public.recovery_type_enum NOT NULL DEFAULT 'emergency_recovery',
    recovery_job_templates  jsonb NOT NULL DEFAULT '[]'::jsonb
                            CHECK (jsonb_typeof(recovery_job_templates) = 'array'),
    is_active               boolean NOT NULL DEFAULT true,
    last_tested_at          timestamptz,
    last_executed_at        timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT disaster_scenarios_id_org_key UNIQUE (id, organization_id),
    CONSTRAINT disaster_scenarios_org_name_key UNIQUE (organization_id, name)
);

-- ---------------------------------------------------------------------------------------------
-- recovery_jobs (seed) — a restore request handed to an agent (the target machine), which claims
-- it with a lease and reports progress.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.recovery_jobs (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recovery_point_id      uuid,
    organization_id        uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    initiated_by           uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    recovery_type          public.recovery_type_enum NOT NULL,
    target_location        text NOT NULL CHECK (length(target_location) BETWEEN 1 AND 4096),
    status                 public.recovery_job_status NOT NULL DEFAULT 'initiated',
    progress_percentage    integer NOT NULL DEFAULT 0 CHECK (progress_percentage BETWEEN 0 AND 100),
    estimated_completion   timestamptz,
    started_at             timestamptz DEFAULT now(),
    completed_at           timestamptz,
    files_recovered        integer NOT NULL DEFAULT 0 CHECK (files_recovered >= 0),
    bytes_recovered        bigint NOT NULL DEFAULT 0 CHECK (bytes_recovered >= 0),
    verification_passed    boolean,
    is_emergency_recovery  boolean NOT NULL DEFAULT false,
    notes                  text,
    -- Keepsake additions
    source_id              uuid,
    target_agent_id        uuid,
    target_directory       text CHECK (target_directory IS NULL OR length(target_directory) BETWEEN 1 AND 4096),
    path_prefixes          text[] NOT NULL DEFAULT '{}'
                           CONSTRAINT recovery_jobs_prefixes_valid CHECK (public.relative_paths_valid(path_prefixes)),
    point_in_time          timestamptz,
    disaster_scenario_id   uuid,
    claimed_by             uuid,
    claimed_at             timestamptz,
    lease_expires_at       timestamptz,
    attempts               integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    files_total            bigint CHECK (files_total IS NULL OR files_total >= 0),
    bytes_total            bigint CHECK (bytes_total IS NULL OR bytes_total >= 0),
    error_message          text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- A referenced recovery point can never be deleted (cleanup skips it).
    CONSTRAINT recovery_jobs_point_fk FOREIGN KEY (recovery_point_id, organization_id)
        REFERENCES public.recovery_points (id, organization_id) ON DELETE RESTRICT,
    CONSTRAINT recovery_jobs_source_fk FOREIGN KEY (source_id, organization_id)
        REFERENCES public.backup_sources (id, organization_id),
    CONSTRAINT recovery_jobs_target_agent_fk FOREIGN KEY (target_agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT recovery_jobs_claimed_by_fk FOREIGN KEY (claimed_by, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT recovery_jobs_scenario_fk FOREIGN KEY (disaster_scenario_id, organization_id)
        REFERENCES public.disaster_scenarios (id, organization_id) ON DELETE SET NULL (disaster_scenario_id),
    CONSTRAINT recovery_jobs_what CHECK (recovery_point_id IS NOT NULL OR (source_id IS NOT NULL AND point_in_time IS NOT NULL)),
    CONSTRAINT recovery_jobs_claim_consistent CHECK ((claimed_by IS NULL) = (claimed_at IS NULL)),
    CONSTRAINT recovery_jobs_completed_at CHECK (status <> 'completed' OR completed_at IS NOT NULL),
    CONSTRAINT recovery_jobs_id_org_key UNIQUE (id, organization_id)
);
CREATE INDEX recovery_jobs_org_status_idx ON public.recovery_jobs (organization_id, status, created_at DESC);
CREATE INDEX recovery_jobs_target_idx ON public.recovery_jobs (target_agent_id, status)
    WHERE status IN ('initiated', 'queued', 'claimed', 'running', 'verifying');
CREATE INDEX recovery_jobs_point_idx ON public.recovery_jobs (recovery_point_id) WHERE recovery_point_id IS NOT NULL;
CREATE INDEX recovery_jobs_emergency_idx ON public.recovery_jobs (organization_id, created_at DESC) WHERE is_emergency_recovery;

-- ---------------------------------------------------------------------------------------------
-- recovery_validations — post-restore integrity check of a recovery job (done by the agent that
-- restored, re-hashing the files with the chunk-ID key).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.recovery_validations (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    recovery_job_id  uuid NOT NULL,
    agent_id         uuid,
    files_checked    bigint NOT NULL DEFAULT 0 CHECK (files_checked >= 0),
    bytes_checked    bigint NOT NULL DEFAULT 0 CHECK (bytes_checked >= 0),
    mismatches       integer NOT NULL DEFAULT 0 CHECK (mismatches >= 0),
    missing          integer NOT NULL DEFAULT 0 CHECK (missing >= 0),
    extra            integer NOT NULL DEFAULT 0 CHECK (extra >= 0),
    passed           boolean NOT NULL,
    details          jsonb,
    started_at       timestamptz,
    completed_at     timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recovery_validations_job_fk FOREIGN KEY (recovery_job_id, organization_id)
        REFERENCES public.recovery_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT recovery_validations_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT recovery_validations_passed_means_clean CHECK (NOT passed OR (mismatches = 0 AND missing = 0))
);
CREATE INDEX recovery_validations_job_idx ON public.recovery_validations (recovery_job_id);
CREATE INDEX recovery_validations_org_idx ON public.recovery_validations (organization_id, created_at DESC);

-- ---------------------------------------------------------------------------------------------
-- recovery_logs — step-by-step audit of a recovery.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.recovery_logs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    recovery_job_id  uuid NOT NULL,
    agent_id         uuid,
    step             text NOT NULL CHECK (length(step) BETWEEN 1 AND 100),
    level            public.log_level NOT NULL DEFAULT 'info',
    message          text NOT NULL CHECK (length(message) <= 20000),
    details          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recovery_logs_job_fk FOREIGN KEY (recovery_job_id, organization_id)
        REFERENCES public.recovery_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT recovery_logs_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);
CREATE INDEX recovery_logs_job_idx ON public.recovery_logs (recovery_job_id, created_at);
CREATE INDEX recovery_logs_org_idx ON public.recovery_logs (organization_id, created_at DESC);
