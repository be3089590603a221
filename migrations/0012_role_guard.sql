-- 0012 — no privilege escalation between roles.
--
-- Roles rank owner > admin > member = emergency_contact. A user acting in an organisation may:
--   * make a user token only for a member of the organisation whose role ranks at or below their
--     own (an admin may make one for another admin, never for an owner); making tokens for other
--     people stays admin/owner-only (policies of 0007);
--   * change a role only of another user (never their own), whose current role ranks at or below
--     their own, and only to a role at or below their own: an admin never touches an owner and
--     never grants `owner`; granting `owner` is the owner's alone;
--   * add a member only with a role at or below their own;
--   * never move a profile to another user or organisation.
-- The system actor (the server's own work) and owner maintenance are not restricted here.
-- Violations raise insufficient_privilege (SQLSTATE 42501), like the guards of 0006.

-- Rank of a role, for comparisons (NULL for NULL).
CREATE FUNCTION auth.role_rank(p_role public.user_role) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_role
        WHEN 'owner' THEN 3
        WHEN 'admin' THEN 2
        WHEN 'member' THEN 1
        WHEN 'emergency_contact' THEN 1
    END
$$;

-- The role of p_user in the current organisation (auth.org_id()), NULL when they have no profile
-- there. SECURITY DEFINER so that the answer does not depend on which profiles the caller may see
-- (an emergency contact sees only their own); it never looks outside the current organisation.
CREATE FUNCTION auth.member_role(p_user uuid) RETURNS public.user_role
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid := auth.org_id();
    prev text[];
    v public.user_role;
BEGIN
    IF v_org IS NULL OR p_user IS NULL THEN
        RETURN NULL;
    END IF;
    prev := auth.enter_definer();
    SELECT p.role INTO v
    FROM public.user_profiles p
    WHERE p.user_id = p_user AND p.organization_id = v_org;
    PERFORM auth.leave_definer(prev);
    RETURN v;
END
$$;

-- User tokens: only for a member of the organisation whose role is at or below the caller's.
CREATE FUNCTION public.api_tokens_role_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_caller public.user_role;
    v_target public.user_role;
BEGIN
    IF auth.in_maintenance() OR NEW.kind <> 'user' OR auth.actor() IS DISTINCT FROM 'user' THEN
        RETURN NEW;
    END IF;
    v_caller := auth.org_role();
    v_target := auth.member_role(NEW.user_id);
    IF v_target IS NULL THEN
        RAISE EXCEPTION 'a user token can only be made for a member of the organisation'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_caller IS NULL OR auth.role_rank(v_target) > auth.role_rank(v_caller) THEN
        RAISE EXCEPTION 'a user whose role is % cannot make a token for a user whose role is %',
            coalesce(v_caller::text, 'none'), v_target
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_tokens_role_guard
    BEFORE INSERT ON public.api_tokens
    FOR EACH ROW EXECUTE FUNCTION public.api_tokens_role_guard();

-- Profiles: role changes and new members follow the ranks; nobody changes their own role; a
-- profile stays with its user and organisation.
CREATE FUNCTION public.user_profiles_role_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_caller public.user_role;
    v_rank integer;
BEGIN
    IF auth.in_maintenance() OR auth.actor() IS DISTINCT FROM 'user' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.user_id IS DISTINCT FROM OLD.user_id
           OR NEW.organization_id IS DISTINCT FROM OLD.organization_id THEN
            RAISE EXCEPTION 'a profile''s user and organisation are fixed'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.role = OLD.role THEN
            RETURN NEW;
        END IF;
    END IF;
    v_caller := auth.org_role();
    v_rank := coalesce(auth.role_rank(v_caller), 0);
    IF TG_OP = 'UPDATE' THEN
        IF OLD.user_id = auth.uid() THEN
            RAISE EXCEPTION 'nobody can change their own role'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF auth.role_rank(OLD.role) > v_rank THEN
            RAISE EXCEPTION 'a user whose role is % cannot change the role of a user whose role is %',
                coalesce(v_caller::text, 'none'), OLD.role
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF auth.role_rank(NEW.role) > v_rank THEN
        RAISE EXCEPTION 'a user whose role is % cannot grant the role %',
            coalesce(v_caller::text, 'none'), NEW.role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER user_profiles_role_guard
    BEFORE INSERT OR UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.user_profiles_role_guard();

-- The application role calls these from the guards (invoker triggers) and the server.
GRANT EXECUTE ON FUNCTION auth.role_rank(public.user_role), auth.member_role(uuid) TO keepsake_app;
