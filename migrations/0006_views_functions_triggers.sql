-- 0006 — views, the seed's functions and triggers (corrected), guards that keep history
-- append-only, automatic audit records, and catalog helpers.
--
-- Conventions for SECURITY DEFINER functions: `SET search_path = pg_catalog, pg_temp`, every
-- object schema-qualified, auth.enter_definer() / auth.leave_definer() around the body when it
-- reads or writes tables (lets the owner's "definer" policy admit rows when the owner is not a
-- superuser), EXECUTE revoked from PUBLIC (default privileges of 0001) and granted explicitly in
-- 0007, and an explicit organisation scope.

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- True inside owner-run maintenance: a SECURITY DEFINER function of this schema, or an owner
-- session that did `SET LOCAL keepsake.definer = 'on'`. Never true for keepsake_app.
CREATE FUNCTION auth.in_maintenance() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT auth.in_definer() AND current_user <> 'keepsake_app'
$$;

-- Names of the columns whose values differ between two row images.
CREATE FUNCTION public.changed_columns(old_row jsonb, new_row jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(k ORDER BY k), '{}')
    FROM jsonb_object_keys(new_row) AS k
    WHERE new_row -> k IS DISTINCT FROM old_row -> k
$$;

-- ---------------------------------------------------------------------------------------------
-- Views (seed). security_invoker: they read the underlying tables with the caller's rights, so
-- row-level security applies and a view never shows another organisation's rows.
-- ---------------------------------------------------------------------------------------------
CREATE VIEW public.backup_success_analytics WITH (security_invoker = true) AS
SELECT
    organization_id,
    date_trunc('day', created_at) AS backup_date,
    count(*) AS total_backups,
    count(*) FILTER (WHERE status = 'completed') AS successful_backups,
    count(*) FILTER (WHERE status = 'failed') AS failed_backups,
    round(avg(duration_seconds)) AS avg_duration_seconds,
    sum(bytes_processed) AS total_bytes_processed,
    round(avg(success_rate), 2) AS avg_success_rate
FROM public.backup_jobs
WHERE created_at >= CURRENT_DATE - interval '30 days'
GROUP BY organization_id, date_trunc('day', created_at);

CREATE VIEW public.recovery_time_analytics WITH (security_invoker = true) AS
SELECT
    organization_id,
    recovery_type,
    count(*) AS total_recoveries,
    avg(EXTRACT(EPOCH FROM (completed_at - started_at))) AS avg_recovery_time_seconds,
    min(EXTRACT(EPOCH FROM (completed_at - started_at))) AS min_recovery_time_seconds,
    max(EXTRACT(EPOCH FROM (completed_at - started_at))) AS max_recovery_time_seconds,
    count(*) FILTER (WHERE verification_passed = true) AS verified_recoveries
FROM public.recovery_jobs
WHERE status = 'completed' AND completed_at IS NOT NULL
GROUP BY organization_id, recovery_type;

CREATE VIEW public.storage_cost_analysis WITH (security_invoker = true) AS
SELECT
    sa.organization_id,
    bd.name AS destination_name,
    bd.destination_type,
    sum(sa.cost_daily) AS monthly_cost,
    avg(sa.backup_efficiency_score) AS avg_efficiency,
    sum(sa.deduplication_savings) AS total_deduplication_savings,
    sum(sa.compression_savings) AS total_compression_savings
FROM public.storage_analytics sa
JOIN public.backup_destinations bd ON sa.destination_id = bd.id AND bd.organization_id = sa.organization_id
WHERE sa.measurement_date >= CURRENT_DATE - interval '30 days'
GROUP BY sa.organization_id, bd.name, bd.destination_type;

