-- The purge: which token rows are due, deleting them in bounded batches, and
-- the scheduled procedure that runs it. Re-applied on every migrate.
--
-- Every query here is index-driven (sql/indexes.sql). The purge functions turn
-- sequential scans, hash joins and merge joins off for themselves: a batch
-- must stay a bounded index range (and per-session index probes) whatever the
-- statistics say, since right after a large delete they are stale and would
-- otherwise turn the next batch into a pass over the whole table. They turn
-- JIT off as well: a disabled plan type adds 10^10 to the cost of any node
-- that has no alternative (the seq scan of the one-row policy table), which
-- crosses jit_above_cost, and every batch then compiled its queries (measured:
-- 120-130 ms a batch against 10-40 ms for its deletes, half of a run's time).

-- auth.purge_statement: the text of every query the purge runs, so that the
-- purge and its plan check (auth.explain_purge) cannot drift apart.
-- Every statement takes the same six parameters, used or not:
--   $1 timestamptz          the kind's cutoff (sessions: the expired cutoff)
--   $2 auth.purge_position  where a batch's range ends (excluded)
--   $3 bigint               a row count
--   $4 uuid[]               session ids
--   $5 auth.purge_position  where the kind's range starts (included)
--   $6 timestamptz          sessions: the revoked cutoff
-- A position is a full key of the kind's purge index (sql/indexes.sql): its
-- timestamp, then the primary key, so every row has its own place in the
-- order and a range never needs a lookup per row, however many rows share a
-- timestamp.
-- Token kinds: expired (expires_at < $1, whatever the revoke state), revoked
-- (revoked for any reason but 'rotated', revoked_at < $1) and rotated
-- (revoked 'rotated', revoked_at < $1), with steps 'due' (its due rows from
-- $5, for counting), 'bound' (the position of the ($3 + 1)-th due row from
-- $5), 'range' (delete the due rows from $5 to before $2), 'within' (the
-- same when $5 and $2 share their timestamp: written on the primary key
-- under that timestamp, since btree stops a row comparison's range scan on
-- its first column only, and 'range' would read the rest of the timestamp's
-- rows every batch) and 'all' (delete every due row from $5). Starting at
-- $5 lets a run skip the index entries of rows its earlier batches deleted,
-- which stay in the index until vacuum. Deletes of the expired and revoked
-- kinds return the distinct session ids, since they are how a session loses
-- its last token; a rotated row never is (its session still holds a newer
-- token), so that kind, the bulk of the purge, is a plain DELETE, which costs
-- half as much as one that returns its rows.
-- Kind 'sessions', steps 'touched' (sessions in $4) and 'sweep' (all): delete
-- dead sessions that have no token rows.
CREATE OR REPLACE FUNCTION auth.purge_statement(p_kind text, p_step text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key   text;
    v_due   text;
    v_head  text := 'WITH d AS (DELETE';
    v_tail  text := ' RETURNING session_id) SELECT count(*), coalesce(array_agg(DISTINCT session_id), ''{}'') FROM d';
    v_from  text;
    v_dead  constant text :=
        'DELETE FROM auth.sessions s WHERE (s.refresh_expires_at < $1 OR s.revoked_at < $6)'
        ' AND NOT EXISTS (SELECT 1 FROM auth.refresh_tokens t WHERE t.session_id = s.id)';
BEGIN
    CASE p_kind
        WHEN 'expired' THEN
            v_key := 'expires_at';
            v_due := 'expires_at < $1';
        WHEN 'revoked' THEN
            v_key := 'revoked_at';
            v_due := 'revoke_reason <> ''rotated'' AND revoked_at < $1';
        WHEN 'rotated' THEN
            v_key := 'revoked_at';
            v_due := 'revoke_reason = ''rotated'' AND revoked_at < $1';
            v_head := 'DELETE';
            v_tail := '';
        WHEN 'sessions' THEN
            CASE p_step
                WHEN 'touched' THEN RETURN v_dead || ' AND s.id = ANY ($4)';
                WHEN 'sweep' THEN RETURN v_dead;
                ELSE NULL;
            END CASE;
        ELSE
            NULL;
    END CASE;
    v_from := format('(%I, session_id, generation) >= (($5).key, ($5).session_id, ($5).generation)', v_key);
    CASE p_step
        WHEN 'due' THEN
            RETURN format('SELECT 1 FROM auth.refresh_tokens WHERE %s AND %s', v_due, v_from);
        WHEN 'bound' THEN
            RETURN format('SELECT %1$I, session_id, generation FROM auth.refresh_tokens WHERE %2$s AND %3$s'
                          ' ORDER BY %1$I, session_id, generation OFFSET $3 LIMIT 1', v_key, v_due, v_from);
        WHEN 'range' THEN
            RETURN format('%s FROM auth.refresh_tokens WHERE %s AND %s'
                          ' AND (%I, session_id, generation) < (($2).key, ($2).session_id, ($2).generation)%s',
                          v_head, v_due, v_from, v_key, v_tail);
        WHEN 'within' THEN
            RETURN format('%s FROM auth.refresh_tokens WHERE %s AND %I = ($2).key'
                          ' AND (session_id, generation) >= (($5).session_id, ($5).generation)'
                          ' AND (session_id, generation) < (($2).session_id, ($2).generation)%s',
                          v_head, v_due, v_key, v_tail);
        WHEN 'all' THEN
            RETURN format('%s FROM auth.refresh_tokens WHERE %s AND %s%s', v_head, v_due, v_from, v_tail);
        ELSE
            NULL;
    END CASE;
    RAISE EXCEPTION 'no purge statement % for kind %', quote_literal(p_step), quote_literal(p_kind);
END
$$;

-- auth.purge_start: the position before every row, where a kind's first
-- batch starts.
CREATE OR REPLACE FUNCTION auth.purge_start()
RETURNS auth.purge_position
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ROW('-infinity', '00000000-0000-0000-0000-000000000000', -2147483648)::auth.purge_position
$$;

-- auth.purge_cutoff: rows of p_kind are due when their key is before this
-- time at p_now under p_policy ('sessions' and 'expired': expired_retention).
CREATE OR REPLACE FUNCTION auth.purge_cutoff(
    p_policy auth.cleanup_policy,
    p_kind   text,
    p_now    timestamptz
)
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_now - CASE p_kind WHEN 'revoked' THEN p_policy.revoked_retention
                               WHEN 'rotated' THEN p_policy.rotated_retention
                               ELSE p_policy.expired_retention END
$$;

-- auth.purge_delete: runs one delete step of auth.purge_statement; returns
-- how many rows it deleted and, for the kinds that return them, from which
-- sessions. Row locks: the deleted rows. Plain index scans are off too: a
-- bitmap scan visits the batch's heap pages in physical order, which
-- measured twice as fast as visiting them in key order.
CREATE OR REPLACE FUNCTION auth.purge_delete(
    p_kind   text,
    p_step   text,
    p_cutoff timestamptz,
    p_bound  auth.purge_position,
    p_from   auth.purge_position,
    OUT deleted bigint,
    OUT touched uuid[]
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
SET enable_indexscan = off
AS $$
-- @plpgsql_check_options: security_warnings = false, performance_warnings = false
-- (plpgsql_check: every EXECUTEd text is built by auth.purge_statement from
-- constants, values go through USING; and it cannot see that the dynamic
-- statement deletes, so it would have this VOLATILE function IMMUTABLE.)
BEGIN
    touched := '{}';
    IF p_kind = 'rotated' THEN
        EXECUTE auth.purge_statement(p_kind, p_step)
            USING p_cutoff, p_bound, NULL::bigint, NULL::uuid[], p_from, NULL::timestamptz;
        GET DIAGNOSTICS deleted = ROW_COUNT;
    ELSE
        EXECUTE auth.purge_statement(p_kind, p_step) INTO deleted, touched
            USING p_cutoff, p_bound, NULL::bigint, NULL::uuid[], p_from, NULL::timestamptz;
    END IF;
END
$$;

-- auth.purge_kind: deletes up to p_limit due token rows of one kind from
-- position p_from on (NULL: from the start), in index order; returns how
-- many, from which sessions, whether it saw the end of the kind's due rows,
-- and where the next call may start (every due row before `resume` is gone).
-- Row locks: the deleted rows, until the caller's transaction ends. Each step
-- deletes the range up to the position of the (n + 1)-th due row (n: what is
-- left of p_limit), one index range scan with no per-row lookups, whether or
-- not those rows share a timestamp. A step deletes fewer than n rows only
-- when some of them went meanwhile; the loop then takes the next range.
CREATE OR REPLACE FUNCTION auth.purge_kind(
    p_kind    text,
    p_cutoff  timestamptz,
    p_limit   bigint,
    p_from    auth.purge_position,
    OUT deleted bigint,
    OUT touched uuid[],
    OUT drained boolean,
    OUT resume auth.purge_position
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- @plpgsql_check_options: security_warnings = false, other_warnings = false, extra_warnings = false
-- (plpgsql_check: every EXECUTEd text is built by auth.purge_statement from
-- constants, no caller's value reaches it except through USING; it cannot
-- see the row type a dynamic statement returns into v_bound, nor that the
-- composite OUT value resume is assigned whole.)
DECLARE
    v_bound   auth.purge_position;
    v_found   bigint;
    v_step    bigint;
    v_touched uuid[];
BEGIN
    deleted := 0;
    touched := '{}';
    drained := false;
    resume := coalesce(p_from, auth.purge_start());
    WHILE deleted < p_limit LOOP
        EXECUTE auth.purge_statement(p_kind, 'bound') INTO v_bound
            USING p_cutoff, NULL::auth.purge_position, p_limit - deleted, NULL::uuid[], resume, NULL::timestamptz;
        -- EXECUTE leaves FOUND alone; its row count says whether there was a bound.
        GET DIAGNOSTICS v_found = ROW_COUNT;
        drained := v_found = 0;
        SELECT * INTO v_step, v_touched
        FROM auth.purge_delete(p_kind,
                               CASE WHEN drained THEN 'all'
                                    WHEN (v_bound).key = (resume).key THEN 'within'
                                    ELSE 'range' END,
                               p_cutoff, v_bound, resume);
        deleted := deleted + v_step;
        touched := touched || v_touched;
        EXIT WHEN drained;
        resume := v_bound;
    END LOOP;
END
$$;

-- auth.purge_sessions: deletes dead sessions that have no token rows left.
-- Dead: refresh_expires_at < p_expired_cutoff or revoked_at < p_revoked_cutoff.
-- Looks at p_touched (sessions whose expired or revoked tokens were just
-- deleted) and, with
-- p_sweep, at every dead session (once the token backlog is done). A dead
-- session never gets a token again, so "empty" cannot change under us.
-- Row locks: the deleted session rows.
CREATE OR REPLACE FUNCTION auth.purge_sessions(
    p_expired_cutoff timestamptz,
    p_revoked_cutoff timestamptz,
    p_touched        uuid[],
    p_sweep          boolean
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_touched bigint;
    v_swept   bigint := 0::bigint;
BEGIN
    EXECUTE auth.purge_statement('sessions', 'touched')
        USING p_expired_cutoff, NULL::auth.purge_position, NULL::bigint, p_touched,
              NULL::auth.purge_position, p_revoked_cutoff;
    GET DIAGNOSTICS v_touched = ROW_COUNT;
    IF p_sweep THEN
        EXECUTE auth.purge_statement('sessions', 'sweep')
            USING p_expired_cutoff, NULL::auth.purge_position, NULL::bigint, p_touched,
                  NULL::auth.purge_position, p_revoked_cutoff;
        GET DIAGNOSTICS v_swept = ROW_COUNT;
    END IF;
    RETURN v_touched + v_swept;
END
$$;

-- auth.explain_purge: the plan of every query the purge runs, with the
-- policy's cutoffs at p_now, planned the way the purge plans them. Runs
-- EXPLAIN only (nothing executes); seq_scan tells whether any node is a
-- sequential scan, which a healthy install never has. SECURITY DEFINER since
-- EXPLAIN of a DELETE needs DELETE privilege, which monitoring must not have.
CREATE OR REPLACE FUNCTION auth.explain_purge(p_now timestamptz DEFAULT now())
RETURNS TABLE (kind text, step text, seq_scan boolean, plan text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: every EXECUTEd text is built by auth.purge_statement from
-- constants; no caller's value reaches it except through USING.)
DECLARE
    v_policy auth.cleanup_policy%ROWTYPE;
    v_cutoff timestamptz;
    v_from   auth.purge_position;
    v_bound  auth.purge_position;
    v_line   text;
BEGIN
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    FOR kind, step IN
        SELECT k, s FROM unnest(ARRAY['expired', 'revoked', 'rotated']) k,
                         unnest(ARRAY['bound', 'range', 'within', 'all']) s
        UNION ALL
        SELECT 'sessions', s FROM unnest(ARRAY['touched', 'sweep']) s
    LOOP
        v_cutoff := auth.purge_cutoff(v_policy, kind, p_now);
        -- A batch's range lies within the due rows, below the cutoff.
        v_from := ROW(v_cutoff - interval '1 hour', gen_random_uuid(), 0);
        v_bound := ROW(v_cutoff - interval '1 minute', gen_random_uuid(), 0);
        -- As auth.purge_delete plans the deletes (bitmap scans only).
        PERFORM set_config('enable_indexscan', (step IN ('bound', 'touched', 'sweep'))::text, true);
        plan := '';
        FOR v_line IN EXECUTE 'EXPLAIN ' || auth.purge_statement(kind, step)
            USING v_cutoff, v_bound, v_policy.batch_size::bigint, ARRAY[gen_random_uuid()],
                  v_from, auth.purge_cutoff(v_policy, 'revoked', p_now)
        LOOP
            plan := plan || v_line || E'\n';
        END LOOP;
        seq_scan := plan LIKE '%Seq Scan%';
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.purge_batch: one batch of the purge, as purge_refresh_tokens below,
-- plus whether it deleted everything that was due (the run's stop signal) and
-- where each kind's next batch may start (p_from: the previous batch's
-- `resume`, NULL for anywhere). A row due under several rules is counted
-- once, under the first of expired, revoked, rotated.
-- A kind the batch drains gets a resume at 'infinity', and the run's later batches
-- skip it: their cutoffs are the same, so nothing more becomes due for it,
-- and its queries cost even when they find nothing. Planning `expires_at <
-- cutoff` with the cutoff below every expiry reads the index's lowest entries
-- for the estimate, and while rotated rows are purged those are the entries
-- of the rows the run has deleted so far: asked every batch, that walk grew
-- with the run (17 ms a batch by the end of 2.7M rotated rows in batches of
-- 10,000, which made the run four times as long).
-- Locks: the deleted token and session rows, and transaction advisory lock
-- 1953129325: purges (a run's batches, purge_refresh_tokens calls) take
-- turns, one transaction at a time, because two of them deleting overlapping
-- rows kind by kind from different starting keys can each hold what the
-- other waits for (a deadlock seen in tests/concurrency.rs). A batch holds it
-- for milliseconds.
CREATE OR REPLACE FUNCTION auth.purge_batch(
    p_now   timestamptz,
    p_limit bigint,
    p_from  auth.purge_position[] DEFAULT NULL
)
RETURNS TABLE (expired bigint, revoked bigint, rotated bigint, sessions bigint,
               drained boolean, resume auth.purge_position[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_policy  auth.cleanup_policy%ROWTYPE;
    v_left    bigint;
    v_touched uuid[] := '{}'::uuid[];
    v_kind    record;
    v_kinds   constant text[] := ARRAY['expired', 'revoked', 'rotated'];
    v_counts  bigint[] := '{}'::bigint[];
BEGIN
    IF p_limit < 0 THEN
        RAISE EXCEPTION 'p_limit must be NULL (everything due) or at least 0, got %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'auth.cleanup_policy has no row: run token-janitor migrate to restore it';
    END IF;
    PERFORM pg_advisory_xact_lock(1953129325);
    v_left := coalesce(p_limit, 9223372036854775807);
    drained := true;
    resume := '{}';

    FOR i IN 1 .. 3 LOOP
        IF (p_from[i]).key = 'infinity' THEN
            v_counts := v_counts || 0::bigint;
            resume := resume || p_from[i];
            CONTINUE;
        END IF;
        SELECT * INTO v_kind
        FROM auth.purge_kind(v_kinds[i], auth.purge_cutoff(v_policy, v_kinds[i], v_now),
                             v_left, p_from[i]);
        v_counts := v_counts || v_kind.deleted;
        v_left := v_left - v_kind.deleted;
        v_touched := v_touched || v_kind.touched;
        drained := drained AND v_kind.drained;
        resume := resume || CASE WHEN v_kind.drained THEN ROW('infinity', NULL, NULL)::auth.purge_position
                                 ELSE v_kind.resume END;
    END LOOP;
    expired := v_counts[1];
    revoked := v_counts[2];
    rotated := v_counts[3];

    -- Rotated rows never empty a session: a batch of them alone has no
    -- session to look at until the sweep.
    sessions := 0;
    IF drained OR cardinality(v_touched) > 0 THEN
        sessions := auth.purge_sessions(auth.purge_cutoff(v_policy, 'expired', v_now),
                                        auth.purge_cutoff(v_policy, 'revoked', v_now),
                                        v_touched, drained);
    END IF;
    RETURN NEXT;
END
$$;

-- auth.purge_refresh_tokens: deletes up to p_limit due token rows (NULL: all
-- that are due) in the caller's transaction, then the dead sessions left
-- without tokens; returns how many rows of each kind it deleted.
CREATE OR REPLACE FUNCTION auth.purge_refresh_tokens(
    p_now   timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
)
RETURNS TABLE (expired bigint, revoked bigint, rotated bigint, sessions bigint)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.expired, b.revoked, b.rotated, b.sessions FROM auth.purge_batch(p_now, p_limit) b
$$;

-- auth.start_run: under the run lock, marks runs a killed run left
-- 'running' as failed, deletes grace keys past their use and records a new
-- run; returns its id.
CREATE OR REPLACE FUNCTION auth.start_run(p_started timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE auth.cleanup_runs
    SET status = 'failed', finished_at = clock_timestamp(),
        error = 'run ended without finishing (backend terminated or server restarted)'
    WHERE status = 'running';
    -- Rotations delete the grace keys they no longer need; this catches the
    -- last ones when rotations stop.
    SELECT auth._prune_grace_keys(p_started, p.reuse_grace) FROM auth.cleanup_policy p;
    INSERT INTO auth.cleanup_runs (started_at, status) VALUES (p_started, 'running') RETURNING id;
$$;

-- auth.record_skipped_run: a run that found another one holding the lock.
CREATE OR REPLACE FUNCTION auth.record_skipped_run(p_started timestamptz)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO auth.cleanup_runs (started_at, finished_at, status)
    VALUES (p_started, clock_timestamp(), 'skipped');
$$;

-- auth._purge_security_events: deletes up to p_limit (NULL: all) security
-- events older than audit_retention at p_now, oldest first, through
-- security_events_occurred_at_idx; returns how many. Row locks: those rows.
CREATE OR REPLACE FUNCTION auth._purge_security_events(p_now timestamptz, p_limit bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM auth.security_events e
    WHERE e.id IN (SELECT d.id FROM auth.security_events d
                   WHERE d.occurred_at < p_now - (SELECT p.audit_retention FROM auth.cleanup_policy p)
                   ORDER BY d.occurred_at
                   LIMIT p_limit);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- auth.run_batch: one batch of run p_run (token rows, then security events
-- past audit_retention), counted into its record (in the same transaction,
-- so the record and the deletes always agree); returns the purge_batch row. Waits at most 5 seconds for a row lock: a due row held by some long
-- transaction ends the run as 'partial' instead of stalling it (rotations
-- never wait on the purge: they touch no due row).
CREATE OR REPLACE FUNCTION auth.run_batch(
    p_run     bigint,
    p_started timestamptz,
    p_limit   bigint,
    p_from    auth.purge_position[]
)
RETURNS TABLE (expired bigint, revoked bigint, rotated bigint, sessions bigint,
               drained boolean, resume auth.purge_position[], out_of_time boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_batch  record;
    v_events bigint;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT * INTO v_batch FROM auth.purge_batch(p_started, p_limit, p_from);
    v_events := auth._purge_security_events(p_started, p_limit);
    UPDATE auth.cleanup_runs r
    SET expired_deleted  = r.expired_deleted + v_batch.expired,
        revoked_deleted  = r.revoked_deleted + v_batch.revoked,
        rotated_deleted  = r.rotated_deleted + v_batch.rotated,
        sessions_deleted = r.sessions_deleted + v_batch.sessions,
        security_events_deleted = r.security_events_deleted + v_events,
        batches = r.batches + 1
    WHERE r.id = p_run;
    RETURN QUERY SELECT v_batch.expired, v_batch.revoked, v_batch.rotated, v_batch.sessions,
                        v_batch.drained AND v_events < p_limit, v_batch.resume,
                        clock_timestamp() >= p_started + (SELECT p.max_runtime FROM auth.cleanup_policy p);
END
$$;

-- auth.run_pace: called between a run's batches when the policy's `pace`
-- is on; the run's share of the machine adapts to the token traffic it sees. It counts the other backends
-- that are inside a transaction on auth.refresh_tokens at this moment
-- (pg_locks, which every role may read, unlike other roles' rows of
-- pg_stat_activity) and waits as long as the last batch took (since
-- p_batch_started) for each, up to four batch lengths: with nothing else
-- running it returns at once. Locks: none (reading pg_locks takes the lock
-- manager's partition locks for a moment).
CREATE OR REPLACE FUNCTION auth.run_pace(p_batch_started timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_busy bigint;
BEGIN
    SELECT count(DISTINCT l.pid) INTO v_busy
    FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.relation = 'auth.refresh_tokens'::regclass
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.pid <> pg_backend_pid();
    IF v_busy > 0 THEN
        PERFORM pg_sleep(extract(epoch FROM clock_timestamp() - p_batch_started) * least(v_busy, 4));
    END IF;
END
$$;

-- auth.finish_run: records how run p_run ended and prunes the history past
-- history_retention (a failure to prune is a warning, not a failed run).
CREATE OR REPLACE FUNCTION auth.finish_run(
    p_run     bigint,
    p_status  text,
    p_sqlstate text,
    p_message text
)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_started timestamptz;
BEGIN
    UPDATE auth.cleanup_runs r
    SET status = p_status, finished_at = clock_timestamp(),
        error = CASE WHEN p_message IS NOT NULL THEN p_sqlstate || ': ' || p_message END
    WHERE r.id = p_run
    RETURNING r.started_at INTO v_started;
    IF p_status <> 'failed' THEN
        BEGIN
            PERFORM auth.prune_cleanup_history(
                v_started - (SELECT p.history_retention FROM auth.cleanup_policy p));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'auth.run_token_cleanup: could not prune run history: %', SQLERRM;
        END;
    END IF;
END
$$;

-- auth.run_token_cleanup: the scheduled entry point (pg_cron job
-- refresh-token-cleanup). One run: batches of batch_size, each committed,
-- until nothing is due or max_runtime is spent; recorded in auth.cleanup_runs.
-- Locks: session advisory lock 1953129324 for the whole run (a second run
-- records 'skipped' and returns at once); each batch's deleted rows until its
-- COMMIT. It COMMITs, so it can be neither SECURITY DEFINER nor carry a SET
-- search_path: it runs under its caller's search_path (the job's session
-- takes the database's and the role's). So its body is control flow only,
-- every type it declares and every function it calls is schema-qualified
-- (an unqualified `text` resolves to a domain `text` earlier on the path,
-- whose CHECK would run as the caller), it uses no operator, and every
-- expression that needs one lives in a helper above that pins its own.
CREATE OR REPLACE PROCEDURE auth.run_token_cleanup()
LANGUAGE plpgsql
AS $$
DECLARE
    c_lock    constant pg_catalog.int8 := 1953129324::pg_catalog.int8;
    v_started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    v_limit   pg_catalog.int4;
    v_pace    pg_catalog.bool;
    v_run     pg_catalog.int8;
    v_batch   pg_catalog.record;
    v_batch_started pg_catalog.timestamptz;
    v_from    auth.purge_position[];
    v_status  pg_catalog.text;
    v_state   pg_catalog.text;
    v_error   pg_catalog.text;
    v_failed  pg_catalog.bool := false;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE NOTICE 'auth.run_token_cleanup: this server is a standby; the primary runs the cleanup';
        RETURN;
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(c_lock) THEN
        PERFORM auth.record_skipped_run(v_started);
        COMMIT;
        RAISE NOTICE 'auth.run_token_cleanup: another run is in progress; skipped';
        RETURN;
    END IF;
    v_run := auth.start_run(v_started);
    SELECT p.batch_size, p.pace INTO v_limit, v_pace FROM auth.cleanup_policy p;
    COMMIT;

    LOOP
        v_batch_started := pg_catalog.clock_timestamp();
        BEGIN
            SELECT * INTO v_batch FROM auth.run_batch(v_run, v_started, v_limit, v_from);
        EXCEPTION
            WHEN lock_not_available THEN
                v_state := SQLSTATE;
                v_error := 'gave up waiting for a row lock held by another transaction; the next run retries';
                v_status := 'partial';
            WHEN OTHERS THEN
                v_state := SQLSTATE;
                v_error := SQLERRM;
                v_status := 'failed';
                v_failed := true;
        END;
        EXIT WHEN v_status IS NOT NULL;
        COMMIT;
        v_from := v_batch.resume;
        IF v_batch.drained THEN
            v_status := 'ok';
        ELSIF v_batch.out_of_time THEN
            v_status := 'partial';
        END IF;
        EXIT WHEN v_status IS NOT NULL;
        IF v_pace THEN
            PERFORM auth.run_pace(v_batch_started);
        END IF;
    END LOOP;

    PERFORM auth.finish_run(v_run, v_status, v_state, v_error);
    COMMIT;
    PERFORM pg_catalog.pg_advisory_unlock(c_lock);
    IF v_failed THEN
        RAISE EXCEPTION 'auth.run_token_cleanup failed: %: %', v_state, v_error;
    END IF;
END
$$;

-- auth.prune_cleanup_history: deletes auth.cleanup_runs rows and this job's
-- cron.job_run_details rows that started before p_before.
CREATE OR REPLACE FUNCTION auth.prune_cleanup_history(p_before timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM auth.cleanup_runs WHERE started_at < p_before AND status <> 'running';
    IF to_regclass('cron.job_run_details') IS NOT NULL THEN
        -- pg_cron may not be installed here: the test above guards the
        -- statement, which plpgsql_check cannot resolve without it.
        PERFORM 'PRAGMA:disable:check';
        EXECUTE 'DELETE FROM cron.job_run_details d USING cron.job j '
                'WHERE d.jobid = j.jobid AND j.jobname = $1 AND d.start_time < $2'
            USING 'refresh-token-cleanup', p_before;
    END IF;
END
$$;

-- auth.cleanup_backlog: token rows due now, per kind: exact counts (an index
-- scan over the due rows) with p_exact = true, the planner's estimates (free
-- on any table size) with false, and by default exact counts while the table
-- holds under 100,000 rows, estimates above (exact counts on a larger table
-- run one at a time: auth._one_full_count). SECURITY DEFINER so monitoring
-- sees counts without reading the rows.
CREATE OR REPLACE FUNCTION auth.cleanup_backlog(
    p_now   timestamptz DEFAULT now(),
    p_exact boolean DEFAULT NULL
)
RETURNS TABLE (kind text, due_rows bigint, exact boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_policy auth.cleanup_policy%ROWTYPE;
    v_cutoff timestamptz;
    v_plan   json;
BEGIN
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    exact := coalesce(p_exact, (SELECT c.reltuples < 100000 FROM pg_class c
                                WHERE c.oid = 'auth.refresh_tokens'::regclass));
    IF exact THEN
        PERFORM auth._one_full_count('backlog counts');
    END IF;
    FOREACH kind IN ARRAY ARRAY['expired', 'revoked', 'rotated'] LOOP
        v_cutoff := auth.purge_cutoff(v_policy, kind, coalesce(p_now, now()));
        IF exact THEN
            EXECUTE 'SELECT count(*) FROM (' || auth.purge_statement(kind, 'due') || ') d'
                INTO due_rows USING v_cutoff, NULL::auth.purge_position, NULL::bigint, NULL::uuid[],
                                    auth.purge_start(), NULL::timestamptz;
        ELSE
            EXECUTE 'EXPLAIN (FORMAT JSON) ' || auth.purge_statement(kind, 'due')
                INTO v_plan USING v_cutoff, NULL::auth.purge_position, NULL::bigint, NULL::uuid[],
                                  auth.purge_start(), NULL::timestamptz;
            due_rows := (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- auth.security_event_summary: per kind of security event, how many
-- happened in the 24 hours before p_now and when the newest did, plus how
-- many were ever recorded (the identity's last value, which the purge never
-- lowers: a Prometheus counter). SECURITY DEFINER so monitoring sees counts
-- without reading who they were about.
CREATE OR REPLACE FUNCTION auth.security_event_summary(p_now timestamptz DEFAULT now())
RETURNS TABLE (kind text, last_24h bigint, last_at timestamptz, recorded_total bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.kind,
           count(e.id) FILTER (WHERE e.occurred_at > p_now - interval '24 hours'),
           max(e.occurred_at),
           coalesce(pg_sequence_last_value(pg_get_serial_sequence('auth.security_events', 'id')::regclass), 0)
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
DECLARE
    c_now    constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    c_user   constant text := 'token-janitor-self-test';
    v_policy auth.cleanup_policy%ROWTYPE;
    v_result jsonb := jsonb '[]';
    v_purge  record;
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
            INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason)
            SELECT v_id, g - 1, sha256(convert_to(v_family.name || (g - 1), 'UTF8')), c_now - interval '60 days',
                   v_family.expires[g], v_family.revoked[g], v_family.reasons[g]
            FROM generate_subscripts(v_family.expires, 1) g;
            v_ids := v_ids || jsonb_build_object(v_family.name, v_id);
        END LOOP;

        SELECT * INTO v_purge FROM auth.purge_refresh_tokens(p_now => c_now, p_limit => NULL);
        v_result := v_result || jsonb_build_array(
            jsonb_build_array('purge counts (expired, revoked, rotated, sessions)', '1, 1, 1, 2',
                              concat_ws(', ', v_purge.expired, v_purge.revoked, v_purge.rotated, v_purge.sessions)));

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
            auth._purge_security_events(c_now, NULL)::text));

        SELECT r.outcome INTO v_outcome
        FROM auth.rotate_token(p_session_id => (v_ids ->> 'live')::uuid, p_generation => 0,
                               p_token_hash => sha256(convert_to('live0', 'UTF8')),
                               p_new_token_hash => sha256(convert_to('next', 'UTF8')),
                               p_ttl => interval '1 day', p_now => c_now) r;
        v_result := v_result || jsonb_build_array(jsonb_build_array(
            'live token still rotates', 'rotated', coalesce(v_outcome, '(no row)')));

        RAISE EXCEPTION USING ERRCODE = 'TJ001', MESSAGE = v_result::text;
    EXCEPTION WHEN SQLSTATE 'TJ001' THEN
        v_result := SQLERRM::jsonb;
    END;
    FOR i IN 0 .. jsonb_array_length(v_result) - 1 LOOP
        check_name := v_result -> i ->> 0;
        expected := v_result -> i ->> 1;
        actual := v_result -> i ->> 2;
        passed := expected = actual;
        RETURN NEXT;
    END LOOP;
END
$$;
