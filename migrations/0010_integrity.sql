-- 0010 — data integrity: nothing one machine uploads can spoil another machine's backups, every
-- entry carries the agent's MAC, named pipes and hard links are recorded, abandoned jobs end, and
-- integrity columns claim only what a real check established.
--
-- 1. Blob copies. A blob (keyed ID) may be stored several times: once per machine that uploaded
--    it, plus copies in packs that repeat it. The server cannot check that a ciphertext holds
--    the chunk its ID names (that needs the keys), so a copy is trusted only by the machine that
--    uploaded it, or by a machine that read it back, decrypted and checked it (an adoption).
--    `blobs/missing` and the commit's completeness check count trusted copies only; a restore
--    reads any copy and falls back to the next when one is wrong.
-- 2. Chunk lists per machine. file_contents/content_chunks are keyed by the committing machine,
--    so a list registered by one machine can never be used for another machine's files, and a
--    job only writes the chunk list of a content row it created itself (never mixing two lists).
-- 3. Entry MACs, hard-link groups, named pipes, and the exact mtime of staged entries (so the
--    server can recompute the delta digest the agent sent).
-- 4. Abandoned backup jobs: a running job the agent stopped talking about (heartbeat_at older
--    than the lease) is failed with a reason and its staging rows deleted.
-- 5. Integrity columns start unverified; the claims earlier versions wrote without a check are
--    withdrawn.
--
-- Data changes below run with the definer flag set, so they also work under FORCE ROW LEVEL
-- SECURITY with a non-superuser owner (the definer_maintenance policies admit them).

SELECT auth.enter_definer();

-- ---------------------------------------------------------------------------------------------
-- 1. Blob copies and adoptions
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.blob_copies (
    organization_id       uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    blob_id               bytea NOT NULL,
    pack_id               uuid NOT NULL,
    pack_offset           bigint NOT NULL CHECK (pack_offset >= 0),
    cipher_length         integer NOT NULL CHECK (cipher_length > 0),
    -- Length of the chunk and codec as the uploader announced them (informational).
    plain_length          integer NOT NULL CHECK (plain_length >= 0),
    codec                 smallint NOT NULL DEFAULT 0 CHECK (codec BETWEEN 0 AND 255),
    -- BLAKE3 of the ciphertext: verified on upload, checked again on every read.
    cipher_hash           bytea NOT NULL CHECK (octet_length(cipher_hash) = 32),
    -- The pack's uploader (copied from packs for the trust lookups).
    uploaded_by_agent_id  uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, blob_id, pack_id),
    CONSTRAINT blob_copies_blob_fk FOREIGN KEY (organization_id, blob_id)
        REFERENCES public.blobs (organization_id, blob_id) ON DELETE CASCADE,
    CONSTRAINT blob_copies_pack_fk FOREIGN KEY (pack_id, organization_id)
        REFERENCES public.packs (id, organization_id),
    CONSTRAINT blob_copies_agent_fk FOREIGN KEY (uploaded_by_agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);
CREATE INDEX blob_copies_pack_idx ON public.blob_copies (pack_id, pack_offset);
CREATE INDEX blob_copies_hash_idx ON public.blob_copies (organization_id, blob_id, cipher_hash);

CREATE TABLE public.blob_adoptions (
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    agent_id         uuid NOT NULL,
    blob_id          bytea NOT NULL,
    pack_id          uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, agent_id, blob_id, pack_id),
    CONSTRAINT blob_adoptions_copy_fk FOREIGN KEY (organization_id, blob_id, pack_id)
        REFERENCES public.blob_copies (organization_id, blob_id, pack_id) ON DELETE CASCADE,
    CONSTRAINT blob_adoptions_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);
CREATE INDEX blob_adoptions_copy_idx ON public.blob_adoptions (organization_id, blob_id, pack_id);

INSERT INTO public.blob_copies (organization_id, blob_id, pack_id, pack_offset, cipher_length, plain_length,
                                codec, cipher_hash, uploaded_by_agent_id, created_at)