-- ---------------------------------------------------------------------------------------------
-- update_destination_usage (seed) — credits a completed job's STORED bytes (bytes_new: new
-- ciphertext after dedup and compression) to its destination exactly once.
--   * BEFORE INSERT OR UPDATE, so a job inserted already completed is counted too;
--   * usage_counted_bytes remembers what was credited; it cannot be set by callers, so
--     completed -> running -> completed, or any further update of a completed job, never counts
--     twice; a later correction of bytes_new while completed adjusts by the difference;
--   * SECURITY DEFINER: agents complete jobs but may not write backup_destinations; scoped to the
--     job's own organisation (composite FK: the destination belongs to it).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.update_destination_usage() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_delta bigint;
    prev text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.usage_counted_bytes := NULL;
    ELSE
        NEW.usage_counted_bytes := OLD.usage_counted_bytes;
        IF OLD.usage_counted_bytes IS NOT NULL AND NEW.destination_id IS DISTINCT FROM OLD.destination_id THEN
            RAISE EXCEPTION 'backup job % is already counted in the usage of destination %; its destination cannot change',
                OLD.id, OLD.destination_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;

    IF NEW.status = 'completed' AND NEW.destination_id IS NOT NULL THEN
        v_delta := NEW.bytes_new - coalesce(NEW.usage_counted_bytes, 0);
        IF NEW.usage_counted_bytes IS NULL OR v_delta <> 0 THEN
            prev := auth.enter_definer();
            UPDATE public.backup_destinations
               SET current_usage = greatest(current_usage + v_delta, 0),
                   updated_at = now()
             WHERE id = NEW.destination_id
               AND organization_id = NEW.organization_id;
            PERFORM auth.leave_definer(prev);
            NEW.usage_counted_bytes := NEW.bytes_new;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_job_completion_trigger
    BEFORE INSERT OR UPDATE ON public.backup_jobs
    FOR EACH ROW
    EXECUTE FUNCTION public.update_destination_usage();

-- ---------------------------------------------------------------------------------------------
-- backup_failure_alert (seed) — one critical emergency notification when a wedding-critical job
-- fails: on the transition into (failed AND wedding-critical), on INSERT as well as UPDATE, with the
-- job's own organisation; the unique index (backup_job_id, notification_type) makes it exactly
-- once even if the job fails again after a retry.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.backup_failure_alert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[];
BEGIN
    IF NEW.status = 'failed' AND NEW.wedding_critical_priority THEN
        IF TG_OP = 'UPDATE' AND OLD.status = 'failed' AND OLD.wedding_critical_priority THEN
            RETURN NEW;  -- already alerted for this failure
        END IF;
        prev := auth.enter_definer();
        INSERT INTO public.emergency_notifications (
            organization_id, notification_type, severity, message, metadata, backup_job_id)
        VALUES (
            NEW.organization_id,
            'backup_failure',
            'critical',
            format('Wedding-critical backup failed: %s', coalesce(NEW.error_message, 'no error message')),
            jsonb_build_object(
                'backup_job_id', NEW.id,
                'failure_time', coalesce(NEW.completed_at, now()),
                'agent_id', NEW.agent_id,
                'source_id', NEW.source_id,
                'strategy_id', NEW.strategy_id),
            NEW.id)
        ON CONFLICT (backup_job_id, notification_type) WHERE backup_job_id IS NOT NULL DO NOTHING;
        PERFORM auth.leave_definer(prev);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_failure_alert_trigger
    AFTER INSERT OR UPDATE ON public.backup_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND NEW.wedding_critical_priority)
    EXECUTE FUNCTION public.backup_failure_alert();

-- ---------------------------------------------------------------------------------------------
-- cleanup_expired_recovery_points (seed) — deletes the expired recovery points of ONE organisation,
-- keeping points that a recovery job references (the FK is RESTRICT: they are skipped, never a
-- failure), points under legal hold, and everything while the organisation has a legal-hold
-- retention policy. Rows locked by a concurrent transaction are skipped (next run). Writes one
-- backup_logs row for the organisation when anything was expired.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.cleanup_expired_recovery_points_for_org(p_org uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_deleted integer := 0;
    v_referenced integer;
    v_held integer;
    v_org_hold boolean;
BEGIN
    SELECT EXISTS (SELECT 1 FROM public.retention_policies
                   WHERE organization_id = p_org AND legal_hold) INTO v_org_hold;

    IF NOT v_org_hold THEN
        WITH doomed AS (
            SELECT rp.id
            FROM public.recovery_points rp
            WHERE rp.organization_id = p_org
              AND rp.retention_expires_at < now()
              AND NOT rp.legal_hold
              AND NOT EXISTS (SELECT 1 FROM public.recovery_jobs rj
                              WHERE rj.recovery_point_id = rp.id AND rj.organization_id = p_org)
            FOR UPDATE OF rp SKIP LOCKED
        )
        DELETE FROM public.recovery_points rp
        USING doomed
        WHERE rp.id = doomed.id;
        GET DIAGNOSTICS v_deleted = ROW_COUNT;
    END IF;

    SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM public.recovery_jobs rj
                                          WHERE rj.recovery_point_id = rp.id AND rj.organization_id = p_org)),
           count(*) FILTER (WHERE rp.legal_hold OR v_org_hold)
      INTO v_referenced, v_held
      FROM public.recovery_points rp
     WHERE rp.organization_id = p_org AND rp.retention_expires_at < now();

    IF v_deleted + v_referenced + v_held > 0 THEN
        INSERT INTO public.backup_logs (organization_id, log_level, component, message, details, created_at)
        VALUES (p_org, 'info', 'retention',
                format('Cleaned up %s expired recovery points', v_deleted),
                jsonb_build_object('deleted', v_deleted,
                                   'kept_referenced_by_recovery_jobs', v_referenced,
                                   'kept_legal_hold', v_held),
                now());
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN v_deleted;
END
$$;

