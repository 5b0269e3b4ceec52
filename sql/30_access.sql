-- Access: what the application and monitoring roles may do, and the views of
-- pg_cron's tables that monitoring needs. Re-applied on every migrate.

-- auth.cleanup_job: the pg_cron job refresh-token-cleanup and its last
-- finished run, or no row when pg_cron or the job is missing. SECURITY
-- DEFINER because cron.job shows each role only its own jobs; this shows the
-- one job monitoring needs and nothing else.
CREATE OR REPLACE FUNCTION auth.cleanup_job()
RETURNS TABLE (jobid bigint, schedule text, command text, active boolean,
               last_status text, last_message text, last_start timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        RETURN;
    END IF;
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

-- auth.apply_grants: creates the two roles when missing (NOLOGIN: grant them
-- to your login roles) and sets every privilege on schema auth from scratch.
--   p_app_role      EXECUTE on the lifecycle functions, nothing else: no
--                   table privilege, so it cannot read a hash or delete a row
--   p_monitor_role  what verify and status read: the policy, the runs, the
--                   token and session columns but not token_hash or mac_key
--                   (nor seals or grace keys), and the
--                   SECURITY DEFINER helpers (plans, backlog, self-test, job)
-- Everything else in auth is revoked from PUBLIC. Needs CREATEROLE for a
-- missing role.
CREATE OR REPLACE FUNCTION auth.apply_grants(p_app_role text, p_monitor_role text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[p_app_role, p_monitor_role] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a concurrent migrate of another database created it
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and % may not create it', v_role, current_user
                    USING HINT = 'create it once as a role with CREATEROLE, or pass --app-role / --monitor-role naming existing roles';
            END;
        END IF;
    END LOOP;

    REVOKE ALL ON ALL TABLES IN SCHEMA auth FROM PUBLIC;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA auth FROM PUBLIC;
    REVOKE ALL ON ALL PROCEDURES IN SCHEMA auth FROM PUBLIC;
    REVOKE ALL ON SCHEMA auth FROM PUBLIC;

    EXECUTE format('GRANT USAGE ON SCHEMA auth TO %I, %I', p_app_role, p_monitor_role);
    -- The server-clock forms only: the application never chooses the clock.
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        auth.issue_token(text, bytea, interval),
        auth.rotate_token(uuid, integer, bytea, bytea, interval, bytea, bytea),
        auth.revoke_session(uuid, text),
        auth.revoke_user_sessions(text, text),
        auth.list_sessions(text, integer) TO %I', p_app_role);

    EXECUTE format('GRANT SELECT ON auth.cleanup_policy, auth.cleanup_runs TO %I', p_monitor_role);
    EXECUTE format('GRANT SELECT (session_id, generation, issued_at, expires_at, revoked_at, revoke_reason)
        ON auth.refresh_tokens TO %I', p_monitor_role);
    EXECUTE format('GRANT SELECT (id, user_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason)
        ON auth.sessions TO %I', p_monitor_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        auth.explain_purge(timestamptz),
        auth.cleanup_backlog(timestamptz, boolean),
        auth.self_test(),
        auth.security_event_summary(timestamptz),
        auth.cleanup_job() TO %I', p_monitor_role);
    IF to_regclass('public.refinery_schema_history') IS NOT NULL THEN
        EXECUTE format('GRANT SELECT ON public.refinery_schema_history TO %I', p_monitor_role);
    END IF;
END
$$;