SELECT b.organization_id, b.blob_id, b.pack_id, b.pack_offset, b.cipher_length, b.plain_length, b.codec,
       b.cipher_hash, p.uploaded_by_agent_id, b.created_at
FROM public.blobs b JOIN public.packs p ON p.id = b.pack_id;

-- Machines whose committed files already rely on another machine's copy keep relying on it (what
-- they committed before this migration was accepted under the old rules).
INSERT INTO public.blob_adoptions (organization_id, agent_id, blob_id, pack_id)
SELECT DISTINCT f.organization_id, f.agent_id, c.blob_id, bc.pack_id
FROM public.backup_files f
JOIN public.content_chunks c ON c.organization_id = f.organization_id AND c.content_hash = f.content_hash
JOIN public.blob_copies bc ON bc.organization_id = c.organization_id AND bc.blob_id = c.blob_id
WHERE bc.uploaded_by_agent_id IS DISTINCT FROM f.agent_id
ON CONFLICT DO NOTHING;

DROP POLICY insert_agent ON public.blobs;
ALTER TABLE public.blobs DROP CONSTRAINT blobs_pack_fk;
ALTER TABLE public.blobs DROP COLUMN pack_id, DROP COLUMN pack_offset, DROP COLUMN cipher_length,
    DROP COLUMN plain_length, DROP COLUMN cipher_hash, DROP COLUMN codec;

COMMENT ON TABLE public.blobs IS
    'One row per distinct blob ID of an organisation (what chunk lists reference and what GC protection covers); '
    'the stored copies are in blob_copies.';

-- ---------------------------------------------------------------------------------------------
-- 2. Chunk lists keyed by the committing machine
-- ---------------------------------------------------------------------------------------------
ALTER TABLE public.backup_files DROP CONSTRAINT backup_files_content_fk;
ALTER TABLE public.content_chunks DROP CONSTRAINT content_chunks_content_fk;

ALTER TABLE public.file_contents ADD COLUMN agent_id uuid;
ALTER TABLE public.file_contents ADD COLUMN created_by_job_id uuid;
UPDATE public.file_contents SET agent_id = created_by_agent_id;
ALTER TABLE public.content_chunks ADD COLUMN agent_id uuid;
UPDATE public.content_chunks c SET agent_id = fc.agent_id
FROM public.file_contents fc
WHERE fc.organization_id = c.organization_id AND fc.content_hash = c.content_hash;

-- A content that other machines' files use gets a row (and a chunk list) of its own per machine.
CREATE TEMPORARY TABLE keepsake_0010_reuse ON COMMIT DROP AS
SELECT DISTINCT f.organization_id, f.content_hash, f.agent_id, fc.agent_id AS from_agent
FROM public.backup_files f
JOIN public.file_contents fc ON fc.organization_id = f.organization_id AND fc.content_hash = f.content_hash
WHERE fc.agent_id IS DISTINCT FROM f.agent_id;
INSERT INTO public.file_contents (organization_id, content_hash, agent_id, size, chunk_count, created_at)
SELECT r.organization_id, r.content_hash, r.agent_id, fc.size, fc.chunk_count, fc.created_at
FROM keepsake_0010_reuse r
JOIN public.file_contents fc ON fc.organization_id = r.organization_id AND fc.content_hash = r.content_hash
                            AND fc.agent_id IS NOT DISTINCT FROM r.from_agent;
INSERT INTO public.content_chunks (organization_id, content_hash, agent_id, seq, blob_id, file_offset, plain_length)
SELECT r.organization_id, r.content_hash, r.agent_id, c.seq, c.blob_id, c.file_offset, c.plain_length
FROM keepsake_0010_reuse r
JOIN public.content_chunks c ON c.organization_id = r.organization_id AND c.content_hash = r.content_hash
                            AND c.agent_id IS NOT DISTINCT FROM r.from_agent;