-- The seed's entry point, for keepsake_app: the current organisation only; system actor or
-- admin/owner.
CREATE FUNCTION public.cleanup_expired_recovery_points() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid := auth.require_org_id();
BEGIN
    IF NOT (auth.is_system() OR auth.is_manager()) THEN
        RAISE EXCEPTION 'cleanup_expired_recovery_points: system actor or admin/owner required'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN public.cleanup_expired_recovery_points_for_org(v_org);
END
$$;

-- Cross-organisation maintenance (owner only, not granted to keepsake_app).
CREATE FUNCTION public.cleanup_expired_recovery_points_all_orgs() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_org uuid;
    v_total integer := 0;
BEGIN
    FOR v_org IN SELECT id FROM public.organizations ORDER BY id LOOP
        v_total := v_total + public.cleanup_expired_recovery_points_for_org(v_org);
    END LOOP;
    PERFORM auth.leave_definer(prev);
    RETURN v_total;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- optimize_wedding_season_backups (seed) — for ONE organisation:
--   * strategies with wedding_season_optimized switch to their wedding_season_frequency (default
--     daily) inside the organisation's wedding season and to off_season_frequency (default weekly)
--     outside it; the season follows the organisation's hemisphere / configured months;
--   * in-flight jobs (queued/running/paused/verifying) of a source covered by a wedding-critical
--     entry whose window contains the date are flagged wedding_critical_priority; finished jobs
--     are never rewritten (the seed flagged every job created today, failed ones included, which
--     also re-fired failure alerts);
--   * wedding-critical entries entering their window move from 'upcoming' to 'active'.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.optimize_wedding_season_backups_for_org(p_org uuid, p_today date DEFAULT CURRENT_DATE)
RETURNS TABLE (in_season boolean, strategies_updated integer, jobs_flagged integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_settings jsonb;
BEGIN
    SELECT o.settings INTO v_settings FROM public.organizations o WHERE o.id = p_org;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organisation % does not exist', p_org USING ERRCODE = 'no_data_found';
    END IF;
    in_season := public.wedding_season_contains(v_settings, p_today);

    UPDATE public.backup_strategies s
       SET backup_frequency = CASE WHEN in_season THEN s.wedding_season_frequency ELSE s.off_season_frequency END
     WHERE s.organization_id = p_org
       AND s.wedding_season_optimized
       AND s.is_active
       AND s.backup_frequency IS DISTINCT FROM
           (CASE WHEN in_season THEN s.wedding_season_frequency ELSE s.off_season_frequency END);
    GET DIAGNOSTICS strategies_updated = ROW_COUNT;

    UPDATE public.backup_jobs j
       SET wedding_critical_priority = true
     WHERE j.organization_id = p_org
       AND NOT j.wedding_critical_priority
       AND j.status IN ('queued', 'running', 'paused', 'verifying')
       AND j.source_id IS NOT NULL
       AND EXISTS (
           SELECT 1 FROM public.wedding_critical_data w
           WHERE w.organization_id = p_org
             AND w.status IN ('upcoming', 'active')
             AND p_today BETWEEN w.critical_from AND w.critical_until
             AND (w.agent_id IS NULL OR w.agent_id = j.agent_id)
             AND (w.source_id IS NULL OR w.source_id = j.source_id));
    GET DIAGNOSTICS jobs_flagged = ROW_COUNT;

    UPDATE public.wedding_critical_data w
       SET status = 'active'
     WHERE w.organization_id = p_org
       AND w.status = 'upcoming'
       AND p_today BETWEEN w.critical_from AND w.critical_until;

    PERFORM auth.leave_definer(prev);
    RETURN NEXT;
END
$$;

-- The seed's entry point, for keepsake_app: the current organisation only; system or admin/owner.
CREATE FUNCTION public.optimize_wedding_season_backups(p_today date DEFAULT CURRENT_DATE) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid := auth.require_org_id();
BEGIN
    IF NOT (auth.is_system() OR auth.is_manager()) THEN
        RAISE EXCEPTION 'optimize_wedding_season_backups: system actor or admin/owner required'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM public.optimize_wedding_season_backups_for_org(v_org, p_today);
END
$$;

-- Cross-organisation maintenance (owner only).
CREATE FUNCTION public.optimize_wedding_season_backups_all_orgs(p_today date DEFAULT CURRENT_DATE) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_org uuid;
    v_n integer := 0;
BEGIN
    FOR v_org IN SELECT id FROM public.organizations ORDER BY id LOOP
        PERFORM public.optimize_wedding_season_backups_for_org(v_org, p_today);
        v_n := v_n + 1;
    END LOOP;
    PERFORM auth.leave_definer(prev);
    RETURN v_n;
END
$$;

-- Whether a date is in the wedding season of the current organisation.
CREATE FUNCTION public.is_wedding_season(p_date date DEFAULT CURRENT_DATE) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT public.wedding_season_contains(o.settings, p_date)
    FROM public.organizations o WHERE o.id = auth.org_id()
$$;

-- ---------------------------------------------------------------------------------------------
-- Organisation purge (owner only): the audit trail is append-only, so deleting an organisation
-- must go through here (or an owner session with keepsake.definer = 'on').
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.delete_organization(p_org uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_found boolean;
BEGIN
    -- Children first where the FKs are RESTRICT / NO ACTION between siblings.
    DELETE FROM public.recovery_jobs WHERE organization_id = p_org;
    DELETE FROM public.organizations WHERE id = p_org;
    v_found := FOUND;
    PERFORM auth.leave_definer(prev);
    RETURN v_found;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Guards. They run for every caller except owner maintenance (auth.in_maintenance()) and raise
-- insufficient_privilege (SQLSTATE 42501).
-- ---------------------------------------------------------------------------------------------

-- File versions are history: a version's content never changes; it may only be closed once
-- (valid_to_seq/valid_to/closed_by_job_id from NULL). An agent may add versions and close versions
-- only at its source's newest commit (backup_sources.last_committed_seq, bumped first in the
-- commit transaction), so it can never alter a past state.
CREATE FUNCTION public.backup_files_history_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
    v_head bigint;
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
        IF cardinality(ch) = 0 THEN
            RETURN NEW;
        END IF;
        IF NOT ch <@ ARRAY['valid_to_seq', 'valid_to', 'closed_by_job_id'] THEN
            RAISE EXCEPTION 'file versions are immutable; only valid_to_seq, valid_to and closed_by_job_id may be set (attempted: %)',
                array_to_string(ch, ', ') USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.valid_to_seq IS NOT NULL THEN
            RAISE EXCEPTION 'file version % is closed; history cannot be rewritten', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF auth.actor() = 'agent' THEN
        SELECT s.last_committed_seq INTO v_head FROM public.backup_sources s WHERE s.id = NEW.source_id;
        IF TG_OP = 'INSERT' AND (NEW.valid_to_seq IS NOT NULL OR NEW.valid_from_seq IS DISTINCT FROM v_head) THEN
            RAISE EXCEPTION 'an agent adds live versions at its source''s newest commit (%), not at %',
                v_head, NEW.valid_from_seq USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.valid_to_seq IS DISTINCT FROM v_head THEN
            RAISE EXCEPTION 'an agent closes versions at its source''s newest commit (%), not at %',
                v_head, NEW.valid_to_seq USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_files_history_guard
    BEFORE INSERT OR UPDATE ON public.backup_files
    FOR EACH ROW EXECUTE FUNCTION public.backup_files_history_guard();

CREATE FUNCTION public.backup_jobs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'agent_id', 'source_id', 'job_type', 'created_at'] THEN
        RAISE EXCEPTION 'backup job identity columns are immutable (attempted: %)', array_to_string(ch, ', ')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.seq IS NOT NULL AND ch && ARRAY['seq', 'parent_seq'] THEN
        RAISE EXCEPTION 'backup job % is committed as seq %; its sequence cannot change', OLD.id, OLD.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF auth.actor() = 'agent' AND OLD.wedding_critical_priority AND NOT NEW.wedding_critical_priority THEN
        RAISE EXCEPTION 'an agent cannot lower the priority of a wedding-critical job'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_jobs_guard
    BEFORE UPDATE ON public.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION public.backup_jobs_guard();

