-- 0003 — backup operations: jobs, the file-version catalog, manifests, checksums and logs.

CREATE TYPE public.log_level AS ENUM ('debug', 'info', 'warning', 'error', 'critical');
CREATE TYPE public.checksum_subject_kind AS ENUM ('file_content', 'blob', 'pack', 'manifest');
CREATE TYPE public.checksum_status AS ENUM ('pending', 'verified', 'mismatch', 'missing', 'error');

-- ---------------------------------------------------------------------------------------------
-- backup_jobs (seed) — one backup run of one source (or a server-side job such as a verification).
-- A run commits a delta against the source's previous state: `seq` is the per-source commit
-- sequence assigned at commit (NULL until committed), `parent_seq` the state it was computed from.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_jobs (
    id                            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id               uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    strategy_id                   uuid,
    destination_id                uuid,
    schedule_id                   uuid,
    agent_id                      uuid,
    source_id                     uuid,
    job_type                      public.backup_job_type NOT NULL,
    status                        public.backup_job_status NOT NULL DEFAULT 'queued',
    started_at                    timestamptz,
    completed_at                  timestamptz,
    duration_seconds              integer CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    files_processed               integer NOT NULL DEFAULT 0 CHECK (files_processed >= 0),
    bytes_processed               bigint NOT NULL DEFAULT 0 CHECK (bytes_processed >= 0),
    files_failed                  integer NOT NULL DEFAULT 0 CHECK (files_failed >= 0),
    files_added                   integer NOT NULL DEFAULT 0 CHECK (files_added >= 0),
    files_changed                 integer NOT NULL DEFAULT 0 CHECK (files_changed >= 0),
    files_deleted                 integer NOT NULL DEFAULT 0 CHECK (files_deleted >= 0),
    -- Ciphertext bytes of blobs this job newly stored (after dedup and compression): what the
    -- job adds to its destination's usage.
    bytes_new                     bigint NOT NULL DEFAULT 0 CHECK (bytes_new >= 0),
    -- Bytes actually transferred, retries included.
    bytes_sent                    bigint NOT NULL DEFAULT 0 CHECK (bytes_sent >= 0),
    success_rate                  numeric(5,2) CHECK (success_rate IS NULL OR success_rate BETWEEN 0 AND 100),
    error_message                 text,
    backup_manifest               jsonb,
    checksum_verification_passed  boolean,
    wedding_critical_priority     boolean NOT NULL DEFAULT false,
    seq                           bigint CHECK (seq IS NULL OR seq > 0),
    parent_seq                    bigint CHECK (parent_seq IS NULL OR parent_seq >= 0),
    -- Set only by the usage trigger: the bytes credited to the destination (NULL = not yet).
    usage_counted_bytes           bigint,
    heartbeat_at                  timestamptz,
    created_at                    timestamptz NOT NULL DEFAULT now(),
    updated_at                    timestamptz NOT NULL DEFAULT now(),
    -- Deleting a strategy must not destroy job history (the seed cascaded).
    CONSTRAINT backup_jobs_strategy_fk FOREIGN KEY (strategy_id, organization_id)
        REFERENCES public.backup_strategies (id, organization_id) ON DELETE SET NULL (strategy_id),
    CONSTRAINT backup_jobs_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE SET NULL (destination_id),
    CONSTRAINT backup_jobs_schedule_fk FOREIGN KEY (schedule_id, organization_id)
        REFERENCES public.backup_schedules (id, organization_id) ON DELETE SET NULL (schedule_id),
    CONSTRAINT backup_jobs_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT backup_jobs_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id),
    CONSTRAINT backup_jobs_source_needs_agent CHECK (source_id IS NULL OR agent_id IS NOT NULL),
    CONSTRAINT backup_jobs_seq_needs_source CHECK (seq IS NULL OR source_id IS NOT NULL),
    CONSTRAINT backup_jobs_parent_before_seq CHECK (seq IS NULL OR parent_seq IS NULL OR parent_seq < seq),
    CONSTRAINT backup_jobs_times_ordered CHECK (completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at),
    CONSTRAINT backup_jobs_source_seq_key UNIQUE (source_id, seq),
    CONSTRAINT backup_jobs_id_org_key UNIQUE (id, organization_id)
);
-- Seed indexes. The seed's idx_backup_jobs_status_date is now led by organization_id (every
-- query is scoped to one organisation).
CREATE INDEX idx_backup_jobs_status_date ON public.backup_jobs (organization_id, status, created_at DESC);
CREATE INDEX idx_backup_jobs_organization_wedding ON public.backup_jobs (organization_id, wedding_critical_priority, created_at DESC);
-- The seed called this GIN index "idx_backup_files_checksum" although it is on backup_jobs.
CREATE INDEX idx_backup_jobs_manifest ON public.backup_jobs USING gin (backup_manifest)
    WHERE checksum_verification_passed = true;
