-- Observability: what verify, status and monitoring read. Plans, backlogs,
-- counts, security events, the job and the self-test; SECURITY DEFINER
-- where a monitoring role needs an answer about rows it may not read, and
-- never a session id, user id or token hash in the answer. Re-applied on
-- every migrate.

-- auth.explain_purge: the plan of every query the purge runs, for every
-- kind of auth.purge_targets and every step of its shape, with the policy's
-- cutoffs at p_now, planned the way the purge plans them (with values, as
-- a run plans its deletes; its bound queries reuse one generic plan of the
-- same texts, which tests/purge_targets.rs holds to the same index-only
-- scan). Runs EXPLAIN only
-- (nothing executes); seq_scan tells whether a statement is unbounded: a
-- sequential scan anywhere, or a page step that is not a TID range scan
-- (or scans an index besides).
-- A healthy install never has one. SECURITY DEFINER since EXPLAIN of a
-- DELETE needs DELETE privilege, which monitoring must not have.
CREATE OR REPLACE FUNCTION auth.explain_purge(p_now timestamptz DEFAULT now())
RETURNS TABLE (kind text, step text, seq_scan boolean, plan text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
SET enable_indexscan = on SET enable_bitmapscan = on
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: every EXECUTEd text is built by auth._purge_statement from
-- the constant definitions of auth.purge_targets; no caller's value reaches
-- it except through USING.)
DECLARE
    v_policy  auth.cleanup_policy%ROWTYPE;
    v_cutoffs timestamptz[];
    v_from    auth.purge_position;
    v_bound   auth.purge_position;
    v_line    text;
BEGIN
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    FOR kind, step IN
        SELECT t.kind, s.step
        FROM auth.purge_targets() WITH ORDINALITY t
        CROSS JOIN LATERAL unnest(auth._purge_steps(t.shape)) WITH ORDINALITY s (step, n)
        ORDER BY t.ordinality, s.n
    LOOP
        v_cutoffs := auth._purge_cutoffs(v_policy, (SELECT t.retentions FROM auth.purge_targets(kind) t),
                                          p_now);
        -- A batch's range lies within the due rows, below the cutoff.
        v_from := ROW(v_cutoffs[1] - interval '1 hour', gen_random_uuid(), 0);
        -- (A page step reads pages 0 to 99: the generation fields.)
        v_bound := ROW(v_cutoffs[1] - interval '1 minute', gen_random_uuid(), 100);
        -- As auth._purge_step plans its steps (bitmap scans only for the
        -- key-order deletes, TID range scans for the page-order ones).
        PERFORM set_config('enable_indexscan',
                           (regexp_replace(step, '_skip$', '') NOT IN ('range', 'within', 'all', 'pages'))::text, true),
                set_config('enable_bitmapscan', (step NOT LIKE 'pages%')::text, true);
        plan := '';
        FOR v_line IN EXECUTE 'EXPLAIN ' || auth._purge_statement(kind, step)
            USING v_cutoffs[1], v_bound, v_policy.batch_size::bigint, ARRAY[gen_random_uuid()],
                  v_from, v_cutoffs[2]
        LOOP
            plan := plan || v_line || E'\n';
        END LOOP;
        -- Unbounded: a sequential scan, or a page step not planned as the
        -- TID range scan that bounds it (an index scan there has no range:
        -- it would be a whole index).
        seq_scan := plan LIKE '%Seq Scan%'
                    OR (step LIKE 'pages%' AND (plan NOT LIKE '%Tid Range Scan%' OR plan LIKE '%Index%'));
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.cleanup_backlog: rows due now, per kind of auth.purge_targets that a
-- batch deletes by itself ('range', 'through' and 'oldest'): exact counts (an index
-- scan over the due rows) with p_exact = true, the planner's estimates (free
-- on any table size) with false, and by default exact counts while
-- auth.refresh_tokens holds under 100,000 rows, estimates above (exact
-- counts on a larger table run one at a time: auth._one_full_count).
-- SECURITY DEFINER so monitoring sees counts without reading the rows.
CREATE OR REPLACE FUNCTION auth.cleanup_backlog(
    p_now   timestamptz DEFAULT now(),
    p_exact boolean DEFAULT NULL
)
RETURNS TABLE (kind text, due_rows bigint, exact boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: every EXECUTEd text is built by auth._purge_statement from
-- the constant definitions of auth.purge_targets.)
DECLARE
    v_policy  auth.cleanup_policy%ROWTYPE;
    v_cutoffs timestamptz[];