-- Agents report progress on recovery jobs targeted at them; they cannot change what is restored,
-- where, or claim for another machine.
CREATE FUNCTION public.recovery_jobs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'created_at', 'initiated_by'] THEN
        RAISE EXCEPTION 'recovery job identity columns are immutable (attempted: %)', array_to_string(ch, ', ')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF auth.actor() = 'agent' THEN
        IF NOT ch <@ ARRAY['status', 'progress_percentage', 'estimated_completion', 'started_at', 'completed_at',
                           'files_recovered', 'bytes_recovered', 'verification_passed', 'claimed_by', 'claimed_at',
                           'lease_expires_at', 'attempts', 'files_total', 'bytes_total', 'error_message', 'updated_at'] THEN
            RAISE EXCEPTION 'an agent may only report progress on a recovery job (attempted: %)', array_to_string(ch, ', ')
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.claimed_by IS NOT NULL AND NEW.claimed_by IS DISTINCT FROM auth.agent_id() THEN
            RAISE EXCEPTION 'an agent can only claim a recovery job for itself'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.status = 'initiated' AND OLD.status <> 'initiated' THEN
            RAISE EXCEPTION 'an agent cannot reset a recovery job' USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER recovery_jobs_guard
    BEFORE UPDATE ON public.recovery_jobs
    FOR EACH ROW EXECUTE FUNCTION public.recovery_jobs_guard();