CREATE INDEX backup_jobs_agent_status_idx ON public.backup_jobs (agent_id, status) WHERE agent_id IS NOT NULL;
CREATE INDEX backup_jobs_strategy_idx ON public.backup_jobs (strategy_id) WHERE strategy_id IS NOT NULL;
CREATE INDEX backup_jobs_destination_idx ON public.backup_jobs (destination_id) WHERE destination_id IS NOT NULL;
CREATE INDEX backup_jobs_schedule_idx ON public.backup_jobs (schedule_id) WHERE schedule_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- backup_files — file VERSIONS. A row is one version of one path of one source, live from commit
-- valid_from_seq (inclusive) to valid_to_seq (exclusive; NULL = still live). A commit adds rows
-- for added/changed files and closes the previous version of changed/deleted files, so an
-- unchanged file costs no row and "the state of source S at seq N" is
--   valid_from_seq <= N AND (valid_to_seq IS NULL OR valid_to_seq > N).
-- The chunk list of a version lives in the engine's tables (keyed by content_hash).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_files (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id    uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    agent_id           uuid NOT NULL,
    source_id          uuid NOT NULL,
    -- Path relative to the source root, '/'-separated, in UTF-8 (lossy display form when the OS
    -- name is not UTF-8; then raw_path holds the exact bytes). Byte-ordered (C collation) so that
    -- prefix searches use the index.
    path               text COLLATE "C" NOT NULL
                       CONSTRAINT backup_files_path_relative CHECK (
                           length(path) BETWEEN 1 AND 32768
                           AND left(path, 1) <> '/'
                           AND path !~ '(^|/)\.\.?(/|$)'
                           AND path !~ '//'),
    raw_path           bytea CHECK (raw_path IS NULL OR octet_length(raw_path) BETWEEN 1 AND 65536),
    entry_kind         text NOT NULL DEFAULT 'file' CHECK (entry_kind IN ('file', 'symlink', 'directory')),
    symlink_target     text,
    size               bigint NOT NULL CHECK (size >= 0),
    mtime              timestamptz,
    mode               integer CHECK (mode IS NULL OR mode >= 0),
    -- Keyed BLAKE3 (chunk-ID key) of the whole plaintext.
    content_hash       bytea NOT NULL CHECK (octet_length(content_hash) = 32),
    chunk_count        integer NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
    valid_from_seq     bigint NOT NULL CHECK (valid_from_seq > 0),
    valid_to_seq       bigint,
    valid_from         timestamptz NOT NULL DEFAULT now(),
    valid_to           timestamptz,
    created_by_job_id  uuid NOT NULL,
    closed_by_job_id   uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_files_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id),
    CONSTRAINT backup_files_created_by_fk FOREIGN KEY (created_by_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id),
    CONSTRAINT backup_files_closed_by_fk FOREIGN KEY (closed_by_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id),
    CONSTRAINT backup_files_interval CHECK (valid_to_seq IS NULL OR valid_to_seq > valid_from_seq),
    CONSTRAINT backup_files_closed_consistently CHECK (
        (valid_to_seq IS NULL) = (valid_to IS NULL)
        AND (valid_to_seq IS NULL OR closed_by_job_id IS NOT NULL)
        AND (valid_to IS NULL OR valid_to >= valid_from)),
    CONSTRAINT backup_files_symlink_target CHECK ((entry_kind = 'symlink') = (symlink_target IS NOT NULL)),
    CONSTRAINT backup_files_id_org_key UNIQUE (id, organization_id)
);
-- At most one live version per (source, path).
CREATE UNIQUE INDEX backup_files_one_live_version ON public.backup_files (source_id, path) WHERE valid_to_seq IS NULL;
-- State of source S at seq N under a path prefix: range scan on (source_id, path), filter on seqs.
CREATE INDEX backup_files_source_path_idx ON public.backup_files (source_id, path, valid_from_seq) INCLUDE (valid_to_seq);
-- What commit N added / closed (the delta of a job).
CREATE INDEX backup_files_source_from_idx ON public.backup_files (source_id, valid_from_seq);
CREATE INDEX backup_files_source_to_idx ON public.backup_files (source_id, valid_to_seq) WHERE valid_to_seq IS NOT NULL;
-- The seed's name, now on the table it names: which versions have this content (dedup, scrub).
CREATE INDEX idx_backup_files_checksum ON public.backup_files (organization_id, content_hash);
CREATE INDEX backup_files_created_by_idx ON public.backup_files (created_by_job_id);
CREATE INDEX backup_files_closed_by_idx ON public.backup_files (closed_by_job_id) WHERE closed_by_job_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- backup_manifests — the inventory summary of one committed job.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_manifests (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    backup_job_id    uuid NOT NULL,
    agent_id         uuid NOT NULL,
    source_id        uuid NOT NULL,
    seq              bigint NOT NULL CHECK (seq > 0),
    parent_seq       bigint CHECK (parent_seq IS NULL OR (parent_seq >= 0 AND parent_seq < seq)),
    format_version   smallint NOT NULL DEFAULT 1 CHECK (format_version >= 1),
    file_count       bigint NOT NULL CHECK (file_count >= 0),   -- live files after the commit
    total_bytes      bigint NOT NULL CHECK (total_bytes >= 0),  -- their logical size
    files_added      bigint NOT NULL DEFAULT 0 CHECK (files_added >= 0),
    files_changed    bigint NOT NULL DEFAULT 0 CHECK (files_changed >= 0),
    files_deleted    bigint NOT NULL DEFAULT 0 CHECK (files_deleted >= 0),
    bytes_new        bigint NOT NULL DEFAULT 0 CHECK (bytes_new >= 0),
    -- BLAKE3 of the canonical manifest encoding.
    manifest_digest  bytea NOT NULL CHECK (octet_length(manifest_digest) = 32),
    object_key       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_manifests_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id),
    CONSTRAINT backup_manifests_source_fk FOREIGN KEY (source_id, agent_id, organization_id)
        REFERENCES public.backup_sources (id, agent_id, organization_id),
    CONSTRAINT backup_manifests_job_key UNIQUE (backup_job_id),
    CONSTRAINT backup_manifests_source_seq_key UNIQUE (source_id, seq),
    CONSTRAINT backup_manifests_id_org_key UNIQUE (id, organization_id)
);
CREATE INDEX backup_manifests_org_idx ON public.backup_manifests (organization_id, created_at DESC);

