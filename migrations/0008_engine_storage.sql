-- 0008 — the backup engine's own tables: packs on storage destinations, the blob index, file
-- contents and their chunk lists, and the staging area of job deltas.
--
-- Blobs are encrypted on the agent; the server stores them concatenated in packs (objects of tens
-- of MiB on a destination) and indexes each blob here (pack, offset, length, BLAKE3 of the
-- ciphertext) so it can serve, verify, replicate and garbage-collect without any key. Dedup scope
-- is the organisation: the blob index is keyed by (organization_id, blob_id).
--
-- A file version (backup_files) names its content by content_hash; file_contents/content_chunks
-- hold the ordered blob list of each distinct content once, so a rename or a copy of a 200 GB
-- video costs one row, not one row per chunk.

CREATE TYPE public.pack_state AS ENUM ('live', 'deleting');

-- ---------------------------------------------------------------------------------------------
-- packs — one object on one destination holding the blobs of one organisation.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.packs (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id       uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    destination_id        uuid NOT NULL,
    object_key            text NOT NULL CHECK (length(object_key) BETWEEN 1 AND 1024),
    size_bytes            bigint NOT NULL CHECK (size_bytes > 0),
    blob_count            integer NOT NULL CHECK (blob_count >= 0),
    -- BLAKE3 of the whole pack object as written.
    pack_hash             bytea NOT NULL CHECK (octet_length(pack_hash) = 32),
    uploaded_by_agent_id  uuid,
    state                 public.pack_state NOT NULL DEFAULT 'live',
    created_at            timestamptz NOT NULL DEFAULT now(),
    verified_at           timestamptz,
    CONSTRAINT packs_destination_fk FOREIGN KEY (destination_id, organization_id)
        REFERENCES public.backup_destinations (id, organization_id),
    CONSTRAINT packs_agent_fk FOREIGN KEY (uploaded_by_agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT packs_destination_key_key UNIQUE (destination_id, object_key),
    CONSTRAINT packs_id_org_key UNIQUE (id, organization_id)
);
CREATE INDEX packs_org_idx ON public.packs (organization_id, created_at);

-- ---------------------------------------------------------------------------------------------
-- blobs — the blob index. One row per distinct blob of an organisation.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.blobs (
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    -- Keyed BLAKE3 of the plaintext chunk (the server cannot recompute it).
    blob_id          bytea NOT NULL CHECK (octet_length(blob_id) = 32),
    pack_id          uuid NOT NULL,
    -- Offset of the ciphertext inside the pack object, and its length.
    pack_offset      bigint NOT NULL CHECK (pack_offset >= 0),
    cipher_length    integer NOT NULL CHECK (cipher_length > 0),
    plain_length     integer NOT NULL CHECK (plain_length >= 0),
    -- BLAKE3 of the ciphertext: verified on upload, re-checked by scrubbing.
    cipher_hash      bytea NOT NULL CHECK (octet_length(cipher_hash) = 32),
    codec            smallint NOT NULL DEFAULT 0 CHECK (codec BETWEEN 0 AND 255),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- When an agent was told the blob is present, it may commit a reference to it without
    -- uploading: the garbage collector must keep the blob at least until then.
    protected_until  timestamptz,
    PRIMARY KEY (organization_id, blob_id),
    CONSTRAINT blobs_pack_fk FOREIGN KEY (pack_id, organization_id)
        REFERENCES public.packs (id, organization_id)
);
CREATE INDEX blobs_pack_idx ON public.blobs (pack_id, pack_offset);

-- ---------------------------------------------------------------------------------------------
-- file_contents / content_chunks — each distinct file content of an organisation and its ordered
-- blob list. content_hash is the keyed BLAKE3 of the whole plaintext (backup_files.content_hash).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.file_contents (
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    content_hash     bytea NOT NULL CHECK (octet_length(content_hash) = 32),
    size             bigint NOT NULL CHECK (size >= 0),
    chunk_count      integer NOT NULL CHECK (chunk_count >= 0),
    created_by_agent_id uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, content_hash),
    CONSTRAINT file_contents_agent_fk FOREIGN KEY (created_by_agent_id, organization_id)
        REFERENCES public.agents (id, organization_id)
);

