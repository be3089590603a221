-- 0001 — identity, tenancy and the auth helpers.
--
-- Creates the application role, the `auth` schema (our own replacement for Supabase's auth.users
-- and auth.uid()), the organisation / user / agent / source / token tables, and the functions that
-- turn the per-transaction settings keepsake.actor, keepsake.org_id, keepsake.user_id and
-- keepsake.agent_id into a verified identity for row-level security (policies: 0007).
--
-- Runs in one transaction as the role that will own every object. No BEGIN/COMMIT here.

-- ---------------------------------------------------------------------------------------------
-- Application role (cluster-global, so creation must be idempotent and race-tolerant).
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keepsake_app') THEN
        BEGIN
            CREATE ROLE keepsake_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created concurrently by a migration of another database in this cluster
        END;
    END IF;

    SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin
      INTO r FROM pg_catalog.pg_roles WHERE rolname = 'keepsake_app';
    IF r.rolsuper OR r.rolbypassrls OR r.rolcreatedb OR r.rolcreaterole OR r.rolinherit OR r.rolcanlogin THEN
        -- Someone widened the role: narrow it again (needs superuser or CREATEROLE), or refuse.
        ALTER ROLE keepsake_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;

    -- A non-superuser owner must be a member to `SET ROLE keepsake_app`.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'keepsake_app', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT keepsake_app TO %I', current_user);
    END IF;
END
$$;

-- Nobody but the owner creates objects in public; functions are not executable by PUBLIC unless
-- granted explicitly (this also covers functions added by later migrations of this owner).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE SCHEMA auth;
REVOKE ALL ON SCHEMA auth FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Generic helpers
-- ---------------------------------------------------------------------------------------------

-- Keeps updated_at current on every UPDATE (attached to tables in 0006).
CREATE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

-- Organisation settings: {"hemisphere": "north"|"south", "wedding_season_months": [int 1..12, ...]
-- (optional override), "allow_unsealed_key_on_disk": bool}. Unknown keys are allowed (forward
-- compatibility) but the known ones must have the right shape.
CREATE FUNCTION public.organization_settings_valid(s jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT s IS NOT NULL
       AND jsonb_typeof(s) = 'object'
       AND (NOT s ? 'hemisphere' OR s->>'hemisphere' IN ('north', 'south'))
       AND (NOT s ? 'allow_unsealed_key_on_disk'
            OR jsonb_typeof(s->'allow_unsealed_key_on_disk') = 'boolean')
       AND (NOT s ? 'wedding_season_months'
            OR (jsonb_typeof(s->'wedding_season_months') = 'array'
                AND jsonb_array_length(s->'wedding_season_months') BETWEEN 1 AND 12
                AND NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(s->'wedding_season_months') e(v)
                    WHERE jsonb_typeof(e.v) <> 'number'
                       OR e.v::text !~ '^(1[0-2]|[1-9])$')
                AND (SELECT count(DISTINCT e.v::text) FROM jsonb_array_elements(s->'wedding_season_months') e(v))
                    = jsonb_array_length(s->'wedding_season_months')))
$$;

