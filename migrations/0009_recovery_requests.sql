-- 0009 — recovery requests over the API: what recovery jobs need beyond 0004 (overwrite, why a job
-- waits, the lease length), agents reporting why they wait, disaster scenarios that restore "the
-- lost machine", and four predefined scenarios for every organisation.
--
-- Conventions of 0006 for SECURITY DEFINER functions apply: pinned search_path, schema-qualified
-- objects, auth.enter_definer()/auth.leave_definer() around table access, an explicit
-- organisation scope, EXECUTE revoked from PUBLIC and granted to keepsake_app only where the API
-- calls the function.

-- ---------------------------------------------------------------------------------------------
-- recovery_jobs: new columns
-- ---------------------------------------------------------------------------------------------
ALTER TABLE public.recovery_jobs
    -- Replace newer local files on the target machine (default: restore beside them).
    ADD COLUMN overwrite boolean NOT NULL DEFAULT false,
    -- While a job waits: why (e.g. "waiting for the key to be unlocked on <machine>"); cleared
    -- when the job is claimed or reports progress.
    ADD COLUMN waiting_reason text CHECK (waiting_reason IS NULL OR length(waiting_reason) <= 1000),
    -- The lease length the claiming agent asked for; each progress report extends the lease by it.
    ADD COLUMN lease_seconds integer CHECK (lease_seconds IS NULL OR lease_seconds BETWEEN 1 AND 86400);

-- ---------------------------------------------------------------------------------------------
-- recovery_jobs_guard (0006) — agents may now also record why they wait (waiting_reason) and the
-- lease length they claimed with (lease_seconds). Everything else is unchanged: they still
-- cannot change what is restored, where, whether it overwrites, or claim for another machine.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.recovery_jobs_guard() RETURNS trigger
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
                           'lease_expires_at', 'lease_seconds', 'attempts', 'files_total', 'bytes_total',
                           'error_message', 'waiting_reason', 'updated_at'] THEN
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

-- ---------------------------------------------------------------------------------------------
-- start_disaster_recovery with the lost machine. Templates (disaster_scenarios, 0004) may now say
--   {"from_lost_agent": true}          restore every source of the machine named as lost,
--   {"requires_point_in_time": true}   the caller must give the point in time (ransomware: the
--                                      state before the attack),
--   {"overwrite": true}                the jobs replace newer local files,
-- besides source_id / from_agent_id / path_prefixes / recovery_type. p_point_in_time NULL means
-- "now" (and "not given"). Each job restores the newest recovery point at or before that time;
-- sources with no point by then are skipped (nothing was backed up), and a scenario with templates
-- that yields no job at all is an error. Allowed for the system actor and users whose role is in
-- the scenario's responsible_roles (an unknown role never passes: the comparison is coalesced).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.start_disaster_recovery(
    p_scenario_id uuid, p_target_agent_id uuid, p_target_location text,
    p_point_in_time timestamptz, p_target_directory text, p_lost_agent_id uuid)
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
    v_at timestamptz := coalesce(p_point_in_time, now());
    v_point uuid;
    v_id uuid;
    v_prefixes text[];
    v_type public.recovery_type_enum;
    v_from_lost boolean;
    v_templates integer := 0;
    v_jobs integer := 0;
