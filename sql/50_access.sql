-- Access: what the application and monitoring roles may do, and what
-- monitoring may see: counts, sizes, runs and plans, never a session id, user
-- id or token hash. Re-applied on every migrate, as the owner role, which
-- owns every routine here.

-- auth._apply_grants: sets every privilege on the objects the owner role
-- (the caller: migrate runs this as the owner) owns in schema auth, from
-- scratch, and none on anyone else's objects:
--   PUBLIC          nothing
--   p_app_role      EXECUTE on the lifecycle functions listed below, nothing
--                   else: no table privilege, so it cannot read a hash or
--                   delete a row
--   p_monitor_role  SELECT on the policy, the run history and the migration
--                   history (verify compares it), and EXECUTE on
--                   the SECURITY DEFINER helpers that show counts, plans, the
--                   self-test and the job: no session id, user id or hash
-- and USAGE on schema auth to both when the owner role owns it (migrate
-- grants that itself on a schema auth that belongs to another role). The
-- lists name routines by signature: a missing one fails the migrate, naming it.
CREATE OR REPLACE FUNCTION auth._apply_grants(p_app_role text, p_monitor_role text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd texts are format()ted from catalog names and
-- the constant lists below, role names quoted with %I.)
DECLARE
    c_app_routines constant text[] := ARRAY[
        'auth.issue_token(text, bytea, interval, text, text, text)',
        'auth.rotate_token(uuid, integer, bytea, bytea, interval, bytea, bytea, text, text)',
        'auth.revoke_session(uuid, text)',
        'auth.revoke_token(uuid, integer, bytea, text, bytea)',
        'auth.revoke_user_sessions(text, text, uuid)',
        'auth.list_sessions(text, integer)'];
    c_monitor_routines constant text[] := ARRAY[
        'auth.explain_purge(timestamptz)',
        'auth.cleanup_backlog(timestamptz, boolean)',
        'auth.self_test()',
        'auth.cleanup_job()',
        'auth.security_event_summary(timestamptz)',
        'auth.token_counts(boolean)',
        'auth.purge_targets(text)'];
    c_monitor_tables constant text[] := ARRAY['auth.cleanup_policy', 'auth.cleanup_runs',
                                              'auth.token_janitor_migrations'];
    v_owner  oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user);
    v_object text;
BEGIN
    FOR v_object IN
        SELECT format('TABLE %s', c.oid::regclass) FROM pg_class c
        WHERE c.relnamespace = 'auth'::regnamespace AND c.relowner = v_owner
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        UNION ALL
        SELECT format('SEQUENCE %s', c.oid::regclass) FROM pg_class c
        WHERE c.relnamespace = 'auth'::regnamespace AND c.relowner = v_owner AND c.relkind = 'S'
        UNION ALL
        SELECT format('ROUTINE %s', p.oid::regprocedure) FROM pg_proc p
        WHERE p.pronamespace = 'auth'::regnamespace AND p.proowner = v_owner
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, %I, %I', v_object, p_app_role, p_monitor_role);
    END LOOP;
    IF (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'auth') = v_owner THEN
        REVOKE ALL ON SCHEMA auth FROM PUBLIC;
        EXECUTE format('GRANT USAGE ON SCHEMA auth TO %I, %I', p_app_role, p_monitor_role);
    END IF;

    FOREACH v_object IN ARRAY c_app_routines LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_object::regprocedure, p_app_role);
    END LOOP;
    FOREACH v_object IN ARRAY c_monitor_routines LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_object::regprocedure, p_monitor_role);
    END LOOP;
    FOREACH v_object IN ARRAY c_monitor_tables LOOP
        EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_object::regclass, p_monitor_role);
    END LOOP;
END
$$;