-- An agent updates only its own heartbeat fields; nobody moves an agent to another organisation.
CREATE FUNCTION public.agents_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'created_at'] THEN
        RAISE EXCEPTION 'agent identity columns are immutable' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF auth.actor() = 'agent' AND NOT ch <@ ARRAY['last_seen_at', 'last_heartbeat', 'agent_version', 'hostname', 'platform', 'updated_at'] THEN
        RAISE EXCEPTION 'an agent may only update its heartbeat (attempted: %)', array_to_string(ch, ', ')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER agents_guard
    BEFORE UPDATE ON public.agents
    FOR EACH ROW EXECUTE FUNCTION public.agents_guard();

-- A source's root and owner never change; its commit sequence only moves forward.
CREATE FUNCTION public.backup_sources_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'agent_id', 'root_path', 'created_at'] THEN
        RAISE EXCEPTION 'backup source identity columns are immutable (attempted: %)', array_to_string(ch, ', ')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.last_committed_seq < OLD.last_committed_seq THEN
        RAISE EXCEPTION 'the commit sequence of a source cannot go back (% -> %)', OLD.last_committed_seq, NEW.last_committed_seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF auth.actor() = 'agent' AND NOT ch <@ ARRAY['last_committed_seq', 'label', 'updated_at'] THEN
        RAISE EXCEPTION 'an agent may only advance its source''s commit sequence or relabel it (attempted: %)',
            array_to_string(ch, ', ') USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_sources_guard
    BEFORE UPDATE ON public.backup_sources
    FOR EACH ROW EXECUTE FUNCTION public.backup_sources_guard();

-- Tokens: the secret hash and what the token identifies never change; a used or revoked token
-- stays used / revoked.
CREATE FUNCTION public.api_tokens_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'kind', 'user_id', 'agent_id', 'token_hash', 'created_by', 'created_at'] THEN
        RAISE EXCEPTION 'token identity columns are immutable (attempted: %)', array_to_string(ch, ', ')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (OLD.used_at IS NOT NULL AND NEW.used_at IS DISTINCT FROM OLD.used_at)
       OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at) THEN
        RAISE EXCEPTION 'a used or revoked token cannot be reactivated' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_tokens_guard
    BEFORE UPDATE ON public.api_tokens
    FOR EACH ROW EXECUTE FUNCTION public.api_tokens_guard();

-- Encryption keys: the recipient a key was registered with is permanent (rotation adds a new
-- row); the sealed bundle may be re-sealed (passphrase change).
CREATE FUNCTION public.backup_encryption_keys_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ch text[];
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    ch := public.changed_columns(to_jsonb(OLD), to_jsonb(NEW));
    IF ch && ARRAY['id', 'organization_id', 'recipient', 'key_hash', 'key_type', 'created_at',
                   'created_by_agent_id', 'created_by_user_id'] THEN
        RAISE EXCEPTION 'an encryption key''s recipient is permanent; rotate by adding a new key (attempted: %)',
            array_to_string(ch, ', ') USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT OLD.is_active AND NEW.is_active THEN
        RAISE EXCEPTION 'a retired encryption key cannot be reactivated' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_encryption_keys_guard
    BEFORE UPDATE ON public.backup_encryption_keys
    FOR EACH ROW EXECUTE FUNCTION public.backup_encryption_keys_guard();

