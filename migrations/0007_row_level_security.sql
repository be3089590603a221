-- 0007 — tenant isolation: row-level security ENABLED and FORCED on every table holding an
-- organisation's data, per-table per-command policies by actor, and the grants of keepsake_app.
--
-- Actors (see 0001): a *user* with a role in the organisation (admin / owner / member /
-- emergency_contact), an *agent* (enrolled machine), or the *system* actor (server background
-- work). Every policy starts with `organization_id = (SELECT auth.org_id())`, so nothing is visible
-- without a verified identity. Tenant policies apply TO keepsake_app only. Each table also gets a
-- "definer_maintenance" policy for its owner that admits rows only inside SECURITY DEFINER functions
-- (keepsake.definer = 'on'); with a superuser owner (tests, embedded cluster) it is moot, with a
-- non-superuser owner it is what lets those functions work under FORCE ROW LEVEL SECURITY.
--
-- Privileges are granted by the helper together with each policy, so keepsake_app holds exactly
-- the commands some policy allows.

-- ---------------------------------------------------------------------------------------------
-- Policy helpers (owner-only; later migrations use them for new tables).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION auth.policy_actor_predicate(p_actor text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE p_actor
        WHEN 'system'    THEN '(SELECT auth.actor()) = ''system'''
        WHEN 'agent'     THEN '(SELECT auth.actor()) = ''agent'''
        WHEN 'user'      THEN '(SELECT auth.org_role()) IS NOT NULL'
        WHEN 'member'    THEN '(SELECT auth.org_role()) IN (''admin'', ''owner'', ''member'')'
        WHEN 'manager'   THEN '(SELECT auth.org_role()) IN (''admin'', ''owner'')'
        WHEN 'emergency' THEN '(SELECT auth.org_role()) = ''emergency_contact'''
    END;
END
$$;

-- ENABLE + FORCE row-level security and add the owner's definer_maintenance policy.
CREATE FUNCTION auth.secure_table(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_owner regrole;
BEGIN
    SELECT c.relowner::regrole INTO v_owner FROM pg_catalog.pg_class c WHERE c.oid = p_table;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p_table);
    EXECUTE format('CREATE POLICY definer_maintenance ON %s AS PERMISSIVE FOR ALL TO %s '
                   'USING (auth.in_definer()) WITH CHECK (auth.in_definer())', p_table, v_owner);
END
$$;

-- One policy: FOR p_command TO keepsake_app, organisation scope AND actor predicate, AND the
-- optional extra USING / WITH CHECK predicates (p_check defaults to p_using). Also grants the
-- command to keepsake_app. Named "<command>_<actor>" unless p_name is given.
CREATE FUNCTION auth.create_tenant_policy(
    p_table regclass, p_command text, p_actor text,
    p_using text DEFAULT NULL, p_check text DEFAULT NULL, p_name text DEFAULT NULL,
    p_org_column text DEFAULT 'organization_id')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := auth.policy_actor_predicate(p_actor);
    v_base text;
    v_sql text;
    v_check text := coalesce(p_check, p_using);
BEGIN
    IF v_actor IS NULL THEN
        RAISE EXCEPTION 'unknown policy actor %', p_actor;
    END IF;
    IF upper(p_command) NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') THEN
        RAISE EXCEPTION 'unsupported policy command %', p_command;
    END IF;
    v_base := format('%I = (SELECT auth.org_id()) AND %s', p_org_column, v_actor);
    v_sql := format('CREATE POLICY %I ON %s AS PERMISSIVE FOR %s TO keepsake_app',
                    coalesce(p_name, lower(p_command) || '_' || p_actor), p_table, upper(p_command));
    IF upper(p_command) IN ('SELECT', 'UPDATE', 'DELETE') THEN
        v_sql := v_sql || format(' USING (%s%s)', v_base,
                                 CASE WHEN p_using IS NULL THEN '' ELSE ' AND (' || p_using || ')' END);
    END IF;
    IF upper(p_command) IN ('INSERT', 'UPDATE') THEN
        v_sql := v_sql || format(' WITH CHECK (%s%s)', v_base,
                                 CASE WHEN v_check IS NULL THEN '' ELSE ' AND (' || v_check || ')' END);
    END IF;
    EXECUTE v_sql;
    EXECUTE format('GRANT %s ON %s TO keepsake_app', upper(p_command), p_table);
END
$$;

-- Shorthand: the same command for several actors.
CREATE FUNCTION auth.create_tenant_policies(p_table regclass, p_command text, p_actors text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a text;
BEGIN
    FOREACH a IN ARRAY p_actors LOOP
        PERFORM auth.create_tenant_policy(p_table, p_command, a);
    END LOOP;
END
$$;

-- Configuration table: read by the given readers, managed (INSERT/UPDATE/DELETE) by admin/owner and
-- the system actor.
CREATE FUNCTION auth.configuration_policies(p_table regclass, p_readers text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM auth.create_tenant_policies(p_table, 'SELECT', p_readers);
    PERFORM auth.create_tenant_policies(p_table, 'INSERT', ARRAY['manager', 'system']);
    PERFORM auth.create_tenant_policies(p_table, 'UPDATE', ARRAY['manager', 'system']);
    PERFORM auth.create_tenant_policies(p_table, 'DELETE', ARRAY['manager', 'system']);
END
$$;

REVOKE ALL ON FUNCTION auth.policy_actor_predicate(text), auth.secure_table(regclass),
    auth.create_tenant_policy(regclass, text, text, text, text, text, text),
    auth.create_tenant_policies(regclass, text, text[]),
    auth.configuration_policies(regclass, text[]) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Secure every tenant table (and organizations, auth.users).
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'auth')
          AND (c.oid IN ('public.organizations'::regclass, 'auth.users'::regclass)
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped))
        ORDER BY 1
    LOOP
        PERFORM auth.secure_table(t);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Identity and tenancy
-- ---------------------------------------------------------------------------------------------
SELECT auth.create_tenant_policy('public.organizations', 'SELECT', a, p_org_column => 'id')
FROM unnest(ARRAY['user', 'agent', 'system']) a;
SELECT auth.create_tenant_policy('public.organizations', 'UPDATE', a, p_org_column => 'id')
FROM unnest(ARRAY['manager', 'system']) a;

-- Members see the organisation's profiles; every user sees their own (an emergency contact sees
-- only theirs). Only an owner grants or removes the owner role.
SELECT auth.create_tenant_policies('public.user_profiles', 'SELECT', ARRAY['member', 'system']);
SELECT auth.create_tenant_policy('public.user_profiles', 'SELECT', 'user',
    p_using => 'user_id = (SELECT auth.uid())', p_name => 'select_own');
