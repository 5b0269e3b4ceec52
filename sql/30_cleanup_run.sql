-- The cleanup run: auth.run_token_cleanup, the pg_cron job's procedure, and
-- its bookkeeping in auth.cleanup_runs. Each batch is one transaction of the
-- purge engine (sql/20_purge.sql). Re-applied on every migrate.

-- auth._start_run: under the run's lease, marks runs a killed run left
-- 'running' as failed, deletes grace keys past their use and records a new
-- run; returns its id.
CREATE OR REPLACE FUNCTION auth._start_run(p_started timestamptz)
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

-- auth._record_skipped_run: a run that found another one holding the lock.
CREATE OR REPLACE FUNCTION auth._record_skipped_run(p_started timestamptz)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO auth.cleanup_runs (started_at, finished_at, status)
    VALUES (p_started, clock_timestamp(), 'skipped');
$$;

-- auth._add_counts: two objects of counts (key -> number) added key by key.
CREATE OR REPLACE FUNCTION auth._add_counts(p_a jsonb, p_b jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((SELECT jsonb_object_agg(k.key, coalesce((p_a ->> k.key)::bigint, 0)
                                                    + coalesce((p_b ->> k.key)::bigint, 0))
                     FROM (SELECT jsonb_object_keys(coalesce(p_a, '{}'))
                           UNION SELECT jsonb_object_keys(coalesce(p_b, '{}'))) k (key)),
                    '{}');
END
$$;

-- auth._token_rows_deleted: of counts by kind (a run's deleted_by_kind,
-- purge_refresh_tokens' by_kind), the token rows: the sum over the kinds of
-- auth.purge_targets on auth.refresh_tokens, whichever they are. For the
-- reports of bench, the soak and the demo.
CREATE OR REPLACE FUNCTION auth._token_rows_deleted(p_by_kind jsonb)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT coalesce(sum((p_by_kind ->> t.kind)::bigint), 0)::bigint
            FROM auth.purge_targets() t WHERE t.relation = 'auth.refresh_tokens'::regclass);
END
$$;

-- auth._run_counters: the statement that adds a batch's deletes ($2, kind
-- -> rows) to run $1's record: to deleted_by_kind, and each kind that has a
-- run_column of auth.purge_targets to that column too (the kinds that share
-- one, added up); and the due rows it
-- left held by other transactions ($3) to rows_locked. IMMUTABLE without
-- arguments, so a run builds it once: the planner folds the call into the
-- caller's cached plan.
CREATE OR REPLACE FUNCTION auth._run_counters()
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN format('UPDATE auth.cleanup_runs r SET deleted_by_kind = auth._add_counts(r.deleted_by_kind, $2)%s, '
                  'rows_locked = r.rows_locked + $3, batches = r.batches + 1 WHERE r.id = $1',
                  coalesce((SELECT string_agg(format(', %1$I = r.%1$I + %2$s', c.run_column, c.counts), '')
                            FROM (SELECT t.run_column,
                                         string_agg(format('coalesce(($2 ->> %L)::bigint, 0)', t.kind), ' + ') AS counts
                                  FROM auth.purge_targets() t WHERE t.run_column IS NOT NULL
                                  GROUP BY t.run_column) c), ''));
END
$$;

-- auth._run_batch: one batch of run p_run over every kind of
-- auth.purge_targets, counted into the run's record (auth._run_counters, in
-- the same transaction, so the record and the deletes always agree); returns the _purge_batch row and whether the run is out of time.
-- A due token row another transaction holds is left to a later run
-- (auth._purge_range); any other lock is waited for at most 5 seconds,
-- and then ends the run as 'partial' instead of stalling it (rotations
-- never wait on the purge: they touch no due row).
CREATE OR REPLACE FUNCTION auth._run_batch(
    p_run     bigint,
    p_started timestamptz,
    p_limit   bigint,
    p_from    auth.purge_position[]
)
RETURNS TABLE (deleted jsonb, drained boolean, resume auth.purge_position[], out_of_time boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd text is auth._run_counters(), format()ted
-- from the constant column names of auth.purge_targets; the counts go
-- through USING.)
DECLARE
    v_batch record;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT * INTO v_batch FROM auth._purge_batch(p_started, p_limit, p_from, NULL, true);
    EXECUTE auth._run_counters() USING p_run, v_batch.deleted, v_batch.locked;
    RETURN QUERY SELECT v_batch.deleted, v_batch.drained, v_batch.resume,
                        clock_timestamp() >= p_started + (SELECT p.max_runtime FROM auth.cleanup_policy p);
END
$$;