-- Legal hold: only an owner (or the system actor) lifts it, and while it holds, the retention
-- floor cannot be lowered.
CREATE FUNCTION public.retention_policies_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    IF OLD.legal_hold AND NOT NEW.legal_hold
       AND NOT (auth.is_system() OR auth.org_role() IS NOT DISTINCT FROM 'owner') THEN
        RAISE EXCEPTION 'only an owner can lift a legal hold' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.legal_hold AND NEW.legal_hold AND NEW.min_retention < OLD.min_retention THEN
        RAISE EXCEPTION 'the retention floor cannot be lowered under legal hold' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.legal_hold AND NOT OLD.legal_hold THEN
        NEW.legal_hold_set_at := coalesce(NEW.legal_hold_set_at, now());
        NEW.legal_hold_set_by := coalesce(NEW.legal_hold_set_by, auth.uid());
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER retention_policies_guard
    BEFORE UPDATE ON public.retention_policies
    FOR EACH ROW EXECUTE FUNCTION public.retention_policies_guard();

-- The audit trail is append-only for everyone (owner maintenance excepted, e.g. an organisation
-- purge).
CREATE FUNCTION public.backup_audit_trail_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF auth.in_maintenance() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'backup_audit_trail is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER backup_audit_trail_append_only
    BEFORE UPDATE OR DELETE ON public.backup_audit_trail
    FOR EACH ROW EXECUTE FUNCTION public.backup_audit_trail_append_only();

-- backup_dependencies: refuse cycles (A -> B -> ... -> A) among the organisation's active edges.
CREATE FUNCTION public.backup_dependencies_no_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_cycle boolean;
BEGIN
    IF NOT NEW.is_active THEN
        RETURN NEW;
    END IF;
    IF NEW.dependent_source_id IS NOT NULL THEN
        WITH RECURSIVE reach(node) AS (
            SELECT NEW.depends_on_source_id
            UNION
            SELECT d.depends_on_source_id
            FROM public.backup_dependencies d JOIN reach r ON d.dependent_source_id = r.node
            WHERE d.organization_id = NEW.organization_id AND d.is_active AND d.id <> NEW.id
        )
        SELECT EXISTS (SELECT 1 FROM reach WHERE node = NEW.dependent_source_id) INTO v_cycle;
    ELSE
        WITH RECURSIVE reach(node) AS (
            SELECT NEW.depends_on_strategy_id
            UNION
            SELECT d.depends_on_strategy_id
            FROM public.backup_dependencies d JOIN reach r ON d.dependent_strategy_id = r.node
            WHERE d.organization_id = NEW.organization_id AND d.is_active AND d.id <> NEW.id
        )
        SELECT EXISTS (SELECT 1 FROM reach WHERE node = NEW.dependent_strategy_id) INTO v_cycle;
    END IF;
    IF v_cycle THEN
        RAISE EXCEPTION 'backup dependency would create a cycle' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_dependencies_no_cycle
    BEFORE INSERT OR UPDATE ON public.backup_dependencies
    FOR EACH ROW EXECUTE FUNCTION public.backup_dependencies_no_cycle();

-- ---------------------------------------------------------------------------------------------
-- Automatic audit records for configuration and access changes. Trigger arguments name columns
-- left out of the record: secrets (credentials, token hashes, key bundles) and noisy counters.
-- SECURITY DEFINER so that every actor's change is recorded (keepsake_app's own INSERT policies on
-- the audit trail would not admit, e.g., a system row written during a user's transaction).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.audit_row_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_old jsonb;
    v_new jsonb;
    v_org uuid;
    v_actor text := auth.actor();
    v_skip text[] := coalesce(TG_ARGV, '{}'::text[]) || 'updated_at'::text;  -- TG_ARGV is NULL without arguments
    prev text[];