SELECT auth.create_tenant_policy('public.user_profiles', c, 'manager',
    p_using => 'role <> ''owner'' OR (SELECT auth.org_role()) = ''owner''')
FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;
SELECT auth.create_tenant_policy('public.user_profiles', c, 'system')
FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;

SELECT auth.create_tenant_policies('public.agents', 'SELECT', ARRAY['member', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.agents', 'INSERT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policies('public.agents', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.agents', 'UPDATE', 'agent', p_using => 'id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.agents', 'DELETE', ARRAY['system']);

SELECT auth.create_tenant_policies('public.backup_sources', 'SELECT', ARRAY['member', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.backup_sources', 'INSERT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_sources', 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_sources', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_sources', 'UPDATE', 'agent', p_using => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_sources', 'DELETE', ARRAY['manager', 'system']);

SELECT auth.create_tenant_policies('public.api_tokens', 'SELECT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.api_tokens', 'SELECT', 'user', p_using => 'user_id = (SELECT auth.uid())', p_name => 'select_own');
SELECT auth.create_tenant_policies('public.api_tokens', 'INSERT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.api_tokens', 'INSERT', 'user',
    p_check => 'kind = ''user'' AND user_id = (SELECT auth.uid())', p_name => 'insert_own');
SELECT auth.create_tenant_policies('public.api_tokens', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.api_tokens', 'UPDATE', 'user', p_using => 'user_id = (SELECT auth.uid())', p_name => 'update_own');
SELECT auth.create_tenant_policies('public.api_tokens', 'DELETE', ARRAY['system']);

-- auth.users has no organization_id: a user sees themself and, as a member / the system actor, the
-- users that have a profile in the current organisation; a user edits only their display name.
CREATE POLICY select_self ON auth.users FOR SELECT TO keepsake_app
    USING (id = (SELECT auth.uid()) AND (SELECT auth.actor()) = 'user' AND (SELECT auth.org_id()) IS NOT NULL);
CREATE POLICY select_org ON auth.users FOR SELECT TO keepsake_app
    USING ((SELECT auth.org_id()) IS NOT NULL
           AND ((SELECT auth.org_role()) IN ('admin', 'owner', 'member') OR (SELECT auth.actor()) = 'system')
           AND EXISTS (SELECT 1 FROM public.user_profiles p
                       WHERE p.user_id = users.id AND p.organization_id = (SELECT auth.org_id())));
CREATE POLICY update_self ON auth.users FOR UPDATE TO keepsake_app
    USING (id = (SELECT auth.uid()) AND (SELECT auth.actor()) = 'user' AND (SELECT auth.org_id()) IS NOT NULL)
    WITH CHECK (id = (SELECT auth.uid()) AND (SELECT auth.actor()) = 'user' AND (SELECT auth.org_id()) IS NOT NULL);
GRANT SELECT ON auth.users TO keepsake_app;
GRANT UPDATE (display_name) ON auth.users TO keepsake_app;

-- ---------------------------------------------------------------------------------------------
-- Configuration. Agents read what they need to back up (strategies, schedules, retention,
-- exclusions, vendor configs, wedding-critical data, dependencies, failover server URLs) but not
-- destinations (credentials) nor integrations (secrets).
-- ---------------------------------------------------------------------------------------------
-- The seed's two policies, kept by name but read-only: the seed's FOR ALL let every member —
-- emergency contacts included — rewrite and delete strategies and destinations.
SELECT auth.create_tenant_policy('public.backup_strategies', 'SELECT', 'member',
    p_name => 'Users can access their organization''s backup strategies');
SELECT auth.create_tenant_policies('public.backup_strategies', 'SELECT', ARRAY['agent', 'system']);
SELECT auth.create_tenant_policies('public.backup_strategies', c, ARRAY['manager', 'system'])
FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;

SELECT auth.create_tenant_policy('public.backup_destinations', 'SELECT', 'member',
    p_name => 'Users can access their organization''s backup destinations');
SELECT auth.create_tenant_policies('public.backup_destinations', 'SELECT', ARRAY['system']);
SELECT auth.create_tenant_policies('public.backup_destinations', c, ARRAY['manager', 'system'])
FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;

SELECT auth.configuration_policies(t::regclass, ARRAY['member', 'agent', 'system'])
FROM unnest(ARRAY['public.backup_schedules', 'public.retention_policies', 'public.backup_exclusions',
                  'public.vendor_backup_configs', 'public.wedding_critical_data',
                  'public.backup_dependencies', 'public.failover_configurations']) t;

SELECT auth.configuration_policies(t::regclass, ARRAY['member', 'system'])
FROM unnest(ARRAY['public.alert_configurations', 'public.backup_integrations',
                  'public.cloud_backup_integrations', 'public.monitoring_integrations',
                  'public.backup_service_apis', 'public.wedding_platform_integrations',
                  'public.compliance_reports', 'public.backup_compliance_logs']) t;

-- Emergency contacts read the escalation list and the disaster procedures.
SELECT auth.configuration_policies(t::regclass, ARRAY['member', 'emergency', 'system'])
FROM unnest(ARRAY['public.emergency_contacts', 'public.disaster_scenarios']) t;

-- ---------------------------------------------------------------------------------------------
-- Operations. Agents are append-only: they insert their own rows, update only their own in-flight
-- rows, and never delete. Deletion (retention, GC) is the system actor's.
-- ---------------------------------------------------------------------------------------------
SELECT auth.create_tenant_policies('public.backup_jobs', 'SELECT', ARRAY['member', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.backup_jobs', 'INSERT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_jobs', 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_jobs', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_jobs', 'UPDATE', 'agent',
    p_using => 'agent_id = (SELECT auth.agent_id()) AND status IN (''queued'', ''running'', ''paused'', ''verifying'')',
    p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_jobs', 'DELETE', ARRAY['system']);

SELECT auth.create_tenant_policies('public.backup_files', 'SELECT', ARRAY['member', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.backup_files', 'INSERT', ARRAY['system']);
SELECT auth.create_tenant_policy('public.backup_files', 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_files', 'UPDATE', ARRAY['system']);
SELECT auth.create_tenant_policy('public.backup_files', 'UPDATE', 'agent',
    p_using => 'agent_id = (SELECT auth.agent_id()) AND valid_to_seq IS NULL',
    p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_files', 'DELETE', ARRAY['system']);

-- Append-only operational records: read by members/agents, written by agents (their own) and the
-- system actor; the system actor alone corrects or deletes.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['public.backup_manifests', 'public.backup_checksums', 'public.backup_logs',
                             'public.backup_metrics'] LOOP
        PERFORM auth.create_tenant_policies(t::regclass, 'SELECT', ARRAY['member', 'agent', 'system']);
        PERFORM auth.create_tenant_policies(t::regclass, 'INSERT', ARRAY['system']);
        PERFORM auth.create_tenant_policy(t::regclass, 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
        PERFORM auth.create_tenant_policies(t::regclass, 'DELETE', ARRAY['system']);
    END LOOP;
END
$$;
SELECT auth.create_tenant_policies(t::regclass, 'UPDATE', ARRAY['system'])
FROM unnest(ARRAY['public.backup_manifests', 'public.backup_checksums']) t;

-- ---------------------------------------------------------------------------------------------
-- Recovery
-- ---------------------------------------------------------------------------------------------
SELECT auth.create_tenant_policies('public.recovery_points', 'SELECT', ARRAY['member', 'emergency', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.recovery_points', 'INSERT', ARRAY['system']);
SELECT auth.create_tenant_policy('public.recovery_points', 'INSERT', 'agent', p_check => 'agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.recovery_points', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policies('public.recovery_points', 'DELETE', ARRAY['system']);

-- The seed's emergency policy, kept: admins, owners and emergency contacts see emergency recovery
-- jobs; members (admin/owner/member) see all; an agent sees the jobs targeted at it.
SELECT auth.create_tenant_policy('public.recovery_jobs', 'SELECT', 'user',
    p_using => 'is_emergency_recovery = true AND (SELECT auth.org_role()) IN (''admin'', ''owner'', ''emergency_contact'')',
    p_name => 'Emergency recovery access');
SELECT auth.create_tenant_policies('public.recovery_jobs', 'SELECT', ARRAY['member', 'system']);
SELECT auth.create_tenant_policy('public.recovery_jobs', 'SELECT', 'agent', p_using => 'target_agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policy('public.recovery_jobs', 'INSERT', 'member', p_check => 'initiated_by = (SELECT auth.uid())');
SELECT auth.create_tenant_policy('public.recovery_jobs', 'INSERT', 'emergency',
    p_check => 'is_emergency_recovery = true AND initiated_by = (SELECT auth.uid())');
SELECT auth.create_tenant_policies('public.recovery_jobs', 'INSERT', ARRAY['system']);
SELECT auth.create_tenant_policies('public.recovery_jobs', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.recovery_jobs', 'UPDATE', 'agent',
    p_using => 'target_agent_id = (SELECT auth.agent_id()) AND status IN (''initiated'', ''queued'', ''claimed'', ''running'', ''verifying'')',
    p_check => 'target_agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.recovery_jobs', 'DELETE', ARRAY['system']);

-- Validations and logs follow their recovery job: an emergency contact sees those of the jobs it
-- can see (emergency ones); an agent writes them for jobs targeted at it.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['public.recovery_validations', 'public.recovery_logs'] LOOP
        PERFORM auth.create_tenant_policies(t::regclass, 'SELECT', ARRAY['member', 'agent', 'system']);
        PERFORM auth.create_tenant_policy(t::regclass, 'SELECT', 'emergency',
            p_using => 'EXISTS (SELECT 1 FROM public.recovery_jobs j WHERE j.id = recovery_job_id)');
        PERFORM auth.create_tenant_policies(t::regclass, 'INSERT', ARRAY['system']);
        PERFORM auth.create_tenant_policy(t::regclass, 'INSERT', 'agent',
            p_check => 'agent_id = (SELECT auth.agent_id()) AND EXISTS (SELECT 1 FROM public.recovery_jobs j '
                       'WHERE j.id = recovery_job_id AND j.target_agent_id = (SELECT auth.agent_id()))');
        PERFORM auth.create_tenant_policies(t::regclass, 'DELETE', ARRAY['system']);
    END LOOP;
END
$$;
SELECT auth.create_tenant_policies('public.recovery_validations', 'UPDATE', ARRAY['system']);

-- ---------------------------------------------------------------------------------------------
-- Monitoring
-- ---------------------------------------------------------------------------------------------
SELECT auth.create_tenant_policies(t::regclass, 'SELECT', ARRAY['member', 'system'])
FROM unnest(ARRAY['public.storage_usage', 'public.storage_analytics']) t;
SELECT auth.create_tenant_policies(t::regclass, c, ARRAY['system'])
FROM unnest(ARRAY['public.storage_usage', 'public.storage_analytics']) t,
     unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) c;

SELECT auth.create_tenant_policies('public.emergency_notifications', 'SELECT', ARRAY['member', 'emergency', 'system']);
SELECT auth.create_tenant_policies('public.emergency_notifications', 'INSERT', ARRAY['system']);
SELECT auth.create_tenant_policies('public.emergency_notifications', 'UPDATE', ARRAY['manager', 'emergency', 'system']);
SELECT auth.create_tenant_policies('public.emergency_notifications', 'DELETE', ARRAY['system']);

-- ---------------------------------------------------------------------------------------------
-- Security
-- ---------------------------------------------------------------------------------------------
-- The first machine of an organisation registers the key (generated there, never on the server);
-- rotation and retirement are admin/owner decisions.
SELECT auth.create_tenant_policies('public.backup_encryption_keys', 'SELECT', ARRAY['member', 'emergency', 'agent', 'system']);
SELECT auth.create_tenant_policies('public.backup_encryption_keys', 'INSERT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_encryption_keys', 'INSERT', 'agent',
    p_check => 'created_by_agent_id = (SELECT auth.agent_id())');
SELECT auth.create_tenant_policies('public.backup_encryption_keys', 'UPDATE', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policies('public.backup_encryption_keys', 'DELETE', ARRAY['system']);

-- Append-only for everyone: no UPDATE or DELETE policy or grant (and a trigger, 0006).
SELECT auth.create_tenant_policies('public.backup_audit_trail', 'SELECT', ARRAY['manager', 'system']);
SELECT auth.create_tenant_policy('public.backup_audit_trail', 'INSERT', 'user',
    p_check => 'actor = ''user'' AND user_id = (SELECT auth.uid()) AND agent_id IS NULL');
SELECT auth.create_tenant_policy('public.backup_audit_trail', 'INSERT', 'agent',
    p_check => 'actor = ''agent'' AND agent_id = (SELECT auth.agent_id()) AND user_id IS NULL');
SELECT auth.create_tenant_policy('public.backup_audit_trail', 'INSERT', 'system', p_check => 'actor = ''system''');

-- ---------------------------------------------------------------------------------------------
-- Schemas, views, sequences, functions
-- ---------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA public, auth TO keepsake_app;

GRANT SELECT ON public.backup_success_analytics, public.recovery_time_analytics, public.storage_cost_analysis
    TO keepsake_app;

-- Identity columns of append-only tables written by keepsake_app.
GRANT USAGE ON SEQUENCE public.backup_files_id_seq, public.backup_checksums_id_seq, public.backup_logs_id_seq,
    public.backup_metrics_id_seq, public.recovery_logs_id_seq TO keepsake_app;

-- Functions keepsake_app calls, directly or through policies, defaults, CHECK constraints and
-- invoker triggers. Everything else (create_organization, delete_organization, the *_for_org and
-- *_all_orgs maintenance functions, policy helpers) stays owner-only.
GRANT EXECUTE ON FUNCTION
    auth.actor(), auth.uid(), auth.agent_id(), auth.claimed_org_id(), auth.in_definer(), auth.in_maintenance(),
    auth.org_id(), auth.lookup_org_id(), auth.org_role(), auth.lookup_org_role(),
    auth.is_system(), auth.is_manager(), auth.require_org_id(),
    auth.resolve_token(bytea), auth.ensure_user(text, text), auth.my_organizations()
    TO keepsake_app;
GRANT EXECUTE ON FUNCTION
    public.organization_settings_valid(jsonb), public.organization_wedding_season_months(jsonb),
    public.wedding_season_contains(jsonb, date), public.is_wedding_season(date),
    public.cron_field_valid(text, integer, integer, text[]), public.is_valid_cron(text),
    public.is_valid_timezone(text), public.backup_frequency_rank(public.backup_frequency_type),
    public.relative_paths_valid(text[]), public.urls_valid(text[]), public.changed_columns(jsonb, jsonb),
    public.backup_files_at(uuid, bigint, text[]), public.source_seq_at(uuid, timestamptz),
    public.cleanup_expired_recovery_points(), public.optimize_wedding_season_backups(date),
    public.start_disaster_recovery(uuid, uuid, text, timestamptz, text)
    TO keepsake_app;

-- ---------------------------------------------------------------------------------------------
-- Self-check: the migration fails if any table with organisation data is left unprotected.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(c.oid::regclass::text, ', ') INTO bad
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'auth')
      AND (c.oid IN ('public.organizations'::regclass, 'auth.users'::regclass)
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped))
      AND (NOT c.relrowsecurity OR NOT c.relforcerowsecurity
           OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                          WHERE p.polrelid = c.oid AND 'keepsake_app'::regrole = ANY (p.polroles)));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'tables without forced row-level security or keepsake_app policies: %', bad;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relowner = 'keepsake_app'::regrole) THEN
        RAISE EXCEPTION 'keepsake_app must not own any relation';
    END IF;
END
$$;