-- auth._run_pace: the size of a run's next batch when the policy's `pace` is
-- on, after a pause when other transactions use auth.refresh_tokens. A
-- batch writes WAL as fast as the disk takes it and takes a core, and a
-- rotation that commits meanwhile waits for that WAL to be flushed before
-- its own commit record is, and for a core: the longer the stretch of the
-- purge's WAL between two flushes, the longer the wait. So while
-- transactions come and go on the table, and until the run has seen no new
-- one for a tenth of a second, batches take an eighth of batch_size, so
-- that the run's own commits flush its WAL in short stretches, and before
-- each one the run waits as long as the previous batch took
-- (p_batch_started: when it started; NULL before the first), at most a
-- tenth of a second, leaving the disk and a core to the traffic about half
-- the time (docs/design.md §5 has the measurements). A run starts with
-- small batches, as if it had just seen traffic, for a tenth of a second
-- from its first check (p_watch_from, set by the first call): one check
-- misses a rotation between two calls more often than not, a tenth of a
-- second of checks does not. It waits only once it has seen some; with
-- nothing else on the table it goes on at full speed: whole batches, no
-- wait.
-- Traffic is read from pg_locks, which every role may read
-- (pg_stat_activity hides other roles' rows): transactions holding or
-- awaiting a lock on the table in a mode that reads or writes rows (ACCESS
-- SHARE, ROW SHARE, ROW EXCLUSIVE; autovacuum, ANALYZE and index builds
-- take SHARE UPDATE EXCLUSIVE and are not traffic). Only a transaction that
-- was not there at the previous check counts (p_holders: the transactions
-- seen then, returned updated): rotations are short and each is new, while
-- one left open on the table, idle in a pool or a pg_dump, counts once, so
-- it cannot keep every run slow (its default lets a run that started
-- before this parameter existed go on through a migrate). p_traffic_at:
-- when the run last saw traffic (NULL: not yet), returned updated. Locks:
-- none (reading pg_locks takes the lock manager's partition locks for a
-- moment).
CREATE OR REPLACE FUNCTION auth._run_pace(
    p_batch_size    pg_catalog.int4,
    p_batch_started pg_catalog.timestamptz,
    INOUT p_watch_from pg_catalog.timestamptz,
    INOUT p_traffic_at pg_catalog.timestamptz,
    INOUT p_holders pg_catalog.text[] DEFAULT NULL,
    OUT batch_limit pg_catalog.int4
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_window constant interval := interval '0.1 second';
    v_holders text[];
BEGIN
    p_watch_from := coalesce(p_watch_from, clock_timestamp());
    SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') INTO v_holders
    FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.relation = 'auth.refresh_tokens'::regclass
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.mode IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock')
      AND l.pid <> pg_backend_pid();
    IF NOT v_holders <@ coalesce(p_holders, '{}') THEN
        p_traffic_at := clock_timestamp();
    END IF;
    p_holders := v_holders;
    IF greatest(p_traffic_at, p_watch_from) <= clock_timestamp() - c_window THEN
        batch_limit := p_batch_size;
        RETURN;
    END IF;
    batch_limit := greatest(p_batch_size / 8, 1);
    IF p_traffic_at IS NOT NULL AND p_batch_started IS NOT NULL THEN
        PERFORM pg_sleep(extract(epoch FROM least(clock_timestamp() - p_batch_started, c_window)));
    END IF;
END
$$;

-- auth._finish_run: records how run p_run ended and prunes the history past
-- history_retention (a failure to prune is a warning, not a failed run).
CREATE OR REPLACE FUNCTION auth._finish_run(
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
            PERFORM auth._prune_cleanup_history(
                v_started - (SELECT p.history_retention FROM auth.cleanup_policy p));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'auth.run_token_cleanup: could not prune run history: %', SQLERRM;
        END;
    END IF;
END
$$;

-- auth._prune_cleanup_history: deletes auth.cleanup_runs rows and this job's
-- cron.job_run_details rows that started before p_before. The job is found by
-- database and command, whatever its name (one per database on a shared
-- pg_cron; an earlier release's refresh-token-cleanup).
CREATE OR REPLACE FUNCTION auth._prune_cleanup_history(p_before timestamptz)
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
                'WHERE d.jobid = j.jobid AND j.database = current_database() '
                'AND j.command = $1 AND d.start_time < $2'
            USING 'CALL auth.run_token_cleanup()', p_before;
    END IF;
END
$$;

-- auth.run_token_cleanup: the scheduled entry point (the pg_cron job
-- 'token-janitor cleanup: <database>.<schema>'). One run: batches of batch_size (with pace on, an
-- eighth of it after a short pause while transactions come and go on the
-- token table: auth._run_pace), each committed, until nothing is due or
-- max_runtime is spent; recorded in auth.cleanup_runs.
-- Locks: the lease of the cleanup run (auth._claim_run, sql/00_locks.sql)
-- for the whole run (a second run records 'skipped' and returns at once); each batch's deleted rows until its
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
    v_started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    v_batch_size pg_catalog.int4;
    v_limit   pg_catalog.int4;
    v_pace    pg_catalog.bool;
    v_watch_from pg_catalog.timestamptz;
    v_traffic_at pg_catalog.timestamptz;
    v_holders pg_catalog.text[];
    v_batch_started pg_catalog.timestamptz;
    v_run     pg_catalog.int8;
    v_batch   pg_catalog.record;
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
    IF NOT auth._claim_run() THEN
        PERFORM auth._record_skipped_run(v_started);
        COMMIT;
        RAISE NOTICE 'auth.run_token_cleanup: another run is in progress; skipped';
        RETURN;
    END IF;
    v_run := auth._start_run(v_started);
    SELECT p.batch_size, p.pace INTO v_batch_size, v_pace FROM auth.cleanup_policy p;
    v_limit := v_batch_size;
    COMMIT;

    LOOP
        BEGIN
            IF v_pace THEN
                SELECT r.p_watch_from, r.p_traffic_at, r.p_holders, r.batch_limit
                INTO v_watch_from, v_traffic_at, v_holders, v_limit
                FROM auth._run_pace(v_batch_size, v_batch_started, v_watch_from, v_traffic_at,
                                    v_holders) r;
            END IF;
            v_batch_started := pg_catalog.clock_timestamp();
            SELECT * INTO v_batch FROM auth._run_batch(v_run, v_started, v_limit, v_from);
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
    END LOOP;

    PERFORM auth._finish_run(v_run, v_status, v_state, v_error);
    PERFORM auth._release_run();
    COMMIT;
    IF v_failed THEN
        RAISE EXCEPTION 'auth.run_token_cleanup failed: %: %', v_state, v_error;
    END IF;
END
$$;