-- The wedding-season months of an organisation: the explicit override, else May–October in the
-- northern hemisphere and November–April in the southern one.
CREATE FUNCTION public.organization_wedding_season_months(s jsonb) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN s ? 'wedding_season_months' THEN
            ARRAY(SELECT (e.v #>> '{}')::integer FROM jsonb_array_elements(s->'wedding_season_months') e(v) ORDER BY 1)
        WHEN s->>'hemisphere' = 'south' THEN ARRAY[1, 2, 3, 4, 11, 12]
        ELSE ARRAY[5, 6, 7, 8, 9, 10]
    END
$$;

CREATE FUNCTION public.wedding_season_contains(s jsonb, d date) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXTRACT(MONTH FROM d)::integer = ANY (public.organization_wedding_season_months(s))
$$;

-- ---------------------------------------------------------------------------------------------
-- Enums
-- ---------------------------------------------------------------------------------------------
CREATE TYPE public.user_role AS ENUM ('admin', 'owner', 'member', 'emergency_contact');
CREATE TYPE public.token_kind AS ENUM ('user', 'agent', 'enroll');

-- ---------------------------------------------------------------------------------------------
-- auth.users — global identities (one person may belong to several organisations).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE auth.users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL UNIQUE
                  CONSTRAINT users_email_lower CHECK (email = lower(email))
                  CONSTRAINT users_email_shape CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'
                                                      AND length(email) <= 320),
    display_name  text CHECK (display_name IS NULL OR length(display_name) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- organizations — the tenant.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    slug        text NOT NULL UNIQUE
                CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    settings    jsonb NOT NULL
                DEFAULT '{"hemisphere": "north", "allow_unsealed_key_on_disk": false}'::jsonb
                CONSTRAINT organizations_settings_valid CHECK (public.organization_settings_valid(settings)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- user_profiles — membership of a user in an organisation, with a role.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.user_profiles (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    role             public.user_role NOT NULL DEFAULT 'member',
    display_name     text CHECK (display_name IS NULL OR length(display_name) <= 200),
    phone            text CHECK (phone IS NULL OR phone ~ '^\+?[0-9 ().-]{3,32}$'),
    job_title        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz,
    CONSTRAINT user_profiles_user_org_key UNIQUE (user_id, organization_id)
);
CREATE INDEX user_profiles_org_role_idx ON public.user_profiles (organization_id, role);

-- ---------------------------------------------------------------------------------------------
-- agents — enrolled machines (laptop, studio desktop, NAS).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.agents (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    hostname         text CHECK (hostname IS NULL OR length(hostname) <= 255),
    platform         text CHECK (platform IS NULL OR length(platform) <= 64),
    agent_version    text CHECK (agent_version IS NULL OR length(agent_version) <= 64),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz,
    last_heartbeat   jsonb CHECK (last_heartbeat IS NULL OR jsonb_typeof(last_heartbeat) = 'object'),
    revoked_at       timestamptz,
    revoked_reason   text,
    CONSTRAINT agents_id_org_key UNIQUE (id, organization_id)
);
-- Two live machines of one organisation cannot share a name; a revoked name may be reused.
CREATE UNIQUE INDEX agents_org_name_live_key ON public.agents (organization_id, name) WHERE revoked_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- backup_sources — the watched roots of an agent. Each source has its own commit sequence.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.backup_sources (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    agent_id            uuid NOT NULL,
    root_path           text NOT NULL CHECK (length(root_path) BETWEEN 1 AND 4096),
    label               text CHECK (label IS NULL OR length(label) <= 200),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_committed_seq  bigint NOT NULL DEFAULT 0 CHECK (last_committed_seq >= 0),
    CONSTRAINT backup_sources_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id),
    CONSTRAINT backup_sources_agent_root_key UNIQUE (agent_id, root_path),
    CONSTRAINT backup_sources_id_org_key UNIQUE (id, organization_id),
    CONSTRAINT backup_sources_id_agent_org_key UNIQUE (id, agent_id, organization_id)
);
CREATE INDEX backup_sources_org_idx ON public.backup_sources (organization_id, agent_id);

-- ---------------------------------------------------------------------------------------------
-- api_tokens — bearer tokens. Only a hash (32 bytes) is stored; the server hashes what it receives.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.api_tokens (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    kind             public.token_kind NOT NULL,
    user_id          uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    agent_id         uuid,
    token_hash       bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    label            text CHECK (label IS NULL OR length(label) <= 200),
    created_by       uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    used_at          timestamptz,
    revoked_at       timestamptz,
    last_used_at     timestamptz,
    CONSTRAINT api_tokens_agent_fk FOREIGN KEY (agent_id, organization_id)
        REFERENCES public.agents (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT api_tokens_kind_ids CHECK (
        (kind = 'user'   AND user_id IS NOT NULL AND agent_id IS NULL) OR
        (kind = 'agent'  AND agent_id IS NOT NULL AND user_id IS NULL) OR
        (kind = 'enroll' AND agent_id IS NULL AND user_id IS NULL)),
    CONSTRAINT api_tokens_used_only_enroll CHECK (used_at IS NULL OR kind = 'enroll'),
    CONSTRAINT api_tokens_enroll_expires CHECK (kind <> 'enroll' OR expires_at IS NOT NULL)
);
CREATE INDEX api_tokens_org_idx ON public.api_tokens (organization_id, kind);
CREATE INDEX api_tokens_user_idx ON public.api_tokens (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX api_tokens_agent_idx ON public.api_tokens (agent_id) WHERE agent_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Identity functions (schema auth)
--
-- The server sets, per transaction (set_config(..., true)):
--   keepsake.actor    'user' | 'agent' | 'system'
--   keepsake.org_id   uuid of the organisation the request is scoped to
--   keepsake.user_id  uuid of the user ('' for agents/system)
--   keepsake.agent_id uuid of the agent ('' for users/system)
-- Anything else (unset, empty, unknown actor) means "no identity": every policy denies.
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION auth.actor() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE pg_catalog.current_setting('keepsake.actor', true)
        WHEN 'user' THEN 'user'
        WHEN 'agent' THEN 'agent'
        WHEN 'system' THEN 'system'
    END
$$;

CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(pg_catalog.current_setting('keepsake.user_id', true), '')::uuid
$$;

CREATE FUNCTION auth.agent_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(pg_catalog.current_setting('keepsake.agent_id', true), '')::uuid
$$;

-- The organisation the transaction *claims*; not an authorisation (see auth.org_id()).
CREATE FUNCTION auth.claimed_org_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(pg_catalog.current_setting('keepsake.org_id', true), '')::uuid
$$;

-- True only inside a SECURITY DEFINER function of this schema: each one calls
-- auth.enter_definer() first and auth.leave_definer() before it returns. (A function-level
-- `SET keepsake.definer = 'on'` would be neater, but PostgreSQL refuses custom placeholder
-- settings in function definitions made by a non-superuser owner.) The "definer" policies of 0007
-- apply only to the owning role, so keepsake_app setting this variable itself gains nothing. If a
-- definer function fails, the transaction (or the caller's savepoint) rolls the setting back.
CREATE FUNCTION auth.in_definer() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.current_setting('keepsake.definer', true) IS NOT DISTINCT FROM 'on'
$$;

-- Sets keepsake.definer (and keepsake.resolving when asked) for the rest of the calling function;
-- returns the previous values for auth.leave_definer().
CREATE FUNCTION auth.enter_definer(p_resolving boolean DEFAULT false) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    prev text[] := ARRAY[coalesce(pg_catalog.current_setting('keepsake.definer', true), ''),
                         coalesce(pg_catalog.current_setting('keepsake.resolving', true), '')];
BEGIN
    PERFORM pg_catalog.set_config('keepsake.definer', 'on', true);
    IF p_resolving THEN
        PERFORM pg_catalog.set_config('keepsake.resolving', 'on', true);
    END IF;
    RETURN prev;
END
$$;

CREATE FUNCTION auth.leave_definer(p_prev text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('keepsake.definer', p_prev[1], true);
    PERFORM pg_catalog.set_config('keepsake.resolving', p_prev[2], true);
END
$$;

-- The organisation the current actor is entitled to, or NULL:
--   user   — has a profile in that organisation, neither the user nor the profile disabled;
--   agent  — belongs to that organisation and is not revoked;
--   system — any existing organisation (server background work).
-- The lookup runs in a SECURITY DEFINER function so that it is not filtered by the policies that
-- call auth.org_id() (no RLS recursion on user_profiles / agents). While the lookup runs,
-- keepsake.resolving is 'on' and auth.org_id() answers NULL: if the owner is itself subject to the
-- tenant policies (a non-superuser owner that inherits keepsake_app), those policies cannot recurse
-- into the lookup; the owner's "definer" policy (0007) admits the rows instead.
CREATE FUNCTION auth.lookup_org_id() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer(true);
    v uuid;
BEGIN
    SELECT o.id INTO v
    FROM public.organizations o
    WHERE o.id = auth.claimed_org_id()
      AND CASE auth.actor()
            WHEN 'system' THEN true
            WHEN 'user' THEN EXISTS (
                SELECT 1 FROM public.user_profiles p JOIN auth.users u ON u.id = p.user_id
                WHERE p.organization_id = o.id AND p.user_id = auth.uid()
                  AND p.disabled_at IS NULL AND u.disabled_at IS NULL)
            WHEN 'agent' THEN EXISTS (
                SELECT 1 FROM public.agents a
                WHERE a.id = auth.agent_id() AND a.organization_id = o.id AND a.revoked_at IS NULL)
            ELSE false
          END;
    PERFORM auth.leave_definer(prev);
    RETURN v;
END
$$;

CREATE FUNCTION auth.org_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('keepsake.resolving', true) IS NOT DISTINCT FROM 'on'
                THEN NULL
                ELSE auth.lookup_org_id() END
$$;

-- The role of the current user in the current organisation (NULL for agents and system).
CREATE FUNCTION auth.lookup_org_role() RETURNS public.user_role
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer(true);
    v public.user_role;
BEGIN
    SELECT p.role INTO v
    FROM public.user_profiles p JOIN auth.users u ON u.id = p.user_id
    WHERE auth.actor() = 'user'
      AND p.user_id = auth.uid()
      AND p.organization_id = auth.claimed_org_id()
      AND p.disabled_at IS NULL AND u.disabled_at IS NULL;
    PERFORM auth.leave_definer(prev);
    RETURN v;
END
$$;

CREATE FUNCTION auth.org_role() RETURNS public.user_role
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('keepsake.resolving', true) IS NOT DISTINCT FROM 'on'
                THEN NULL
                ELSE auth.lookup_org_role() END
$$;

-- The organisations of the current user (actor 'user'), for choosing one before a request is
-- scoped to an organisation. Needs only keepsake.actor = 'user' and keepsake.user_id.
CREATE FUNCTION auth.my_organizations()
RETURNS TABLE (organization_id uuid, name text, slug text, role public.user_role)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    prev text[] := auth.enter_definer();
BEGIN
    RETURN QUERY
    SELECT o.id, o.name, o.slug, p.role
    FROM public.user_profiles p
    JOIN public.organizations o ON o.id = p.organization_id
    JOIN auth.users u ON u.id = p.user_id
    WHERE auth.actor() = 'user' AND p.user_id = auth.uid()
      AND p.disabled_at IS NULL AND u.disabled_at IS NULL
    ORDER BY o.name;
    PERFORM auth.leave_definer(prev);
END
$$;

-- Convenience predicates for policies and functions.
CREATE FUNCTION auth.is_system() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT auth.actor() = 'system' AND auth.org_id() IS NOT NULL
$$;

CREATE FUNCTION auth.is_manager() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(auth.org_role() IN ('admin', 'owner'), false)
$$;

-- Fails loudly when a function that must be scoped to one organisation runs without one.
CREATE FUNCTION auth.require_org_id() RETURNS uuid
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v uuid := auth.org_id();
BEGIN
    IF v IS NULL THEN
        RAISE EXCEPTION 'no organisation in scope: set keepsake.actor/org_id/user_id/agent_id for this transaction'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Token resolution: how the server authenticates a request before it knows the organisation.
-- Returns the token's identity if the token is usable (not revoked, not expired, enroll tokens not
-- yet used, user enabled and still a member, agent not revoked); no row otherwise.
-- Touches last_used_at at most once a minute per token.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION auth.resolve_token(p_hash bytea)
RETURNS TABLE (token_id uuid, kind public.token_kind, organization_id uuid, user_id uuid, agent_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    prev text[] := auth.enter_definer();
    t public.api_tokens%ROWTYPE;
    usable boolean := false;
BEGIN
    IF p_hash IS NOT NULL AND octet_length(p_hash) = 32 THEN
        SELECT * INTO t FROM public.api_tokens tok WHERE tok.token_hash = p_hash;
        usable := FOUND
            AND t.revoked_at IS NULL
            AND (t.expires_at IS NULL OR t.expires_at > now())
            AND NOT (t.kind = 'enroll' AND t.used_at IS NOT NULL)
            AND (t.kind <> 'user' OR EXISTS (
                    SELECT 1 FROM auth.users u JOIN public.user_profiles p ON p.user_id = u.id
                    WHERE u.id = t.user_id AND p.organization_id = t.organization_id
                      AND u.disabled_at IS NULL AND p.disabled_at IS NULL))
            AND (t.kind <> 'agent' OR EXISTS (
                    SELECT 1 FROM public.agents a
                    WHERE a.id = t.agent_id AND a.organization_id = t.organization_id AND a.revoked_at IS NULL));
    END IF;
    IF usable THEN
        IF t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute' THEN
            UPDATE public.api_tokens tok SET last_used_at = now() WHERE tok.id = t.id;
        END IF;
        token_id := t.id;
        kind := t.kind;
        organization_id := t.organization_id;
        user_id := t.user_id;
        agent_id := t.agent_id;
        RETURN NEXT;
    END IF;
    PERFORM auth.leave_definer(prev);
END
$$;

-- Returns the id of the user with this e-mail, creating the user if needed. Callable by the
-- system actor or an admin/owner of the current organisation (to invite members); the new user
-- has no access until a user_profiles row is added.
CREATE FUNCTION auth.ensure_user(p_email text, p_display_name text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_email text := lower(btrim(p_email));
    prev text[];
BEGIN
    IF NOT (auth.is_system() OR auth.is_manager()) THEN
        RAISE EXCEPTION 'only the system actor or an organisation admin/owner may add users'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    prev := auth.enter_definer();
    INSERT INTO auth.users (email, display_name) VALUES (v_email, p_display_name)
    ON CONFLICT (email) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM auth.users WHERE email = v_email;
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN v_id;
END
$$;

-- Bootstrap: creates an organisation and its first user (role 'owner'). Platform-level, so it is
-- NOT granted to keepsake_app: `keepsake-server admin create-org` calls it over the owner connection.
CREATE FUNCTION public.create_organization(
    p_name text, p_slug text, p_admin_email text, p_admin_display_name text DEFAULT NULL,
    p_settings jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_org uuid;
    v_user uuid;
    v_email text := lower(btrim(p_admin_email));
BEGIN
    INSERT INTO public.organizations (name, slug, settings)
    VALUES (p_name, p_slug,
            coalesce(p_settings, '{"hemisphere": "north", "allow_unsealed_key_on_disk": false}'::jsonb))
    RETURNING id INTO v_org;

    INSERT INTO auth.users (email, display_name) VALUES (v_email, p_admin_display_name)
    ON CONFLICT (email) DO NOTHING
    RETURNING id INTO v_user;
    IF v_user IS NULL THEN
        SELECT id INTO v_user FROM auth.users WHERE email = v_email;
    END IF;

    INSERT INTO public.user_profiles (user_id, organization_id, role, display_name)
    VALUES (v_user, v_org, 'owner', p_admin_display_name);
    PERFORM auth.leave_definer(prev);
    RETURN v_org;
END
$$;