DELETE FROM public.content_chunks WHERE agent_id IS NULL;
DELETE FROM public.file_contents WHERE agent_id IS NULL;

ALTER TABLE public.content_chunks DROP CONSTRAINT content_chunks_pkey;
ALTER TABLE public.file_contents DROP CONSTRAINT file_contents_pkey;
ALTER TABLE public.file_contents DROP CONSTRAINT file_contents_agent_fk;
DROP POLICY IF EXISTS insert_agent ON public.file_contents;
DROP POLICY IF EXISTS insert_agent ON public.content_chunks;
ALTER TABLE public.file_contents DROP COLUMN created_by_agent_id;
ALTER TABLE public.file_contents ALTER COLUMN agent_id SET NOT NULL;
ALTER TABLE public.content_chunks ALTER COLUMN agent_id SET NOT NULL;
ALTER TABLE public.file_contents ADD PRIMARY KEY (organization_id, content_hash, agent_id);
ALTER TABLE public.file_contents ADD CONSTRAINT file_contents_agent_fk
    FOREIGN KEY (agent_id, organization_id) REFERENCES public.agents (id, organization_id);
ALTER TABLE public.content_chunks ADD PRIMARY KEY (organization_id, content_hash, agent_id, seq);
ALTER TABLE public.content_chunks ADD CONSTRAINT content_chunks_content_fk
    FOREIGN KEY (organization_id, content_hash, agent_id)
    REFERENCES public.file_contents (organization_id, content_hash, agent_id) ON DELETE CASCADE;
ALTER TABLE public.backup_files ADD CONSTRAINT backup_files_content_fk
    FOREIGN KEY (organization_id, content_hash, agent_id)
    REFERENCES public.file_contents (organization_id, content_hash, agent_id);
CREATE INDEX file_contents_job_idx ON public.file_contents (created_by_job_id) WHERE created_by_job_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- 3. Entry MACs, hard-link groups, named pipes, exact staged mtimes
-- ---------------------------------------------------------------------------------------------
ALTER TABLE public.backup_files
    ADD COLUMN entry_mac bytea CHECK (entry_mac IS NULL OR octet_length(entry_mac) = 32),
    ADD COLUMN link_group bigint;
ALTER TABLE public.backup_files DROP CONSTRAINT backup_files_entry_kind_check;
ALTER TABLE public.backup_files ADD CONSTRAINT backup_files_entry_kind_check
    CHECK (entry_kind IN ('file', 'symlink', 'directory', 'fifo'));
ALTER TABLE public.backup_files ADD CONSTRAINT backup_files_link_only_files
    CHECK (link_group IS NULL OR entry_kind = 'file');
COMMENT ON COLUMN public.backup_files.entry_mac IS
    'The agent''s keyed MAC over the entry''s metadata (docs/format.md); restore refuses entries whose MAC does not verify.';

ALTER TABLE public.job_delta_entries
    ADD COLUMN entry_mac bytea CHECK (entry_mac IS NULL OR octet_length(entry_mac) = 32),
    ADD COLUMN link_group bigint,
    ADD COLUMN mtime_ns bigint;
ALTER TABLE public.job_delta_entries DROP CONSTRAINT job_delta_entries_entry_kind_check;
ALTER TABLE public.job_delta_entries ADD CONSTRAINT job_delta_entries_entry_kind_check
    CHECK (entry_kind IN ('file', 'symlink', 'directory', 'fifo'));

-- ---------------------------------------------------------------------------------------------
-- 4. Abandoned backup jobs
-- ---------------------------------------------------------------------------------------------
CREATE INDEX backup_jobs_running_heartbeat_idx ON public.backup_jobs (heartbeat_at) WHERE status = 'running';

-- Fails every running job not heard of for p_lease (every organisation; at most 1000 a call),
-- deletes its staging rows and logs why. Rows another server process is handling are skipped.
CREATE FUNCTION public.expire_abandoned_backup_jobs(p_lease interval) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[];
    v_n integer := 0;
    r record;