CREATE TABLE public.content_chunks (
    organization_id  uuid NOT NULL,
    content_hash     bytea NOT NULL,
    seq              integer NOT NULL CHECK (seq >= 0),
    blob_id          bytea NOT NULL,
    -- Offset of this chunk in the file's plaintext (lets a restore write chunks in any order).
    file_offset      bigint NOT NULL CHECK (file_offset >= 0),
    plain_length     integer NOT NULL CHECK (plain_length >= 0),
    PRIMARY KEY (organization_id, content_hash, seq),
    CONSTRAINT content_chunks_content_fk FOREIGN KEY (organization_id, content_hash)
        REFERENCES public.file_contents (organization_id, content_hash) ON DELETE CASCADE,
    -- A chunk list can only name a blob the index holds; the collector cannot drop a referenced
    -- blob either (the delete fails).
    CONSTRAINT content_chunks_blob_fk FOREIGN KEY (organization_id, blob_id)
        REFERENCES public.blobs (organization_id, blob_id)
);
CREATE INDEX content_chunks_blob_idx ON public.content_chunks (organization_id, blob_id);

-- The version catalog names contents that exist.
ALTER TABLE public.backup_files
    ADD CONSTRAINT backup_files_content_fk FOREIGN KEY (organization_id, content_hash)
        REFERENCES public.file_contents (organization_id, content_hash);