-- ---------------------------------------------------------------------------------------------
-- backup_checksums — integrity records. Blob, pack and manifest checksums are BLAKE3 of the
-- CIPHERTEXT (verifiable by the server without keys); file_content is the keyed BLAKE3 of the
-- plaintext, verifiable only by an agent holding the chunk-ID key (after a restore).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_checksums (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    subject_kind     public.checksum_subject_kind NOT NULL,
    -- Identifier of the subject: hex blob/pack id, manifest id, file version id.
    subject_ref      text NOT NULL CHECK (length(subject_ref) BETWEEN 1 AND 200),
    file_version_id  bigint,
    manifest_id      uuid,
    backup_job_id    uuid,
    destination_id   uuid,
    agent_id         uuid,
    algorithm        text NOT NULL DEFAULT 'blake3' CHECK (algorithm IN ('blake3', 'blake3-keyed', 'sha256')),
    expected_digest  bytea NOT NULL CHECK (octet_length(expected_digest) BETWEEN 16 AND 64),
    actual_digest    bytea CHECK (actual_digest IS NULL OR octet_length(actual_digest) BETWEEN 16 AND 64),
    status           public.checksum_status NOT NULL DEFAULT 'pending',
    verified_at      timestamptz,
    error_message    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_checksums_file_fk FOREIGN KEY (file_version_id, organization_id)
        REFERENCES public.backup_files (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_checksums_manifest_fk FOREIGN KEY (manifest_id, organization_id)
        REFERENCES public.backup_manifests (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_checksums_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id),
    CONSTRAINT backup_checksums_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_checksums_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT backup_checksums_status_consistent CHECK (
        CASE status
            WHEN 'verified' THEN actual_digest = expected_digest AND verified_at IS NOT NULL
            WHEN 'mismatch' THEN actual_digest IS NOT NULL AND actual_digest <> expected_digest
                                 AND verified_at IS NOT NULL
            WHEN 'pending' THEN verified_at IS NULL
            ELSE true
        END),
    CONSTRAINT backup_checksums_subject_link CHECK (
        (subject_kind <> 'manifest' OR manifest_id IS NOT NULL)
        AND (subject_kind <> 'file_content' OR file_version_id IS NOT NULL))
);
CREATE INDEX backup_checksums_subject_idx ON public.backup_checksums (organization_id, subject_kind, subject_ref);
CREATE INDEX backup_checksums_problems_idx ON public.backup_checksums (organization_id, status, verified_at)
    WHERE status IN ('mismatch', 'missing', 'error');
CREATE INDEX backup_checksums_file_idx ON public.backup_checksums (file_version_id) WHERE file_version_id IS NOT NULL;
CREATE INDEX backup_checksums_manifest_idx ON public.backup_checksums (manifest_id) WHERE manifest_id IS NOT NULL;
CREATE INDEX backup_checksums_job_idx ON public.backup_checksums (backup_job_id) WHERE backup_job_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- backup_logs — operation logs (the seed's functions write log_level, message, created_at).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_logs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    backup_job_id    uuid,
    agent_id         uuid,
    log_level        public.log_level NOT NULL DEFAULT 'info',
    component        text CHECK (component IS NULL OR length(component) <= 100),
    message          text NOT NULL CHECK (length(message) <= 20000),
    details          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_logs_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT backup_logs_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);
CREATE INDEX backup_logs_org_time_idx ON public.backup_logs (organization_id, created_at DESC);
CREATE INDEX backup_logs_job_idx ON public.backup_logs (backup_job_id, created_at) WHERE backup_job_id IS NOT NULL;
CREATE INDEX backup_logs_agent_idx ON public.backup_logs (agent_id, created_at) WHERE agent_id IS NOT NULL;
