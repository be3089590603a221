-- 0011 — strategy protection: the wedding-season optimisation never makes a strategy back up less
-- often than configured; every organisation has exactly one default strategy; every backup job is
-- linked to a strategy (its schedule's, its machine's vendor configuration's, else the default).

-- ---------------------------------------------------------------------------------------------
-- Configured and effective frequency. `configured_frequency` is what the administrator set;
-- `backup_frequency` is what applies now: the season optimisation may make it more frequent, never
-- less (CHECK). Existing strategies start with their current frequency as their configuration.
-- ---------------------------------------------------------------------------------------------
SET LOCAL keepsake.definer = 'on';

ALTER TABLE public.backup_strategies ADD COLUMN configured_frequency public.backup_frequency_type;
UPDATE public.backup_strategies SET configured_frequency = backup_frequency;
ALTER TABLE public.backup_strategies
    ALTER COLUMN configured_frequency SET NOT NULL,
    ADD CONSTRAINT backup_strategies_never_below_configured CHECK (
        public.backup_frequency_rank(backup_frequency) <= public.backup_frequency_rank(configured_frequency));

-- Outside owner maintenance (the optimisation runs as such), setting one of the two columns sets
-- the configuration: a new backup_frequency becomes the configured one; a new configured_frequency
-- also becomes the current one (the next optimisation raises it again in season).
CREATE FUNCTION public.backup_strategies_frequency() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.configured_frequency := coalesce(NEW.configured_frequency, NEW.backup_frequency);
        RETURN NEW;
    END IF;
    IF auth.in_maintenance() THEN
        RETURN NEW;
    END IF;
    IF NEW.backup_frequency IS DISTINCT FROM OLD.backup_frequency
       AND NEW.configured_frequency IS NOT DISTINCT FROM OLD.configured_frequency THEN
        NEW.configured_frequency := NEW.backup_frequency;
    ELSIF NEW.configured_frequency IS DISTINCT FROM OLD.configured_frequency
       AND NEW.backup_frequency IS NOT DISTINCT FROM OLD.backup_frequency THEN
        NEW.backup_frequency := NEW.configured_frequency;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_strategies_frequency
    BEFORE INSERT OR UPDATE ON public.backup_strategies
    FOR EACH ROW EXECUTE FUNCTION public.backup_strategies_frequency();

-- The optimisation, as in 0006, except that the frequency it sets is the more frequent of the
-- configured one and the season's: an hourly or real-time strategy stays so all year.
CREATE OR REPLACE FUNCTION public.optimize_wedding_season_backups_for_org(p_org uuid, p_today date DEFAULT CURRENT_DATE)
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

    WITH target AS (
        SELECT s.id,
               CASE WHEN in_season THEN s.wedding_season_frequency ELSE s.off_season_frequency END AS season
        FROM public.backup_strategies s
        WHERE s.organization_id = p_org AND s.wedding_season_optimized AND s.is_active
    ), wanted AS (
        SELECT t.id,
               CASE WHEN public.backup_frequency_rank(t.season) < public.backup_frequency_rank(s.configured_frequency)
                    THEN t.season ELSE s.configured_frequency END AS frequency
        FROM target t JOIN public.backup_strategies s ON s.id = t.id
    )
    UPDATE public.backup_strategies s
       SET backup_frequency = w.frequency
      FROM wanted w
     WHERE s.id = w.id
       AND s.backup_frequency IS DISTINCT FROM w.frequency;
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

-- ---------------------------------------------------------------------------------------------
-- The default strategy: one per organisation (unique index), always present (created with the
-- organisation, cannot be unset or deleted), moved by marking another strategy as the default.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE public.backup_strategies ADD COLUMN is_default boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX backup_strategies_one_default ON public.backup_strategies (organization_id) WHERE is_default;

-- Makes sure p_org has a default strategy: the one named 'default' (which schedules used before
-- this migration) when it exists, otherwise a new one backing up in real time, kept 10 years.
CREATE FUNCTION public.create_default_backup_strategy(p_org uuid) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v uuid;
BEGIN
    SELECT s.id INTO v FROM public.backup_strategies s WHERE s.organization_id = p_org AND s.is_default;
    IF v IS NULL THEN
        UPDATE public.backup_strategies s SET is_default = true
         WHERE s.organization_id = p_org AND s.name = 'default'
        RETURNING s.id INTO v;
    END IF;
    IF v IS NULL THEN
        INSERT INTO public.backup_strategies (organization_id, name, description, strategy_type,
                                              backup_frequency, retention_period, is_default)
        VALUES (p_org, 'default', 'Used by every backup job for which no other strategy is chosen.',
                'continuous_backup', 'real_time', interval '10 years', true)
        RETURNING id INTO v;
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN v;
END
$$;

CREATE FUNCTION public.organizations_default_strategy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.create_default_backup_strategy(NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER organizations_default_strategy
    AFTER INSERT ON public.organizations
    FOR EACH ROW EXECUTE FUNCTION public.organizations_default_strategy();

-- Marking a strategy as the default takes the mark from the previous one (in definer mode, which
-- the guard below admits).
CREATE FUNCTION public.backup_strategies_default_handover() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[];
BEGIN
    IF NEW.is_default AND (TG_OP = 'INSERT' OR NOT OLD.is_default) THEN
        prev := auth.enter_definer();
        UPDATE public.backup_strategies s SET is_default = false
         WHERE s.organization_id = NEW.organization_id AND s.is_default AND s.id <> NEW.id;
        PERFORM auth.leave_definer(prev);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_strategies_default_handover
    BEFORE INSERT OR UPDATE OF is_default ON public.backup_strategies
    FOR EACH ROW EXECUTE FUNCTION public.backup_strategies_default_handover();

-- The default is never unset or deleted directly (owner maintenance excepted, which includes
-- delete_organization).
CREATE FUNCTION public.backup_strategies_default_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF auth.in_maintenance() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE' AND OLD.is_default THEN
        RAISE EXCEPTION 'strategy "%" is the organisation''s default and cannot be deleted; mark another strategy as the default first',
            OLD.name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.is_default AND NOT NEW.is_default THEN
        RAISE EXCEPTION 'strategy "%" is the organisation''s default and cannot be unset; mark another strategy as the default instead',
            OLD.name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.organization_id IS DISTINCT FROM OLD.organization_id THEN
        RAISE EXCEPTION 'a strategy cannot move to another organisation' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER backup_strategies_default_guard
    BEFORE UPDATE OR DELETE ON public.backup_strategies
    FOR EACH ROW EXECUTE FUNCTION public.backup_strategies_default_guard();

-- Every existing organisation gets its default.
DO $$
DECLARE
    v_org uuid;
BEGIN
    FOR v_org IN SELECT id FROM public.organizations ORDER BY id LOOP
        PERFORM public.create_default_backup_strategy(v_org);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Every backup job has a strategy. A job inserted without one gets, in order: the strategy of its
-- schedule; the strategy of the vendor configuration that applies to its machine (the machine's
-- own configuration first, then the organisation-wide ones, as the policy sent to the machine);
-- the organisation's default.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.backup_job_strategy(p_org uuid, p_agent uuid, p_schedule uuid) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v uuid;
BEGIN
    IF p_schedule IS NOT NULL THEN
        SELECT s.strategy_id INTO v FROM public.backup_schedules s
         WHERE s.id = p_schedule AND s.organization_id = p_org;
    END IF;
    IF v IS NULL AND p_agent IS NOT NULL THEN
        SELECT c.strategy_id INTO v FROM public.vendor_backup_configs c
         WHERE c.organization_id = p_org AND (c.agent_id = p_agent OR c.agent_id IS NULL)
           AND c.strategy_id IS NOT NULL
         ORDER BY c.agent_id IS NULL, c.supplier_type
         LIMIT 1;
    END IF;
    IF v IS NULL THEN
        SELECT s.id INTO v FROM public.backup_strategies s WHERE s.organization_id = p_org AND s.is_default;
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN v;
END
$$;

CREATE FUNCTION public.backup_jobs_link_strategy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.strategy_id IS NULL THEN
        NEW.strategy_id := public.backup_job_strategy(NEW.organization_id, NEW.agent_id, NEW.schedule_id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_jobs_link_strategy
    BEFORE INSERT ON public.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION public.backup_jobs_link_strategy();

-- Deleting a strategy moves its jobs to the organisation's default (the default itself cannot be
-- deleted). When the organisation itself is being deleted, its jobs go with it.
CREATE FUNCTION public.backup_strategies_relink_jobs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_default uuid;
BEGIN
    SELECT s.id INTO v_default FROM public.backup_strategies s
     WHERE s.organization_id = OLD.organization_id AND s.is_default AND s.id <> OLD.id;
    IF v_default IS NOT NULL THEN
        UPDATE public.backup_jobs j SET strategy_id = v_default
         WHERE j.organization_id = OLD.organization_id AND j.strategy_id = OLD.id;
    END IF;
    PERFORM auth.leave_definer(prev);
    RETURN OLD;
END
$$;

CREATE TRIGGER backup_strategies_relink_jobs
    BEFORE DELETE ON public.backup_strategies
    FOR EACH ROW EXECUTE FUNCTION public.backup_strategies_relink_jobs();

REVOKE ALL ON FUNCTION public.backup_strategies_frequency(), public.create_default_backup_strategy(uuid),
    public.organizations_default_strategy(), public.backup_strategies_default_handover(),
    public.backup_strategies_default_guard(), public.backup_job_strategy(uuid, uuid, uuid),
    public.backup_jobs_link_strategy(), public.backup_strategies_relink_jobs() FROM PUBLIC;

-- Existing jobs without a strategy are linked the same way, then the link is required. The
-- foreign key no longer sets NULL on delete (the column cannot be NULL): a strategy's jobs are
-- moved to the default by the trigger above before the strategy goes.
UPDATE public.backup_jobs j
   SET strategy_id = public.backup_job_strategy(j.organization_id, j.agent_id, j.schedule_id)
 WHERE j.strategy_id IS NULL;
ALTER TABLE public.backup_jobs ALTER COLUMN strategy_id SET NOT NULL;
ALTER TABLE public.backup_jobs DROP CONSTRAINT backup_jobs_strategy_fk;
ALTER TABLE public.backup_jobs ADD CONSTRAINT backup_jobs_strategy_fk FOREIGN KEY (strategy_id, organization_id)
    REFERENCES public.backup_strategies (id, organization_id);
DROP INDEX public.backup_jobs_strategy_idx;
CREATE INDEX backup_jobs_strategy_idx ON public.backup_jobs (strategy_id);

RESET keepsake.definer;