BEGIN
    IF p_lease IS NULL OR p_lease < interval '1 second' OR p_lease > interval '30 days' THEN
        RAISE EXCEPTION 'lease out of range' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := auth.enter_definer();
    FOR r IN
        SELECT j.id, j.organization_id, j.agent_id, coalesce(j.heartbeat_at, j.started_at, j.created_at) AS last_heard
        FROM public.backup_jobs j
        WHERE j.status = 'running'
          AND coalesce(j.heartbeat_at, j.started_at, j.created_at) < now() - p_lease
        ORDER BY coalesce(j.heartbeat_at, j.started_at, j.created_at)
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE public.backup_jobs
           SET status = 'failed', completed_at = greatest(now(), started_at),
               error_message = format('abandoned: the agent sent nothing for this job since %s (lease %s); '
                                      'its staged delta was discarded and its next run starts a new job',
                                      r.last_heard, p_lease)
         WHERE id = r.id;
        DELETE FROM public.job_delta_entries WHERE backup_job_id = r.id;
        INSERT INTO public.backup_logs (organization_id, backup_job_id, agent_id, log_level, component, message, details)
        VALUES (r.organization_id, r.id, r.agent_id, 'warning', 'lease',
                'backup job abandoned: no word from its agent within the lease; marked failed, staged delta discarded',
                jsonb_build_object('last_heard', r.last_heard, 'lease_seconds', extract(epoch FROM p_lease)));
        v_n := v_n + 1;
    END LOOP;
    PERFORM auth.leave_definer(prev);
    RETURN v_n;
END
$$;
REVOKE ALL ON FUNCTION public.expire_abandoned_backup_jobs(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.expire_abandoned_backup_jobs(interval) TO keepsake_app;

-- ---------------------------------------------------------------------------------------------
-- 5. Integrity claims only from real checks
-- ---------------------------------------------------------------------------------------------
-- Earlier versions set these at commit without checking anything.
UPDATE public.backup_jobs SET checksum_verification_passed = NULL WHERE checksum_verification_passed IS NOT NULL;
UPDATE public.recovery_points SET data_integrity_verified = false WHERE data_integrity_verified;
UPDATE public.backup_checksums SET status = 'pending', actual_digest = NULL, verified_at = NULL
 WHERE subject_kind = 'manifest' AND status = 'verified';

-- ---------------------------------------------------------------------------------------------
-- Row-level security for the new tables and the re-keyed ones
-- ---------------------------------------------------------------------------------------------
SELECT auth.secure_table(t::regclass)
FROM unnest(ARRAY['public.blob_copies', 'public.blob_adoptions']) t;

SELECT auth.create_tenant_policies('public.blob_copies', 'SELECT', ARRAY['member', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.blob_copies', c, ARRAY['system'])
FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;
SELECT auth.create_tenant_policy('public.blob_copies', 'INSERT', 'agent',
    p_check => 'uploaded_by_agent_id = (SELECT auth.agent_id()) AND EXISTS (SELECT 1 FROM public.packs p '
               'WHERE p.id = pack_id AND p.uploaded_by_agent_id = (SELECT auth.agent_id()))');

SELECT auth.create_tenant_policies('public.blob_adoptions', 'SELECT', ARRAY['member', 'system']);
SELECT auth.create_tenant_policy('public.blob_adoptions', 'SELECT', 'agent', p_using => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policy('public.blob_adoptions', 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.blob_adoptions', c, ARRAY['system'])
FROM unnest(ARRAY['INSERT', 'DELETE']) c;

-- A blob row names an ID only (its copies carry the data and the uploader).
SELECT auth.create_tenant_policy('public.blobs', 'INSERT', 'agent');
SELECT auth.create_tenant_policy('public.file_contents', 'INSERT', 'agent',
    p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policy('public.content_chunks', 'INSERT', 'agent',
    p_check => 'agent_id = (SELECT auth.agent_id())');

SELECT auth.leave_definer(ARRAY['', '']);