BEGIN
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    exact := coalesce(p_exact, (SELECT c.reltuples < 100000 FROM pg_class c
                                WHERE c.oid = 'auth.refresh_tokens'::regclass));
    IF exact THEN
        PERFORM auth._one_full_count('backlog counts');
    END IF;
    FOR kind IN
        SELECT t.kind FROM auth.purge_targets() WITH ORDINALITY t
        WHERE t.shape IN ('range', 'through', 'oldest') ORDER BY t.ordinality
    LOOP
        v_cutoffs := auth._purge_cutoffs(v_policy, (SELECT t.retentions FROM auth.purge_targets(kind) t),
                                          coalesce(p_now, now()));
        IF exact THEN
            EXECUTE 'SELECT count(*) FROM (' || auth._purge_statement(kind, 'due') || ') d'
                INTO due_rows USING v_cutoffs[1], NULL::auth.purge_position, NULL::bigint, NULL::uuid[],
                                    auth._purge_start(), v_cutoffs[2];
        ELSE
            due_rows := auth._purge_estimate(kind, v_cutoffs);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.security_event_summary: per kind of security event, how many events
-- (one per family and kind, repeats counted on it) were seen in the 24
-- hours before p_now and when the last was, plus how many were ever
-- recorded, repeats included, of every kind (auth.security_event_totals,
-- which counts committed events only and which the purge never lowers: a
-- Prometheus counter). SECURITY DEFINER so monitoring sees counts without
-- reading who they were about.
CREATE OR REPLACE FUNCTION auth.security_event_summary(p_now timestamptz DEFAULT now())
RETURNS TABLE (kind text, last_24h bigint, last_at timestamptz, recorded_total bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.kind,
           count(e.id) FILTER (WHERE e.last_seen_at > p_now - interval '24 hours'),
           max(e.last_seen_at),
           coalesce((SELECT sum(t.recorded) FROM auth.security_event_totals t), 0)::bigint
    FROM unnest(ARRAY['reuse_detected']) k (kind)
    LEFT JOIN auth.security_events e ON e.kind = k.kind
    GROUP BY k.kind
    ORDER BY k.kind
$$;

-- auth.self_test: proves the purge on this database without changing it.
-- Seeds one family in every state of docs/design.md §5 at a fixed clock in 1999
-- (no real row can be due then), runs auth.purge_refresh_tokens at that
-- clock, and checks the exact counts, exactly which rows survive, that a
-- forged replay of the purged rotated token reads invalid and the genuine
-- one reuse_detected with its security event, and that security events go
-- after audit_retention. All of it
-- runs in a subtransaction that is always rolled back, so calling this never
-- leaves a trace, even in a transaction that commits. SECURITY DEFINER so a
-- read-only monitoring role can run it; it writes nothing that survives.
CREATE OR REPLACE FUNCTION auth.self_test()
RETURNS TABLE (check_name text, passed boolean, expected text, actual text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd text is format()ted from the constant
-- definitions of auth.purge_targets; the cutoff goes through USING.)
DECLARE
    c_now    constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    c_user   constant text := 'token-janitor-self-test';
    v_policy auth.cleanup_policy%ROWTYPE;
    v_result jsonb := jsonb '[]';
    v_purge  record;
    v_target record;
    v_due    text;
    v_count  bigint;
    v_ids    jsonb := jsonb '{}';
    v_id     uuid;
    v_far    timestamptz;
    v_left   text;
    v_outcome text;
    v_family record;
BEGIN
    BEGIN
        SELECT * INTO v_policy FROM auth.cleanup_policy;
        v_far := c_now + interval '30 days';
        -- name, session expiry, session revoked (at, reason), token rows: (generation, expires, revoked at, reason)
        FOR v_family IN
            SELECT * FROM (VALUES
                ('live',               v_far, NULL::timestamptz, NULL, 0,
                 ARRAY[v_far], ARRAY[NULL::timestamptz], ARRAY[NULL]),
                ('live_expiring_now',  c_now, NULL, NULL, 0,
                 ARRAY[c_now], ARRAY[NULL::timestamptz], ARRAY[NULL]),
                ('expired_due',        c_now - v_policy.expired_retention - interval '1 second', NULL, NULL, 0,
                 ARRAY[c_now - v_policy.expired_retention - interval '1 second'], ARRAY[NULL::timestamptz], ARRAY[NULL]),
                ('expired_kept',       c_now - v_policy.expired_retention, NULL, NULL, 0,
                 ARRAY[c_now - v_policy.expired_retention], ARRAY[NULL::timestamptz], ARRAY[NULL]),
                ('revoked_due',        v_far, c_now - v_policy.revoked_retention - interval '1 second', 'logout', 0,
                 ARRAY[v_far], ARRAY[c_now - v_policy.revoked_retention - interval '1 second'], ARRAY['logout']),
                ('revoked_kept',       v_far, c_now - v_policy.revoked_retention, 'admin', 0,
                 ARRAY[v_far], ARRAY[c_now - v_policy.revoked_retention], ARRAY['admin']),
                ('rotated_due',        v_far, NULL, NULL, 1,
                 ARRAY[v_far, v_far], ARRAY[c_now - v_policy.rotated_retention - interval '1 second', NULL],
                 ARRAY['rotated', NULL]),
                ('rotated_kept',       v_far, NULL, NULL, 1,
                 ARRAY[v_far, v_far], ARRAY[c_now - v_policy.rotated_retention, NULL], ARRAY['rotated', NULL])
            ) AS f(name, refresh_expires_at, revoked_at, revoke_reason, generation, expires, revoked, reasons)
        LOOP
            INSERT INTO auth.sessions (user_id, created_at, generation, refresh_expires_at, revoked_at,
                                       revoke_reason, mac_key)
            VALUES (c_user, c_now - interval '60 days', v_family.generation, v_family.refresh_expires_at,
                    v_family.revoked_at, v_family.revoke_reason, auth._new_mac_key())
            RETURNING id INTO v_id;
            -- Written as this release's issue and rotate write them.
            INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at,
                                             revoke_reason, rotates_in_place)
            SELECT v_id, g - 1, sha256(convert_to(v_family.name || (g - 1), 'UTF8')), c_now - interval '60 days',
                   v_family.expires[g], v_family.revoked[g], v_family.reasons[g],
                   NOT v_policy.token_history AND v_family.reasons[g] IS DISTINCT FROM 'rotated'
            FROM generate_subscripts(v_family.expires, 1) g;
            v_ids := v_ids || jsonb_build_object(v_family.name, v_id);
        END LOOP;

        -- What each token kind's definition calls due at c_now (only the
        -- rows seeded above can be, and each of them under one kind only),
        -- so that a kind added to auth.purge_targets is checked too.
        v_due := NULL;
        FOR v_target IN SELECT t.kind, t.relation, t.due, t.retentions FROM auth.purge_targets() t
                        WHERE t.relation = 'auth.refresh_tokens'::regclass LOOP
            EXECUTE format('SELECT count(*) FROM %s WHERE %s', v_target.relation, v_target.due)
                INTO v_count USING (auth._purge_cutoffs(v_policy, v_target.retentions, c_now))[1];
            v_due := concat_ws(' ', v_due, v_target.kind || ':' || v_count);
        END LOOP;

        SELECT * INTO v_purge FROM auth.purge_refresh_tokens(p_now => c_now, p_limit => NULL);
        v_result := v_result || jsonb_build_array(
            jsonb_build_array('purge counts (expired, revoked, rotated, sessions)', '1, 1, 1, 2',
                              concat_ws(', ', v_purge.expired, v_purge.revoked, v_purge.rotated, v_purge.sessions)));
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'token rows deleted by kind, as each kind of auth.purge_targets defines due', v_due,
            (SELECT string_agg(t.kind || ':' || coalesce(v_purge.by_kind ->> t.kind, '(none)'), ' ' ORDER BY t.n)
             FROM auth.purge_targets() WITH ORDINALITY t (kind, shape, relation, key_column, row_key, due,
                                                          retentions, indexes, empties_sessions, run_column, n)
             WHERE t.relation = 'auth.refresh_tokens'::regclass)));

        SELECT string_agg(f.key || ':' || (SELECT string_agg(t.generation::text, ',' ORDER BY t.generation)
                                           FROM auth.refresh_tokens t WHERE t.session_id = (f.value #>> '{}')::uuid),
                          ' ' ORDER BY f.key)
        INTO v_left
        FROM jsonb_each(v_ids) f
        WHERE EXISTS (SELECT 1 FROM auth.sessions s WHERE s.id = (f.value #>> '{}')::uuid);
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'surviving sessions:generations',
            'expired_kept:0 live:0 live_expiring_now:0 revoked_kept:0 rotated_due:1 rotated_kept:0,1',
            coalesce(v_left, '(none)')));

        -- A forgery of the purged generation (a known session id, a wrong
        -- secret and authenticator) changes nothing; the genuine token,
        -- proven by its authenticator, reads reuse_detected and is recorded.
        v_id := (v_ids ->> 'rotated_due')::uuid;
        SELECT r.outcome INTO v_outcome
        FROM auth.rotate_token(p_session_id => v_id, p_generation => 0,
                               p_token_hash => sha256(convert_to('forged', 'UTF8')),
                               p_new_token_hash => sha256(convert_to('next', 'UTF8')),
                               p_ttl => interval '1 day', p_now => c_now,
                               p_authenticator => substr(sha256(convert_to('forged', 'UTF8')), 1, 16)) r;
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'forged replay of the purged rotated token', 'invalid', coalesce(v_outcome, '(no row)')));

        SELECT r.outcome INTO v_outcome
        FROM auth.sessions s,
             auth.rotate_token(p_session_id => v_id, p_generation => 0,
                               p_token_hash => sha256(convert_to('rotated_due0', 'UTF8')),
                               p_new_token_hash => sha256(convert_to('next', 'UTF8')),
                               p_ttl => interval '1 day', p_now => c_now,
                               p_authenticator => auth._authenticator(
                                   s.mac_key, v_id, 0, sha256(convert_to('rotated_due0', 'UTF8')))) r
        WHERE s.id = v_id;
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'replay of the purged rotated token', 'reuse_detected', coalesce(v_outcome, '(no row)')));
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'security events recorded for the replay (kind:generation)', 'reuse_detected:0',
            coalesce((SELECT string_agg(e.kind || ':' || e.generation, ' ') FROM auth.security_events e
                      WHERE e.session_id = v_id), '(none)')));

        -- Security events are kept for audit_retention, to the second.
        INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind)
        VALUES (c_now - v_policy.audit_retention - interval '1 second', v_id, c_user, 0, 'reuse_detected'),
               (c_now - v_policy.audit_retention, v_id, c_user, 0, 'reuse_detected');
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'security events purged after audit_retention', '1',
            (SELECT b.deleted ->> 'security_events'
             FROM auth._purge_batch(c_now, NULL, NULL, ARRAY['security_events']) b)));

        -- The live rt2_ token rotates: in place (one row left, of
        -- generation 1) unless the policy keeps a row per token.
        v_id := (v_ids ->> 'live')::uuid;
        SELECT r.outcome INTO v_outcome
        FROM auth.sessions s,
             auth.rotate_token(p_session_id => v_id, p_generation => 0,
                               p_token_hash => sha256(convert_to('live0', 'UTF8')),
                               p_new_token_hash => sha256(convert_to('next', 'UTF8')),
                               p_ttl => interval '1 day', p_now => c_now,
                               p_authenticator => auth._authenticator(
                                   s.mac_key, v_id, 0, sha256(convert_to('live0', 'UTF8')))) r
        WHERE s.id = v_id;
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'live token still rotates', 'rotated', coalesce(v_outcome, '(no row)')));
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            format('token rows of the rotated session (generation:revoke_reason; token_history %s)',
                   v_policy.token_history),
            CASE WHEN v_policy.token_history THEN '0:rotated 1:-' ELSE '1:-' END,
            coalesce((SELECT string_agg(t.generation || ':' || coalesce(t.revoke_reason, '-'), ' '
                                        ORDER BY t.generation)
                      FROM auth.refresh_tokens t WHERE t.session_id = v_id), '(none)')));

        RAISE EXCEPTION USING ERRCODE = 'TJ001', MESSAGE = v_result::text;
    EXCEPTION WHEN SQLSTATE 'TJ001' THEN
        v_result := SQLERRM::jsonb;
    END;
    FOR i IN 0 .. jsonb_array_length(v_result) - 1 LOOP
        check_name := v_result -> i ->> 0;
        expected := v_result -> i ->> 1;
        -- A check whose query found nothing reads '(null)', never NULL.
        actual := coalesce(v_result -> i ->> 2, '(null)');
        passed := expected = actual;
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.cleanup_job: the pg_cron job that runs exactly
-- CALL auth.run_token_cleanup() in this database (found by database and
-- command, not by name) and its last finished run, or no row when pg_cron or
-- the job is missing. SECURITY
-- DEFINER because cron.job shows each role only its own jobs (the job is the
-- owner role's); this shows the one job monitoring needs and nothing else.
CREATE OR REPLACE FUNCTION auth.cleanup_job()
RETURNS TABLE (jobid bigint, schedule text, command text, active boolean,
               last_status text, last_message text, last_start timestamptz,
               jobname text)
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
        'SELECT j.jobid, j.schedule, j.command, j.active, d.status, d.return_message, d.start_time,
                j.jobname::text
         FROM cron.job j
         LEFT JOIN LATERAL (
             SELECT r.status, r.return_message, r.start_time FROM cron.job_run_details r
             WHERE r.jobid = j.jobid AND r.status IN (''succeeded'', ''failed'')
             ORDER BY r.start_time DESC LIMIT 1) d ON true
         WHERE j.database = current_database()
           AND j.command = ''CALL auth.run_token_cleanup()''
         ORDER BY j.jobid LIMIT 1';
END
$$;

-- auth._one_full_count: full-table counts (status --exact, exact backlogs on
-- a table of 100,000 rows or more) run one at a time in the database, so a
-- monitor calling them in a loop keeps one backend busy, not all of them:
-- another caller is refused at once. Small tables are counted freely.
-- Lock: 'exact count' (auth._lock, sql/00_locks.sql), tried, until the
-- caller's transaction ends.
CREATE OR REPLACE FUNCTION auth._one_full_count(p_what text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT c.reltuples >= 100000 FROM pg_class c WHERE c.oid = 'auth.refresh_tokens'::regclass)
       AND NOT auth._lock('exact count', true) THEN
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