BEGIN
    SELECT * INTO sc FROM public.disaster_scenarios WHERE id = p_scenario_id AND organization_id = v_org;
    IF NOT FOUND OR NOT sc.is_active THEN
        RAISE EXCEPTION 'no active disaster scenario % in this organisation', p_scenario_id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (auth.is_system() OR coalesce(auth.org_role() = ANY (sc.responsible_roles), false)) THEN
        RAISE EXCEPTION 'your role may not execute the disaster scenario "%"', sc.name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.agents a
                   WHERE a.id = p_target_agent_id AND a.organization_id = v_org AND a.revoked_at IS NULL) THEN
        RAISE EXCEPTION 'target agent % is not an active machine of this organisation', p_target_agent_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- The lost machine is usually revoked already (stolen laptop): revoked machines are fine here.
    IF p_lost_agent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.agents a
                   WHERE a.id = p_lost_agent_id AND a.organization_id = v_org) THEN
        RAISE EXCEPTION 'lost machine % is not a machine of this organisation', p_lost_agent_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    FOR tpl IN SELECT value FROM jsonb_array_elements(sc.recovery_job_templates) LOOP
        IF jsonb_typeof(tpl) <> 'object' THEN
            RAISE EXCEPTION 'disaster scenario "%" has an invalid job template: %', sc.name, tpl
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_templates := v_templates + 1;
        v_from_lost := coalesce((tpl ->> 'from_lost_agent')::boolean, false);
        IF v_from_lost AND p_lost_agent_id IS NULL THEN
            RAISE EXCEPTION 'the disaster scenario "%" restores the lost machine: name it (lost_agent_id)', sc.name
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF coalesce((tpl ->> 'requires_point_in_time')::boolean, false) AND p_point_in_time IS NULL THEN
            RAISE EXCEPTION 'the disaster scenario "%" restores the state before the incident: give the point in time (before it started)', sc.name
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        v_prefixes := coalesce(ARRAY(SELECT jsonb_array_elements_text(tpl -> 'path_prefixes')), '{}');
        v_type := coalesce((tpl ->> 'recovery_type')::public.recovery_type_enum, sc.recovery_type);
        FOR src IN
            SELECT s.id FROM public.backup_sources s
            WHERE s.organization_id = v_org
              AND (NOT tpl ? 'source_id' OR s.id = (tpl ->> 'source_id')::uuid)
              AND (NOT tpl ? 'from_agent_id' OR s.agent_id = (tpl ->> 'from_agent_id')::uuid)
              AND (NOT v_from_lost OR s.agent_id = p_lost_agent_id)
            ORDER BY s.id
        LOOP
            SELECT rp.id INTO v_point FROM public.recovery_points rp
            WHERE rp.organization_id = v_org AND rp.source_id = src.id AND rp.point_in_time <= v_at
            ORDER BY rp.point_in_time DESC, rp.seq DESC LIMIT 1;
            CONTINUE WHEN v_point IS NULL;

            INSERT INTO public.recovery_jobs (
                organization_id, recovery_point_id, source_id, point_in_time, initiated_by, recovery_type,
                target_location, target_agent_id, target_directory, path_prefixes, overwrite, status,
                is_emergency_recovery, disaster_scenario_id, notes)
            VALUES (
                v_org, v_point, src.id, v_at, auth.uid(), v_type,
                p_target_location, p_target_agent_id, p_target_directory, v_prefixes,
                coalesce((tpl ->> 'overwrite')::boolean, false), 'queued',
                v_type = 'emergency_recovery', sc.id, format('Disaster scenario: %s', sc.name))
            RETURNING id INTO v_id;
            v_jobs := v_jobs + 1;
            RETURN NEXT v_id;
        END LOOP;
    END LOOP;

    IF v_templates > 0 AND v_jobs = 0 THEN
        RAISE EXCEPTION 'nothing to restore: no recovery point at or before % for the sources of the disaster scenario "%"',
            v_at, sc.name USING ERRCODE = 'no_data_found';
    END IF;

    UPDATE public.disaster_scenarios SET last_executed_at = now() WHERE id = sc.id AND organization_id = v_org;
    PERFORM auth.leave_definer(prev);
END
$$;

-- The 0006 signature stays (existing callers), now one implementation: no lost machine.
CREATE OR REPLACE FUNCTION public.start_disaster_recovery(
    p_scenario_id uuid, p_target_agent_id uuid, p_target_location text,
    p_point_in_time timestamptz DEFAULT now(), p_target_directory text DEFAULT NULL)
RETURNS SETOF uuid
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT public.start_disaster_recovery(p_scenario_id, p_target_agent_id, p_target_location,
                                          p_point_in_time, p_target_directory, NULL::uuid)
$$;