-- ---------------------------------------------------------------------------------------------
-- Staging of a job's delta: the agent uploads it in numbered parts (each part immutable once
-- received, so a retried part is a no-op); the commit applies all parts in one transaction and
-- removes them.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.job_delta_entries (
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    backup_job_id    uuid NOT NULL,
    agent_id         uuid NOT NULL,
    part             integer NOT NULL CHECK (part >= 0),
    ordinal          integer NOT NULL CHECK (ordinal >= 0),
    op               text NOT NULL CHECK (op IN ('upsert', 'delete')),
    path             text COLLATE "C" NOT NULL CHECK (length(path) BETWEEN 1 AND 32768),
    raw_path         bytea,
    entry_kind       text NOT NULL DEFAULT 'file' CHECK (entry_kind IN ('file', 'symlink', 'directory')),
    symlink_target   text,
    size             bigint CHECK (size IS NULL OR size >= 0),
    mtime            timestamptz,
    mode             integer CHECK (mode IS NULL OR mode >= 0),
    content_hash     bytea CHECK (content_hash IS NULL OR octet_length(content_hash) = 32),
    chunk_count      integer NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
    PRIMARY KEY (backup_job_id, part, ordinal),
    CONSTRAINT job_delta_entries_job_fk FOREIGN KEY (backup_job_id, organization_id)
        REFERENCES public.backup_jobs (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT job_delta_entries_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT job_delta_entries_upsert_complete CHECK (
        op = 'delete' OR (size IS NOT NULL AND content_hash IS NOT NULL))
);
CREATE INDEX job_delta_entries_org_idx ON public.job_delta_entries (organization_id, backup_job_id);

CREATE TABLE public.job_delta_chunks (
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    backup_job_id    uuid NOT NULL,
    agent_id         uuid NOT NULL,
    part             integer NOT NULL,
    ordinal          integer NOT NULL,
    seq              integer NOT NULL CHECK (seq >= 0),
    blob_id          bytea NOT NULL CHECK (octet_length(blob_id) = 32),
    file_offset      bigint NOT NULL CHECK (file_offset >= 0),
    plain_length     integer NOT NULL CHECK (plain_length >= 0),
    PRIMARY KEY (backup_job_id, part, ordinal, seq),
    CONSTRAINT job_delta_chunks_entry_fk FOREIGN KEY (backup_job_id, part, ordinal)
        REFERENCES public.job_delta_entries (backup_job_id, part, ordinal) ON DELETE CASCADE
);
CREATE INDEX job_delta_chunks_org_idx ON public.job_delta_chunks (organization_id, backup_job_id);

-- ---------------------------------------------------------------------------------------------
-- Protection of blobs reported present (SECURITY DEFINER: agents may not UPDATE the blob index,
-- whose pack/offset columns only the server's own maintenance may change).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.protect_blobs(p_ids bytea[], p_grace interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid := auth.org_id();
    v_n integer;
    prev text[];
BEGIN
    IF v_org IS NULL THEN
        RAISE EXCEPTION 'no verified organisation in this transaction' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_grace IS NULL OR p_grace < interval '0' OR p_grace > interval '30 days' THEN
        RAISE EXCEPTION 'grace period out of range' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := auth.enter_definer();
    UPDATE public.blobs b
       SET protected_until = greatest(coalesce(b.protected_until, '-infinity'), now() + p_grace)
     WHERE b.organization_id = v_org
       AND b.blob_id = ANY (p_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    PERFORM auth.leave_definer(prev);
    RETURN v_n;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Row-level security. Agents add packs, blobs, contents and their own staging rows and read
-- their organisation's index for restores; they never update or delete any of it. The staging
-- rows of a job are removed by the system actor when the job commits or is abandoned.
-- ---------------------------------------------------------------------------------------------
SELECT auth.secure_table(t::regclass)
FROM unnest(ARRAY['public.packs', 'public.blobs', 'public.file_contents', 'public.content_chunks',
                  'public.job_delta_entries', 'public.job_delta_chunks']) t;

SELECT auth.create_tenant_policies(t::regclass, 'SELECT', ARRAY['member', 'agent', 'system'])
FROM unnest(ARRAY['public.packs', 'public.blobs', 'public.file_contents', 'public.content_chunks']) t;
SELECT auth.create_tenant_policies(t::regclass, c, ARRAY['system'])
FROM unnest(ARRAY['public.packs', 'public.blobs', 'public.file_contents', 'public.content_chunks']) t,
     unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;
SELECT auth.create_tenant_policy('public.packs', 'INSERT', 'agent',
    p_check => 'uploaded_by_agent_id = (SELECT auth.agent_id()) AND state = ''live''');
SELECT auth.create_tenant_policy('public.blobs', 'INSERT', 'agent',
    p_check => 'EXISTS (SELECT 1 FROM public.packs p WHERE p.id = pack_id '
               'AND p.uploaded_by_agent_id = (SELECT auth.agent_id()))');
SELECT auth.create_tenant_policy('public.file_contents', 'INSERT', 'agent',
    p_check => 'created_by_agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policy('public.content_chunks', 'INSERT', 'agent');

SELECT auth.create_tenant_policies(t::regclass, 'SELECT', ARRAY['member', 'system'])
FROM unnest(ARRAY['public.job_delta_entries', 'public.job_delta_chunks']) t;
SELECT auth.create_tenant_policy(t::regclass, 'SELECT', 'agent', p_using => 'agent_id = (SELECT auth.agent_id())')
FROM unnest(ARRAY['public.job_delta_entries', 'public.job_delta_chunks']) t;
SELECT auth.create_tenant_policy(t::regclass, 'INSERT', 'agent',
    p_check => 'agent_id = (SELECT auth.agent_id()) AND EXISTS (SELECT 1 FROM public.backup_jobs j '
               'WHERE j.id = backup_job_id AND j.agent_id = (SELECT auth.agent_id()) AND j.status = ''running'')')
FROM unnest(ARRAY['public.job_delta_entries', 'public.job_delta_chunks']) t;
SELECT auth.create_tenant_policies(t::regclass, c, ARRAY['system'])
FROM unnest(ARRAY['public.job_delta_entries', 'public.job_delta_chunks']) t,
     unnest(ARRAY['INSERT', 'DELETE']) c;

GRANT EXECUTE ON FUNCTION public.protect_blobs(bytea[], interval) TO keepsake_app;

-- ---------------------------------------------------------------------------------------------
-- Key bundles: the bundle registered by the first machine is the keepsake bundle JSON (one age
-- envelope per unlock method, see docs/format.md), not a bare age file. Still: no plaintext age
-- identity may ever be stored.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE public.backup_encryption_keys DROP CONSTRAINT backup_encryption_keys_bundle_is_age;
ALTER TABLE public.backup_encryption_keys ADD CONSTRAINT backup_encryption_keys_bundle_sealed CHECK (
    key_bundle IS NULL OR (
        (substring(key_bundle FROM 1 FOR 21) = 'age-encryption.org/v1'::bytea
         OR substring(key_bundle FROM 1 FOR 34) = '-----BEGIN AGE ENCRYPTED FILE-----'::bytea
         OR (substring(key_bundle FROM 1 FOR 1) = '{'::bytea
             AND position('"format":"keepsake-key-bundle"'::bytea IN key_bundle) > 0))
        AND position('AGE-SECRET-KEY-'::bytea IN key_bundle) = 0
        AND octet_length(key_bundle) <= 65536));
