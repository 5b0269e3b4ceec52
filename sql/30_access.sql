-- Access: what the application and monitoring roles may do, and what
-- monitoring may see: counts, sizes, runs and plans, never a session id, user
-- id or token hash. Re-applied on every migrate, as the owner role, which
-- owns every routine here.

-- auth.cleanup_job: the pg_cron job refresh-token-cleanup and its last
-- finished run, or no row when pg_cron or the job is missing. SECURITY
-- DEFINER because cron.job shows each role only its own jobs (the job is the
-- owner role's); this shows the one job monitoring needs and nothing else.
CREATE OR REPLACE FUNCTION auth.cleanup_job()
RETURNS TABLE (jobid bigint, schedule text, command text, active boolean,
               last_status text, last_message text, last_start timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: extra_warnings = false
-- (plpgsql_check: with the pg_cron query unchecked, it cannot see that
-- RETURN QUERY sets the OUT columns.)
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        RETURN;
    END IF;
    -- pg_cron may not be installed here: the test above guards the
    -- statement, which plpgsql_check cannot resolve without it.
    PERFORM 'PRAGMA:disable:check';
    RETURN QUERY EXECUTE
        'SELECT j.jobid, j.schedule, j.command, j.active, d.status, d.return_message, d.start_time
         FROM cron.job j
         LEFT JOIN LATERAL (
             SELECT r.status, r.return_message, r.start_time FROM cron.job_run_details r
             WHERE r.jobid = j.jobid AND r.status IN (''succeeded'', ''failed'')
             ORDER BY r.start_time DESC LIMIT 1) d ON true
         WHERE j.jobname = ''refresh-token-cleanup''
         ORDER BY j.jobid LIMIT 1';
END
$$;

-- auth._one_full_count: full-table counts (status --exact, exact backlogs on
-- a table of 100,000 rows or more) run one at a time in the database, so a
-- monitor calling them in a loop keeps one backend busy, not all of them:
-- another caller is refused at once. Small tables are counted freely.
-- Lock: transaction advisory lock 1953132386 ('tjob'), until the caller's
-- transaction ends.
CREATE OR REPLACE FUNCTION auth._one_full_count(p_what text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT c.reltuples >= 100000 FROM pg_class c WHERE c.oid = 'auth.refresh_tokens'::regclass)
       AND NOT pg_try_advisory_xact_lock(1953132386) THEN
        RAISE EXCEPTION 'exact % refused: another exact count is running', p_what
            USING ERRCODE = 'lock_not_available',
                  HINT = 'try again when it ends, or use the estimates (status without --exact)';
    END IF;
END
$$;

-- auth.token_counts: token rows by state (live, expired, revoked, rotated)
-- and the number of sessions: exact counts with p_exact (a scan of the
-- tables; one at a time on a large table, auth._one_full_count), the
-- planner's estimates without (free on any table size). SECURITY DEFINER so
-- monitoring sees how many rows there are without reading one.
CREATE OR REPLACE FUNCTION auth.token_counts(p_exact boolean)
RETURNS TABLE (state text, rows bigint, exact boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd texts are the constants listed below.)
DECLARE
    v_query text;
    v_plan  json;
BEGIN
    exact := coalesce(p_exact, false);
    IF exact THEN
        PERFORM auth._one_full_count('token counts');
    END IF;
    FOR state, v_query IN VALUES
        ('live',     'SELECT 1 FROM auth.refresh_tokens WHERE revoked_at IS NULL AND expires_at >= now()'),
        ('expired',  'SELECT 1 FROM auth.refresh_tokens WHERE revoked_at IS NULL AND expires_at < now()'),
        ('revoked',  'SELECT 1 FROM auth.refresh_tokens WHERE revoke_reason <> ''rotated'''),
        ('rotated',  'SELECT 1 FROM auth.refresh_tokens WHERE revoke_reason = ''rotated'''),
        ('sessions', 'SELECT 1 FROM auth.sessions')
    LOOP
        IF exact THEN
            EXECUTE 'SELECT count(*) FROM (' || v_query || ') q' INTO rows;
        ELSE
            EXECUTE 'EXPLAIN (FORMAT JSON) ' || v_query INTO v_plan;
            rows := (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.apply_grants: sets every privilege on the objects the owner role
-- (the caller: migrate runs this as the owner) owns in schema auth, from
-- scratch, and none on anyone else's objects:
--   PUBLIC          nothing
--   p_app_role      EXECUTE on the lifecycle functions listed below, nothing
--                   else: no table privilege, so it cannot read a hash or
--                   delete a row
--   p_monitor_role  SELECT on the policy and the run history, and EXECUTE on
--                   the SECURITY DEFINER helpers that show counts, plans, the
--                   self-test and the job: no session id, user id or hash
-- and USAGE on schema auth to both when the owner role owns it (migrate
-- grants that itself on a schema auth that belongs to another role). The
-- lists name routines by signature: a missing one fails the migrate, naming it.
CREATE OR REPLACE FUNCTION auth.apply_grants(p_app_role text, p_monitor_role text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd texts are format()ted from catalog names and
-- the constant lists below, role names quoted with %I.)
DECLARE
    c_app_routines constant text[] := ARRAY[
        'auth.issue_token(text, bytea, interval)',
        'auth.rotate_token(uuid, integer, bytea, bytea, interval, bytea, bytea)',
        'auth.revoke_session(uuid, text)',
        'auth.revoke_user_sessions(text, text)',
        'auth.list_sessions(text, integer)'];
    c_monitor_routines constant text[] := ARRAY[
        'auth.explain_purge(timestamptz)',
        'auth.cleanup_backlog(timestamptz, boolean)',
        'auth.self_test()',
        'auth.cleanup_job()',
        'auth.security_event_summary(timestamptz)',
        'auth.token_counts(boolean)'];
    c_monitor_tables constant text[] := ARRAY['auth.cleanup_policy', 'auth.cleanup_runs'];
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