REVOKE ALL ON FUNCTION public.start_disaster_recovery(uuid, uuid, text, timestamptz, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.start_disaster_recovery(uuid, uuid, text, timestamptz, text, uuid) TO keepsake_app;

-- ---------------------------------------------------------------------------------------------
-- Predefined disaster scenarios. create_predefined_disaster_scenarios(org) adds the four standard
-- procedures to one organisation (idempotent: an existing scenario of the same name is kept as
-- it is). Owner-only: called by the trigger on new organisations and below for existing ones.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.create_predefined_disaster_scenarios(p_org uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text[] := auth.enter_definer();
    v_n integer;
BEGIN
    INSERT INTO public.disaster_scenarios (
        organization_id, name, scenario_kind, description, steps, responsible_roles,
        expected_rto, expected_rpo, recovery_type, recovery_job_templates)
    VALUES
    (p_org, 'Laptop stolen at a venue', 'device_theft',
     'A working laptop (cards already copied, editing in progress) is stolen at a wedding venue. '
     'Cut it off, then restore everything it backed up onto a replacement machine as an emergency.',
     $j$[
       {"title": "Revoke the stolen laptop",
        "instructions": "Revoke the machine in Keepsake (POST /v1/agents/{id}/revoke) so its token stops working at once. Its backups stay on the server and cannot be deleted from the laptop.",
        "role": "admin"},
       {"title": "Keep the camera cards",
        "instructions": "Do not format or reuse any card from this wedding until the restore is verified: the cards hold whatever was shot after the laptop's last backup.",
        "role": "owner"},
       {"title": "Report the theft",
        "instructions": "Report to venue security and the police; note the serial number and the case number for the insurance claim.",
        "role": "owner"},
       {"title": "Check what the last backup holds",
        "instructions": "Look at the stolen laptop's newest recovery points (GET /v1/points?agent_id=...) to know the time of its last backup and which folders it covers.",
        "role": "emergency_contact"},
       {"title": "Enrol the replacement machine",
        "instructions": "Enrol a spare laptop with a single-use enrolment token and unlock the organisation key with the passphrase or the paper key.",
        "role": "admin"},
       {"title": "Start this scenario",
        "instructions": "Start it with the replacement as target machine, the stolen laptop as lost machine and an empty folder as target directory: every source of the stolen laptop is restored as an emergency job, ahead of other work, and the emergency contacts are notified.",
        "role": "emergency_contact"},
       {"title": "Verify and carry on",
        "instructions": "Wait until every job is completed with verification passed, copy the cards shot since the last backup, then let the replacement back up the restored folders.",
        "role": "owner"}
     ]$j$::jsonb,
     ARRAY['owner', 'admin', 'emergency_contact']::public.user_role[],
     interval '4 hours', interval '15 minutes', 'emergency_recovery',
     '[{"from_lost_agent": true}]'::jsonb),

    (p_org, 'NAS disk failure', 'hardware_failure',
     'The studio NAS lost a disk (or its volume). Rebuild or replace the storage, then restore every '
     'folder the NAS backed up in full.',
     $j$[
       {"title": "Stop writing to the NAS",
        "instructions": "Stop the Keepsake agent and any other sync on the NAS so a degraded array is not written to during the rebuild.",
        "role": "admin"},
       {"title": "Assess the array",
        "instructions": "Check whether the RAID can rebuild; replace the failed disk. If the volume is lost, create a new one.",
        "role": "admin"},
       {"title": "Check what the last backup holds",
        "instructions": "Note the NAS's newest recovery point per source: anything written after it is not in the backup and must come from the editing machines or cards.",
        "role": "owner"},
       {"title": "Enrol the repaired NAS",
        "instructions": "If the NAS was reinstalled, enrol it again as a new machine and unlock the organisation key with the passphrase or the paper key.",
        "role": "admin"},
       {"title": "Start this scenario",
        "instructions": "Start it with the repaired NAS as target machine, its old machine as lost machine and the new volume as target directory: each source is restored as a full recovery.",
        "role": "admin"},
       {"title": "Verify and re-enable backups",
        "instructions": "Check that every job completed with verification passed, open a few galleries, then start the agent again.",
        "role": "owner"}
     ]$j$::jsonb,
     ARRAY['owner', 'admin']::public.user_role[],
     interval '24 hours', interval '1 hour', 'full_recovery',
     '[{"from_lost_agent": true, "recovery_type": "full_recovery"}]'::jsonb),

    (p_org, 'Ransomware on the studio machine', 'ransomware',
     'Files on the studio machine were encrypted by ransomware. Isolate it, find when the attack '
     'began, and restore every source as it was BEFORE the attack onto a clean machine. Agents are '
     'append-only, so the backups themselves cannot have been destroyed from the machine.',
     $j$[
       {"title": "Isolate the machine",
        "instructions": "Disconnect the infected machine from every network (Wi-Fi off, cable out) and from external disks. Do not pay, and do not wipe it yet: it is evidence.",
        "role": "owner"},
       {"title": "Revoke its agent",
        "instructions": "Revoke the machine in Keepsake so it can no longer reach the server.",
        "role": "admin"},
       {"title": "Find when the attack began",
        "instructions": "From the ransom note, the modification times of the first encrypted files and the backup logs, determine when encryption started; choose a point in time safely before it.",
        "role": "admin"},
       {"title": "Prepare a clean machine",
        "instructions": "Wipe and reinstall the machine (or use a spare), enrol it as a new machine and unlock the organisation key with the passphrase or the paper key.",
        "role": "admin"},
       {"title": "Start this scenario at that time",
        "instructions": "Start it with the clean machine as target, the infected machine as lost machine and the point in time before the attack: each source is restored from the newest recovery point at or before that time.",
        "role": "admin"},
       {"title": "Verify and report",
        "instructions": "Check that every job completed with verification passed and open sample files. Report the incident (to the data-protection authority if client data may have been exposed).",
        "role": "owner"}
     ]$j$::jsonb,
     ARRAY['owner', 'admin']::public.user_role[],
     interval '8 hours', interval '24 hours', 'point_in_time_recovery',
     '[{"from_lost_agent": true, "recovery_type": "point_in_time_recovery", "requires_point_in_time": true}]'::jsonb),

    (p_org, 'Primary storage outage', 'destination_outage',
     'The organisation''s primary storage destination (server disk or S3 bucket) is unavailable. '
     'The data is still on the machines; nothing is restored automatically. Bring storage back '
     '(or switch to the secondary destination) and prove that backups and restores work again.',
     $j$[
       {"title": "Confirm the outage",
        "instructions": "GET /readyz and the server logs show the primary destination failing (disk full, bucket unreachable, expired credentials).",
        "role": "admin"},
       {"title": "Keep every original",
        "instructions": "Tell the team not to delete, move or format anything: agents keep their changes queued locally until storage is back.",
        "role": "owner"},
       {"title": "Restore storage or switch destinations",
        "instructions": "Fix the primary destination (free space, renew credentials, restore the bucket) or promote the secondary destination to primary.",
        "role": "admin"},
       {"title": "Check that backups resume",
        "instructions": "Agents retry on their own: check that new recovery points appear for every machine and that their queues drain.",
        "role": "admin"},
       {"title": "Run a restore drill",
        "instructions": "Run a restore drill on one machine to prove that the stored data reads back and validates.",
        "role": "owner"}
     ]$j$::jsonb,
     ARRAY['owner', 'admin']::public.user_role[],
     interval '2 hours', interval '0', 'full_recovery',
     '[]'::jsonb)
    ON CONFLICT (organization_id, name) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    PERFORM auth.leave_definer(prev);
    RETURN v_n;
END
$$;

-- Every new organisation gets them (create_organization, or any other insert by the owner).
CREATE FUNCTION public.organizations_predefined_scenarios() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.create_predefined_disaster_scenarios(NEW.id);
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION public.create_predefined_disaster_scenarios(uuid),
    public.organizations_predefined_scenarios() FROM PUBLIC;

CREATE TRIGGER organizations_predefined_scenarios
    AFTER INSERT ON public.organizations
    FOR EACH ROW EXECUTE FUNCTION public.organizations_predefined_scenarios();

-- ... and so does every existing one.
DO $$
DECLARE
    prev text[] := auth.enter_definer();
    v_org uuid;
BEGIN
    FOR v_org IN SELECT id FROM public.organizations ORDER BY id LOOP
        PERFORM public.create_predefined_disaster_scenarios(v_org);
    END LOOP;
    PERFORM auth.leave_definer(prev);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Self-check of 0007, repeated: every table with organisation data still has forced row-level
-- security and keepsake_app policies.
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
END
$$;