BEGIN
    IF TG_OP <> 'INSERT' THEN
        v_old := to_jsonb(OLD) - v_skip;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v_new := to_jsonb(NEW) - v_skip;
    END IF;
    IF TG_OP = 'UPDATE' AND v_old = v_new THEN
        RETURN NULL;
    END IF;
    v_org := coalesce(v_new ->> 'organization_id', v_old ->> 'organization_id')::uuid;
    prev := auth.enter_definer();
    -- Rows removed together with their organisation are not audited into it.
    IF EXISTS (SELECT 1 FROM public.organizations WHERE id = v_org) THEN
        INSERT INTO public.backup_audit_trail (
            organization_id, user_id, agent_id, actor, action, resource_type, resource_id, old_values, new_values)
        VALUES (
            v_org,
            CASE WHEN v_actor = 'user' THEN auth.uid() END,
            CASE WHEN v_actor = 'agent' THEN auth.agent_id() END,
            coalesce(v_actor, 'system'),
            lower(TG_OP),
            TG_TABLE_NAME,
            (coalesce(v_new, v_old) ->> 'id')::uuid,
            v_old,
            v_new);
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_backup_strategies AFTER INSERT OR UPDATE OR DELETE ON public.backup_strategies
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_backup_schedules AFTER INSERT OR UPDATE OR DELETE ON public.backup_schedules
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change('next_run_at', 'last_run_at');
CREATE TRIGGER audit_backup_destinations AFTER INSERT OR UPDATE OR DELETE ON public.backup_destinations
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change('credentials_encrypted', 'current_usage', 'health_status',
        'consecutive_failures', 'last_health_error', 'last_tested_at');
CREATE TRIGGER audit_retention_policies AFTER INSERT OR UPDATE OR DELETE ON public.retention_policies
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_backup_exclusions AFTER INSERT OR UPDATE OR DELETE ON public.backup_exclusions
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_user_profiles AFTER INSERT OR UPDATE OR DELETE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_agents AFTER INSERT OR UPDATE OR DELETE ON public.agents
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change('last_seen_at', 'last_heartbeat');
CREATE TRIGGER audit_api_tokens AFTER INSERT OR UPDATE OR DELETE ON public.api_tokens
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change('token_hash', 'last_used_at');
CREATE TRIGGER audit_backup_encryption_keys AFTER INSERT OR UPDATE OR DELETE ON public.backup_encryption_keys
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change('key_bundle');
CREATE TRIGGER audit_wedding_critical_data AFTER INSERT OR UPDATE OR DELETE ON public.wedding_critical_data
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_vendor_backup_configs AFTER INSERT OR UPDATE OR DELETE ON public.vendor_backup_configs
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_failover_configurations AFTER INSERT OR UPDATE OR DELETE ON public.failover_configurations
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_alert_configurations AFTER INSERT OR UPDATE OR DELETE ON public.alert_configurations
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_emergency_contacts AFTER INSERT OR UPDATE OR DELETE ON public.emergency_contacts
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_disaster_scenarios AFTER INSERT OR UPDATE OR DELETE ON public.disaster_scenarios
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();
CREATE TRIGGER audit_recovery_jobs AFTER INSERT OR DELETE ON public.recovery_jobs
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();

-- ---------------------------------------------------------------------------------------------
-- updated_at maintenance on every table that has the column.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_schema, c.table_name
        FROM information_schema.columns c
        JOIN information_schema.tables tb
          ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name AND tb.table_type = 'BASE TABLE'
        WHERE c.table_schema IN ('public', 'auth') AND c.column_name = 'updated_at'
        ORDER BY 1, 2
    LOOP
        EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %I.%I FOR EACH ROW EXECUTE FUNCTION public.set_updated_at()',
                       t.table_schema, t.table_name);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Catalog queries (SECURITY INVOKER: row-level security applies).
-- ---------------------------------------------------------------------------------------------

-- The file versions of a source live at commit p_seq, optionally restricted to path prefixes
-- (directory semantics: 'a/b' matches 'a/b' and 'a/b/...', not 'a/bc'). Ordered by path.
-- Paths are byte-ordered (COLLATE "C"), so "starts with 'a/b/'" is the index range
-- ['a/b/', 'a/b0') — '0' is the byte after '/'.
CREATE FUNCTION public.backup_files_at(p_source_id uuid, p_seq bigint, p_prefixes text[] DEFAULT '{}')
RETURNS SETOF public.backup_files
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (f.path) f.*
    FROM (
        SELECT b.*
        FROM public.backup_files b
        WHERE coalesce(cardinality(p_prefixes), 0) = 0
          AND b.source_id = p_source_id
          AND b.valid_from_seq <= p_seq
          AND (b.valid_to_seq IS NULL OR b.valid_to_seq > p_seq)
        UNION ALL
        SELECT b.*
        FROM unnest(p_prefixes) AS p(prefix)
        JOIN public.backup_files b
          ON b.source_id = p_source_id
         AND (b.path = p.prefix COLLATE "C"
              OR (b.path >= (p.prefix || '/') COLLATE "C" AND b.path < (p.prefix || '0') COLLATE "C"))
        WHERE b.valid_from_seq <= p_seq
          AND (b.valid_to_seq IS NULL OR b.valid_to_seq > p_seq)
    ) f
    ORDER BY f.path
$$;

-- The newest commit of a source completed at or before p_at (NULL when none).
CREATE FUNCTION public.source_seq_at(p_source_id uuid, p_at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT max(j.seq) FROM public.backup_jobs j
    WHERE j.source_id = p_source_id AND j.seq IS NOT NULL
      AND coalesce(j.completed_at, j.created_at) <= p_at
$$;

-- ---------------------------------------------------------------------------------------------
-- start_disaster_recovery — executes a disaster scenario: creates the recovery jobs of its
-- templates (see disaster_scenarios) for the target machine, each from the newest recovery point
-- at or before p_point_in_time (or, without one, from the source's state at that time).
-- Allowed for the system actor and users whose role is in the scenario's responsible_roles (an
-- emergency contact can start a predefined emergency procedure).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.start_disaster_recovery(
    p_scenario_id uuid, p_target_agent_id uuid, p_target_location text,
    p_point_in_time timestamptz DEFAULT now(), p_target_directory text DEFAULT NULL)
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid := auth.require_org_id();
    prev text[] := auth.enter_definer();
    sc public.disaster_scenarios%ROWTYPE;
    tpl jsonb;
    src record;
    v_point uuid;
    v_id uuid;
    v_prefixes text[];
    v_type public.recovery_type_enum;
BEGIN
    SELECT * INTO sc FROM public.disaster_scenarios WHERE id = p_scenario_id AND organization_id = v_org;
    IF NOT FOUND OR NOT sc.is_active THEN
        RAISE EXCEPTION 'no active disaster scenario % in this organisation', p_scenario_id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (auth.is_system() OR auth.org_role() = ANY (sc.responsible_roles)) THEN
        RAISE EXCEPTION 'your role may not execute this disaster scenario' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.agents a
                   WHERE a.id = p_target_agent_id AND a.organization_id = v_org AND a.revoked_at IS NULL) THEN
        RAISE EXCEPTION 'target agent % is not an active machine of this organisation', p_target_agent_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    FOR tpl IN SELECT value FROM jsonb_array_elements(sc.recovery_job_templates) LOOP
        v_prefixes := coalesce(ARRAY(SELECT jsonb_array_elements_text(tpl -> 'path_prefixes')), '{}');
        v_type := coalesce((tpl ->> 'recovery_type')::public.recovery_type_enum, sc.recovery_type);
        FOR src IN
            SELECT s.id FROM public.backup_sources s
            WHERE s.organization_id = v_org
              AND (NOT tpl ? 'source_id' OR s.id = (tpl ->> 'source_id')::uuid)
              AND (NOT tpl ? 'from_agent_id' OR s.agent_id = (tpl ->> 'from_agent_id')::uuid)
            ORDER BY s.id
        LOOP
            SELECT rp.id INTO v_point FROM public.recovery_points rp
            WHERE rp.organization_id = v_org AND rp.source_id = src.id AND rp.point_in_time <= p_point_in_time
            ORDER BY rp.point_in_time DESC LIMIT 1;

            INSERT INTO public.recovery_jobs (
                organization_id, recovery_point_id, source_id, point_in_time, initiated_by, recovery_type,
                target_location, target_agent_id, target_directory, path_prefixes, status,
                is_emergency_recovery, disaster_scenario_id, notes)
            VALUES (
                v_org, v_point, src.id, p_point_in_time, auth.uid(), v_type,
                p_target_location, p_target_agent_id, p_target_directory, v_prefixes, 'queued',
                v_type = 'emergency_recovery', sc.id, format('Disaster scenario: %s', sc.name))
            RETURNING id INTO v_id;
            RETURN NEXT v_id;
        END LOOP;
    END LOOP;

    UPDATE public.disaster_scenarios SET last_executed_at = now() WHERE id = sc.id;
    PERFORM auth.leave_definer(prev);
END
$$;
