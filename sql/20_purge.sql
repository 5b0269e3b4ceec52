-- The purge engine: deleting the due rows of every kind of auth.purge_targets
-- in bounded batches, in the caller's transaction. Re-applied on every
-- migrate. The scheduled run around it is sql/30_cleanup_run.sql.
--
-- Every query here is bounded (sql/indexes.sql): an index range, or a range
-- of heap pages (a TID range scan) in page order. The purge functions turn
-- sequential scans, hash joins and merge joins off for themselves: a batch
-- must stay a bounded index range or page range (and per-session index
-- probes) whatever the statistics say, since right after a large delete they are stale and would
-- otherwise turn the next batch into a pass over the whole table. They turn
-- JIT off as well: a disabled plan type adds 10^10 to the cost of any node
-- that has no alternative (the seq scan of the one-row policy table), which
-- crosses jit_above_cost, and every batch then compiled its queries (measured:
-- 120-130 ms a batch against 10-40 ms for its deletes, half of a run's time).

-- auth._purge_statement: the text of every query the purge runs, built from
-- the kind's definition (auth.purge_targets), so that the purge and its plan
-- check (auth.explain_purge) cannot drift apart. Every statement takes the
-- same six parameters, used or not:
--   $1 timestamptz          the kind's first cutoff
--   $2 auth.purge_position  where a batch's range ends (excluded)
--   $3 bigint               a row count
--   $4 uuid[]               session ids
--   $5 auth.purge_position  where the kind's range starts (included)
--   $6 timestamptz          the kind's second cutoff (sessions: revoked)
-- Steps by shape:
--   range    'due' (its due rows from $5, for counting), 'bound' (the
--            position of the ($3 + 1)-th due row from $5), 'range' (delete
--            the due rows from $5 to before $2), 'within' (the same when $5
--            and $2 share their key: written on the primary key under that
--            key, since btree stops a row comparison's range scan on its
--            first column only, and 'range' would read the rest of the key's
--            rows every batch) and 'all' (delete every due row from $5).
--            A position is a full key of the kind's index: its key column,
--            then the primary key, so every row has its own place in the
--            order and a range never needs a lookup per row, however many
--            rows share a timestamp. Starting at $5 lets a run skip the index
--            entries of rows its earlier batches deleted, which stay in the
--            index until vacuum. In page order (auth._purge_order), where a
--            position with neither key nor session id is a page of the heap
--            (its generation field): 'pages' (delete the due rows on the
--            pages from $5 to before $2: one TID range scan); its '_skip'
--            twin finds the rows to lock by their TIDs too.
--            Deletes of a kind that empties sessions
--            return the distinct session ids; the others are plain DELETEs,
--            which cost half as much as one that returns its rows. Each
--            delete step has a '_skip' twin ('range_skip', ...) that locks
--            its rows SKIP LOCKED first and leaves those another transaction
--            holds, returning the rows deleted, the sessions (kinds that
--            empty them) and the rows left locked: auth._purge_range runs
--            it when the plain step meets a held row.
--   through  as 'range' (but 'pages'), over the sessions whose key is
--            before the cutoff, in order of key and id (a position's key
--            and session_id): 'bound' is the ($3 + 1)-th such session from
--            $5, and a delete step deletes the kind's due rows of the
--            sessions in its range.
--   oldest   'due', and 'oldest' (delete the $3 oldest due rows; all of them
--            when $3 is NULL).
--   emptied  'due', 'touched' (the due rows among $4) and 'sweep' (all due
--            rows). Each row is locked SKIP LOCKED before the delete: a
--            session a concurrent transaction holds (a replay revoking a
--            long-expired family takes the session, then its token rows,
--            which this batch may just have deleted) is left to a later
--            batch, where waiting for it would deadlock.
CREATE OR REPLACE FUNCTION auth._purge_statement(p_kind text, p_step text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t       record;
    c       text;
    v_rel   regclass;
    v_in    text;
    v_key   text[];
    v_pk    text;
    v_pk5   text;
    v_pk2   text;
    v_rows  text;
    v_cols  text;
    v_from  text;
    v_until text;
    v_where text;
BEGIN
    SELECT * INTO t FROM auth.purge_targets(p_kind);
    -- What a 'range' or 'through' position orders: the kind's own rows, or
    -- (through) the sessions whose key is before the cutoff.
    IF t.shape = 'through' THEN
        v_rel := 'auth.sessions'::regclass;
        v_in := format('%I < $1', t.key_column);
        v_key := ARRAY['id'];
    ELSE
        v_rel := t.relation;
        v_in := t.due;
        v_key := t.row_key;
    END IF;
    -- The primary keys' columns (the kind's rows', and the positioned
    -- relation's with the same fields of the positions $5 and $2: a loop of
    -- simple expressions, no query per column).
    FOREACH c IN ARRAY t.row_key LOOP
        v_rows := concat_ws(', ', v_rows, quote_ident(c));
    END LOOP;
    FOREACH c IN ARRAY v_key LOOP
        v_pk := concat_ws(', ', v_pk, quote_ident(c));
        -- (A session's id is a position's session_id.)
        c := quote_ident(CASE t.shape WHEN 'through' THEN 'session_id' ELSE c END);
        v_pk5 := concat_ws(', ', v_pk5, '($5).' || c);
        v_pk2 := concat_ws(', ', v_pk2, '($2).' || c);
    END LOOP;
    IF t.key_column IS NOT NULL THEN
        v_cols := format('%I, %s', t.key_column, v_pk);
        v_from := format('(%s) >= (($5).key, %s)', v_cols, v_pk5);
        v_until := format('(%s) < (($2).key, %s)', v_cols, v_pk2);
    END IF;
    IF p_step = 'due' THEN
        RETURN format('SELECT 1 FROM %s WHERE %s', t.relation, t.due)
            || CASE t.shape WHEN 'range' THEN ' AND ' || v_from
                            WHEN 'through' THEN format(' AND session_id IN (SELECT id FROM %s WHERE %s AND %s)',
                                                       v_rel, v_in, v_from)
                            ELSE '' END;
    END IF;
    IF t.shape IN ('range', 'through') THEN
        CASE p_step
            WHEN 'bound' THEN
                -- (A 'through' position's generation field is unused.)
                RETURN format('SELECT %1$s%5$s FROM %2$s WHERE %3$s AND %4$s ORDER BY %1$s OFFSET $3 LIMIT 1',
                              v_cols, v_rel, v_in, v_from, CASE t.shape WHEN 'through' THEN ', 0' ELSE '' END);
            ELSE
                -- A delete step: which rows (v_where), then how.
                v_where := CASE regexp_replace(p_step, '_skip$', '')
                    WHEN 'range' THEN format('%s AND %s AND %s', v_in, v_from, v_until)
                    WHEN 'within' THEN format('%s AND %I = ($2).key AND (%s) >= (%s) AND (%s) < (%s)',
                                              v_in, t.key_column, v_pk, v_pk5, v_pk, v_pk2)
                    WHEN 'all' THEN format('%s AND %s', v_in, v_from)
                    WHEN 'pages' THEN CASE t.shape WHEN 'range' THEN
                                      format('%s AND ctid >= (''('' || ($5).generation || '',0)'')::tid'
                                             ' AND ctid < (''('' || ($2).generation || '',0)'')::tid', t.due) END
                END;
                IF t.shape = 'through' AND v_where IS NOT NULL THEN
                    v_where := format('%s AND session_id IN (SELECT id FROM %s WHERE %s)', t.due, v_rel, v_where);
                END IF;
        END CASE;
        IF v_where IS NULL THEN
            NULL;
        ELSIF p_step LIKE '%\_skip' THEN
            -- The step's rows less those another transaction holds, and
            -- how many those were: the range's due rows as the statement
            -- began, less the deleted ones.
            -- (A page step's rows, by their TIDs: a join on the primary
            -- key would need an index scan, which page steps do not use.)
            RETURN format('WITH d AS (DELETE FROM %1$s WHERE (%2$s) IN (SELECT %2$s FROM %1$s WHERE %3$s FOR UPDATE SKIP LOCKED)'
                          ' RETURNING %4$I) SELECT count(*), %5$s, (SELECT count(*) FROM %1$s WHERE %3$s) - count(*) FROM d',
                          t.relation, CASE p_step WHEN 'pages_skip' THEN 'ctid' ELSE v_rows END, v_where, t.row_key[1],
                          CASE WHEN t.empties_sessions THEN format('coalesce(array_agg(DISTINCT %I), ''{}'')', t.row_key[1])
                               ELSE '''{}''::uuid[]' END);
        ELSIF t.empties_sessions THEN
            RETURN format('WITH d AS (DELETE FROM %s WHERE %s RETURNING session_id) '
                          'SELECT count(*), coalesce(array_agg(DISTINCT session_id), ''{}'') FROM d',
                          t.relation, v_where);
        ELSE
            RETURN format('DELETE FROM %s WHERE %s', t.relation, v_where);
        END IF;
    ELSIF t.shape = 'oldest' AND p_step = 'oldest' THEN
        RETURN format('DELETE FROM %1$s WHERE (%2$s) IN (SELECT %2$s FROM %1$s WHERE %3$s ORDER BY %4$I LIMIT $3)',
                      t.relation, v_rows, t.due, t.key_column);
    ELSIF t.shape = 'emptied' AND p_step IN ('touched', 'sweep') THEN
        RETURN format('DELETE FROM %1$s WHERE (%2$s) IN (SELECT %2$s FROM %1$s WHERE %3$s%4$s FOR UPDATE SKIP LOCKED)',
                      t.relation, v_rows, t.due,
                      CASE p_step WHEN 'touched' THEN format(' AND %I = ANY ($4)', t.row_key[1]) ELSE '' END);
    END IF;
    RAISE EXCEPTION 'no purge statement % for kind %', quote_literal(p_step), quote_literal(p_kind);
END
$$;

-- auth._purge_steps: the steps of auth._purge_statement a batch runs for a
-- kind of shape p_shape (besides 'due', for counting): what explain_purge
-- plans and auth._purge_compile compiles.
CREATE OR REPLACE FUNCTION auth._purge_steps(p_shape text)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_shape WHEN 'range' THEN ARRAY['bound', 'range', 'within', 'all', 'pages',
                                                'range_skip', 'within_skip', 'all_skip', 'pages_skip']
                        WHEN 'through' THEN ARRAY['bound', 'range', 'within', 'all',
                                                  'range_skip', 'within_skip', 'all_skip']
                        WHEN 'oldest' THEN ARRAY['oldest']
                        ELSE ARRAY['touched', 'sweep'] END
$$;

-- auth._purge_start: the position before every row, where a kind's first
-- batch starts.
CREATE OR REPLACE FUNCTION auth._purge_start()
RETURNS auth.purge_position
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ROW('-infinity', '00000000-0000-0000-0000-000000000000', -2147483648)::auth.purge_position
$$;

-- auth._purge_delete: runs p_statement, a delete step of an 'oldest' or
-- 'emptied' kind (auth._purge_statement), with the kind's cutoffs; returns
-- how many rows it deleted. Row locks: the deleted rows. The 'range' kinds'
-- steps, a run's hot path, go through auth._purge_step instead.
CREATE OR REPLACE FUNCTION auth._purge_delete(
    p_statement text,
    p_cutoffs   timestamptz[],
    p_limit     bigint,
    p_touched   uuid[]
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
SET enable_indexscan = on
AS $$
-- @plpgsql_check_options: security_warnings = false, performance_warnings = false
-- (plpgsql_check: every caller passes a text built by auth._purge_statement
-- from the constant definitions of auth.purge_targets, values go through
-- USING; and it cannot see that the dynamic statement deletes, so it would
-- have this VOLATILE function IMMUTABLE.)
DECLARE
    v_deleted bigint;
BEGIN
    EXECUTE p_statement
        USING p_cutoffs[1], NULL::auth.purge_position, p_limit, p_touched, NULL::auth.purge_position, p_cutoffs[2];
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- auth._purge_step: runs step p_step of 'range' kind p_kind (the bound and
-- delete steps of auth._purge_statement) with the statement's six
-- parameters, which it takes first, in their order; returns the rows a
-- delete step deleted and, for a kind that empties sessions, from which
-- sessions; or the position a bound step found (found: whether there was
-- one). Row locks: the deleted rows.
-- Its body is compiled (auth._purge_compile, run by every migrate right
-- below) from auth._purge_statement's texts as static statements, whose
-- plans PL/pgSQL keeps for the session: a run's batches parse and analyze
-- each statement once, not once a batch (perf of a run on the time layout,
-- 90 batches: parsing, analysis, planning and executor start-up 95-103 ms
-- of CPU with dynamic statements, 52-57 ms compiled, of 0.9-1.2 s). The
-- plan modes are pinned, whatever the database or role sets: the bound
-- queries reuse one generic plan (an index-only scan, tested on a populated
-- table), the deletes get a custom plan per batch (a generic plan of
-- 'within' could scan the primary key over a range of unknown width). Plain
-- index scans are off for the delete steps: a bitmap scan visits the
-- batch's heap pages in physical order, which measured twice as fast as
-- visiting them in key order; the bound steps need them (index-only scans).
-- The 'pages' steps turn bitmap scans off: their TID range must be the
-- scan, not a filter on a bitmap of every due row.
CREATE OR REPLACE FUNCTION auth._purge_step(
    p_cutoff   timestamptz,
    p_bound    auth.purge_position,
    p_count    bigint,
    p_sessions uuid[],
    p_from     auth.purge_position,
    p_cutoff2  timestamptz,
    p_kind     text,
    p_step     text,
    OUT deleted bigint,
    OUT touched uuid[],
    OUT bound auth.purge_position,
    OUT found_bound boolean,
    OUT locked bigint
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
SET enable_indexscan = off SET enable_bitmapscan = on SET plan_cache_mode = force_custom_plan
AS $$
BEGIN
    RAISE EXCEPTION 'auth._purge_step(%, %) is not compiled yet: run token-janitor migrate', p_kind, p_step;
END
$$;

-- auth._purge_compile: (re)writes auth._purge_step's body from the 'range'
-- kinds of auth.purge_targets, one static statement per kind and step.
-- Called by every migrate, after the definitions above.
CREATE OR REPLACE FUNCTION auth._purge_compile()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- @plpgsql_check_options: security_warnings = false
-- (plpgsql_check: the EXECUTEd text is built by auth._purge_statement from
-- the constant definitions of auth.purge_targets, and format()ted with %L.)
DECLARE
    v_kind record;
    v_step text;
    v_body text := '';
    v_text text;
BEGIN
    FOR v_kind IN
        SELECT t.kind, t.empties_sessions, auth._purge_steps(t.shape) AS steps
        FROM auth.purge_targets() t WHERE t.shape IN ('range', 'through')
    LOOP
        v_body := v_body || format(E'    %s p_kind = %L THEN\n', CASE v_body WHEN '' THEN 'IF' ELSE 'ELSIF' END,
                                   v_kind.kind);
        FOREACH v_step IN ARRAY v_kind.steps LOOP
            v_text := auth._purge_statement(v_kind.kind, v_step);
            v_body := v_body || format(E'        %s p_step = %L THEN\n            ',
                                       CASE v_step WHEN v_kind.steps[1] THEN 'IF' ELSE 'ELSIF' END, v_step)
                || CASE WHEN v_step LIKE 'pages%'
                        THEN E'PERFORM set_config(''enable_bitmapscan'', ''off'', true);\n            '
                        ELSE '' END
                || CASE WHEN v_step = 'bound'
                        THEN E'PERFORM set_config(''enable_indexscan'', ''on'', true),\n'
                             || E'                    set_config(''plan_cache_mode'', ''force_generic_plan'', true);\n'
                             || E'            ' || v_text || E' INTO bound;\n            found_bound := FOUND;\n'
                        WHEN v_step LIKE '%\_skip'
                        THEN v_text || E' INTO deleted, touched, locked;\n'
                        WHEN v_kind.empties_sessions
                        THEN v_text || E' INTO deleted, touched;\n'
                        ELSE v_text || E';\n            GET DIAGNOSTICS deleted = ROW_COUNT;\n' END
                || E'            RETURN;\n';
        END LOOP;
        v_body := v_body || E'        END IF;\n';
    END LOOP;
    IF v_body <> '' THEN
        v_body := v_body || E'    END IF;\n';
    END IF;
    -- The stub's signature and settings, with the compiled body.
    v_text := pg_get_functiondef('auth._purge_step'::regproc);
    EXECUTE left(v_text, strpos(v_text, 'AS $function$') - 1) || format($f$AS $body$
-- Compiled by auth._purge_compile() from auth.purge_targets: do not edit.
-- @plpgsql_check_options: extra_warnings = false
-- (plpgsql_check: every step takes the six parameters of every statement,
-- which leaves some unused by the kinds at hand, and SELECT INTO assigns
-- the composite OUT value bound whole.)
BEGIN
    deleted := 0;
    touched := '{}';
    found_bound := false;
    locked := 0;
%s    RAISE EXCEPTION 'no purge step %% for kind %%', quote_literal(p_step), quote_literal(p_kind);
END
$body$
$f$, v_body);
END
$$;

-- auth._purge_estimate: the planner's estimate of kind p_kind's due rows
-- under p_cutoffs (free on any table size: EXPLAIN only).
CREATE OR REPLACE FUNCTION auth._purge_estimate(p_kind text, p_cutoffs timestamptz[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- @plpgsql_check_options: security_warnings = false, performance_warnings = false
-- (plpgsql_check: the EXPLAINed text is built by auth._purge_statement from
-- the constant definitions of auth.purge_targets; values go through USING.
-- It would have this function STABLE, where EXPLAIN is not allowed.)
DECLARE
    v_plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || auth._purge_statement(p_kind, 'due')
        INTO v_plan USING p_cutoffs[1], NULL::auth.purge_position, NULL::bigint, NULL::uuid[],
                          auth._purge_start(), p_cutoffs[2];
    RETURN (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint;
END
$$;

-- auth._purge_order: whether a run deletes 'range' kind p_kind in page
-- order (a sweep of the heap in TID ranges) instead of its key's: when the
-- heap does not follow the key (planner correlation of the key column
-- < 0.9: a session's rows together, as after a CLUSTER, pg_repack, a restore
-- or an import grouped by session; a mass revocation, whose rows share one
-- instant and so go in primary-key order, which is random) and at least
-- half the table is due (the planner's estimates).
-- There a batch in key order takes a few rows from each of many pages and
-- every page comes back once per generation (measured on 1M rows, 900k due:
-- 127k heap page visits by the deletes against 15.7k on a heap in time
-- order, and 800k heap fetches by the bound queries, since the earlier
-- batches cleared the pages' visibility bits); after a checkpoint each first
-- touch of a page writes a full-page image, so one batch wrote as much WAL
-- as it touched pages. A batch in page order reads a bounded run of
-- consecutive pages and deletes their due rows: each page is visited once
-- per run, as a sequential DELETE visits it. With few rows due, a sweep
-- would mostly read rows that stay, hence the share. A table filling in time
-- order (production) keeps the key's order. So does a run after one that
-- ended 'partial': a run in page order starts from the first page, and would
-- read again the pages the last run left behind it before it reached what
-- is due; the key order goes straight to the due rows. Not on PostgreSQL 13,
-- which has no TID range scan. Reads pg_stats, pg_class (the owner's own
-- table) and auth.cleanup_runs.
CREATE OR REPLACE FUNCTION auth._purge_order(p_kind text, p_cutoffs timestamptz[])
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t        record;
    v_key    real;
    v_rows   real;
    v_schema name;
    v_table  name;
BEGIN
    -- TID range scans came with PostgreSQL 14: before, a page step would
    -- read the whole table.
    IF current_setting('server_version_num')::int < 140000
       OR (SELECT r.status FROM auth.cleanup_runs r WHERE r.status IN ('ok', 'partial', 'failed')
           ORDER BY r.id DESC LIMIT 1) = 'partial' THEN
        RETURN false;
    END IF;
    SELECT * INTO t FROM auth.purge_targets(p_kind);
    SELECT n.nspname, c.relname, c.reltuples INTO v_schema, v_table, v_rows
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = t.relation;
    IF NOT coalesce(v_rows > 0, false) THEN
        RETURN false;
    END IF;
    SELECT s.correlation INTO v_key
    FROM pg_stats s
    WHERE s.schemaname = v_schema AND s.tablename = v_table AND s.attname = t.key_column;
    IF NOT coalesce(v_key < 0.9, false) THEN
        RETURN false;
    END IF;
    RETURN auth._purge_estimate(p_kind, p_cutoffs) >= 0.5 * v_rows;
END
$$;

-- auth._purge_range: runs delete step p_step of 'range' kind p_kind
-- (auth._purge_step, same parameters and results) so that one row another
-- transaction holds delays only itself: the step waits at most a tenth of a
-- second for a row lock, and when that runs out it is undone (its own
-- subtransaction) and its '_skip' twin deletes the step's other rows,
-- counting the held ones in `locked`; they stay due, for a later run. A
-- batch so never rolls back, nor waits longer than that per step, for
-- rows an application's open transaction holds (a revocation of an
-- expired family left open in a pool).
CREATE OR REPLACE FUNCTION auth._purge_range(
    p_cutoff   timestamptz,
    p_bound    auth.purge_position,
    p_from     auth.purge_position,
    p_cutoff2  timestamptz,
    p_kind     text,
    p_step     text,
    OUT deleted bigint,
    OUT touched uuid[],
    OUT locked bigint
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_wait constant text := '100ms';
    v_timeout text := current_setting('lock_timeout');
    v_step record;
BEGIN
    BEGIN
        PERFORM set_config('lock_timeout', c_wait, true);
        v_step := auth._purge_step(p_cutoff, p_bound, NULL, NULL, p_from, p_cutoff2, p_kind, p_step);
        PERFORM set_config('lock_timeout', v_timeout, true);
    EXCEPTION WHEN lock_not_available THEN
        v_step := auth._purge_step(p_cutoff, p_bound, NULL, NULL, p_from, p_cutoff2, p_kind, p_step || '_skip');
    END;
    deleted := v_step.deleted;
    touched := v_step.touched;
    locked := v_step.locked;
END
$$;

-- auth._purge_kind: deletes up to p_limit due rows of kind p_kind, of shape
-- p_shape ('range', 'through' or 'oldest'), from position p_from on (NULL:
-- from the start), in key order; returns how many, from which sessions, whether it
-- saw the end of the kind's due rows, and where the next call may start
-- (every due row before `resume` is gone). Row locks: the deleted rows,
-- until the caller's transaction ends.
-- A 'range' step deletes the range up to the position of the (n + 1)-th
-- due row (n: what is left of p_limit), one index range scan with no
-- per-row lookups, whether or not those rows share a timestamp. A step
-- deletes fewer than n rows only when some of them went meanwhile; the loop
-- then takes the next range.
-- In page order (auth._purge_order, decided by a kind's first batch of a
-- run and kept by the positions it returns, which carry a page and neither
-- key nor session id) a step reads the pages that hold what is left of n at
-- the table's average density (pg_class: reltuples / relpages) and deletes
-- their due rows, one TID range scan; the batch stops once what is left of
-- n is under 1/16 of the rows its pages held (at 90% due: two steps, about
-- 9,900 rows of 10,000) or after reading the pages of 2 x n rows (work
-- bounded however few are due: such a batch may delete nothing and not be
-- drained, and the run's next batch goes on from its resume). A batch's
-- first step reads half those pages, and every step's rows per page raise
-- the density for the next. The kind is drained once a step has read up to
-- the end of the table as the batch found it: a sweep drains the rows that
-- stayed in place. A due row an update moved behind it (a revocation of an
-- expired token that does not fit on its page), or the rows of a table
-- rewritten meanwhile (VACUUM FULL, CLUSTER, pg_repack), wait for the next
-- run, which finds them in key order (what is left is under half the
-- table). Going on in key order at once would find them in this run, but
-- its first range walks the index entries of every row the sweep deleted,
-- each a heap fetch until vacuum: it doubled a run on 1M rows (0.94 s ->
-- 1.90 s). Such a batch is bounded by pages: it deletes about n rows, more
-- only as far as its pages are denser than the rows per page it has seen. Only a
-- run chooses this order (p_reorder): a one-off call starts from the first
-- key every time, so a loop of purge_refresh_tokens calls would walk again
-- over what the earlier calls left, and a call must return 0 only when
-- nothing is due. A batch in key order never deletes more than p_limit.
-- A 'through' batch counts sessions, not rows: its ranges hold what is left
-- of p_limit sessions each, and a run's batch stops once it has read 2 x
-- p_limit of them (sessions past the cutoff by their key but not by their
-- expiry, whose key lags it by up to half of expired_retention, hold no due
-- row; the run's next batch goes on from its resume; a one-off call goes on
-- until it deleted p_limit rows or read every such session). It deletes more than
-- p_limit rows only where a session holds more than one row that rotates
-- in place, which no rotation leaves.
CREATE OR REPLACE FUNCTION auth._purge_kind(
    p_kind    text,
    p_shape   text,
    p_cutoffs timestamptz[],
    p_limit   bigint,
    p_from    auth.purge_position,
    p_reorder boolean,
    OUT deleted bigint,
    OUT touched uuid[],
    OUT drained boolean,
    OUT resume auth.purge_position,
    OUT locked bigint
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- @plpgsql_check_options: security_warnings = false, other_warnings = false, extra_warnings = false
-- (plpgsql_check: the EXECUTEd text is built by auth._purge_statement from
-- the constant definitions of auth.purge_targets, no caller's value reaches
-- it except through USING; it cannot see that the composite OUT value
-- resume is assigned whole.)
DECLARE
    v_bound   auth.purge_position;
    v_step    record;
    v_read    bigint := 0::bigint;
    v_pages   boolean;
    v_density float8;
    v_end     bigint;
    v_span    bigint;
BEGIN
    deleted := 0;
    touched := '{}';
    drained := false;
    locked := 0;
    resume := coalesce(p_from, auth._purge_start());
    IF p_shape = 'oldest' THEN
        deleted := auth._purge_delete(auth._purge_statement(p_kind, 'oldest'), p_cutoffs, p_limit, NULL);
        drained := deleted < p_limit;
        IF NOT drained THEN
            -- As the bound of a 'range' kind: is there a row after these?
            EXECUTE 'SELECT NOT EXISTS (' || auth._purge_statement(p_kind, 'due') || ')' INTO drained
                USING p_cutoffs[1], NULL::auth.purge_position, NULL::bigint, NULL::uuid[], NULL::auth.purge_position,
                      p_cutoffs[2];
        END IF;
        RETURN;
    END IF;
    IF p_limit <= 0 THEN
        -- Nothing to delete: the next batch starts where this one would
        -- have, and still chooses the order when it is the kind's first.
        resume := p_from;
        RETURN;
    END IF;
    IF p_from IS NULL THEN
        v_pages := p_reorder AND p_shape = 'range' AND auth._purge_order(p_kind, p_cutoffs);
        IF v_pages THEN
            resume := ROW(NULL::timestamptz, NULL::uuid, 0)::auth.purge_position;
        END IF;
    ELSE
        v_pages := (p_from).key IS NULL;
    END IF;
    IF v_pages THEN
        SELECT greatest(c.reltuples / greatest(c.relpages, 1), 1),
               pg_relation_size(c.oid) / current_setting('block_size')::bigint
        INTO v_density, v_end
        FROM pg_class c WHERE c.oid = (SELECT t.relation FROM auth.purge_targets(p_kind) t);
        WHILE p_limit - deleted > v_read / 16 AND v_read < 2 * p_limit LOOP
            -- The batch's first step reads half the pages the average
            -- density asks for: a density read before the run (or by an
            -- ANALYZE since, which counts the pages already swept as
            -- empty) can be far below what the pages ahead hold, and the
            -- rows a step deletes per page correct it for the next steps.
            v_span := ceil((p_limit - deleted) / v_density / CASE WHEN v_read = 0 THEN 2 ELSE 1 END)::bigint;
            v_bound := ROW(NULL::timestamptz, NULL::uuid,
                           least((resume).generation + v_span, 2147483647)::integer)::auth.purge_position;
            v_step := auth._purge_range(p_cutoffs[1], v_bound, resume, p_cutoffs[2], p_kind, 'pages');
            v_read := v_read + ceil(v_span * v_density)::bigint;
            v_density := greatest(v_density, v_step.deleted::float8 / v_span);
            deleted := deleted + v_step.deleted;
            touched := touched || v_step.touched;
            locked := locked + v_step.locked;
            resume := v_bound;
            drained := (v_bound).generation >= v_end;
            EXIT WHEN drained;
        END LOOP;
        RETURN;
    END IF;
    WHILE deleted < p_limit AND (p_shape = 'range' OR NOT p_reorder OR v_read < 2 * p_limit) LOOP
        v_read := v_read + p_limit - deleted;
        v_step := auth._purge_step(p_cutoffs[1], NULL, p_limit - deleted, NULL, resume, p_cutoffs[2],
                                   p_kind, 'bound');
        drained := NOT v_step.found_bound;
        v_bound := v_step.bound;
        v_step := auth._purge_range(p_cutoffs[1], v_bound, resume, p_cutoffs[2], p_kind,
                                    CASE WHEN drained THEN 'all'
                                         WHEN (v_bound).key = (resume).key THEN 'within'
                                         ELSE 'range' END);
        deleted := deleted + v_step.deleted;
        touched := touched || v_step.touched;
        locked := locked + v_step.locked;
        EXIT WHEN drained;
        resume := v_bound;
    END LOOP;
END
$$;

-- auth._purge_batch: one batch of the purge over the kinds p_kinds (NULL:
-- every kind of auth.purge_targets), in their order: up to p_limit rows of
-- the 'range' and 'oldest' kinds (NULL: all that are due), then (listed
-- last) the 'emptied' kinds among the sessions those deletes touched, and
-- all of them once nothing else is due. Returns the rows deleted per kind, whether it
-- deleted everything that was due but what other transactions held (the
-- run's stop signal), how many due rows it left held (auth._purge_range) and where each
-- kind's next batch may start (p_from: the previous batch's `resume`, one
-- position per kind in auth.purge_targets order, NULL for anywhere). A row
-- due under several kinds is counted once, under the first. p_reorder: a
-- run's batch, whose kinds may go in primary-key order (auth._purge_kind).
-- A kind the batch drains gets a resume at 'infinity', and the run's later
-- batches skip it: their cutoffs are the same, so nothing more becomes due
-- for it, and its queries cost even when they find nothing. Planning
-- `expires_at < cutoff` with the cutoff below every expiry reads the index's
-- lowest entries for the estimate, and while rotated rows are purged those
-- are the entries of the rows the run has deleted so far: asked every batch,
-- that walk grew with the run (17 ms a batch by the end of 2.7M rotated rows
-- in batches of 10,000, which made the run four times as long).
-- Locks: the deleted rows, and lock 'purge' (auth._lock, sql/00_locks.sql)
-- until the transaction ends: purges (a run's batches, purge_refresh_tokens calls)
-- take turns, one transaction at a time, because two of them deleting
-- overlapping rows kind by kind from different starting keys can each hold
-- what the other waits for (a deadlock seen in tests/concurrency.rs). A
-- batch holds it for milliseconds.
CREATE OR REPLACE FUNCTION auth._purge_batch(
    p_now   timestamptz,
    p_limit bigint,
    p_from  auth.purge_position[] DEFAULT NULL,
    p_kinds text[] DEFAULT NULL,
    p_reorder boolean DEFAULT false
)
RETURNS TABLE (deleted jsonb, drained boolean, resume auth.purge_position[], locked bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_policy  auth.cleanup_policy%ROWTYPE;
    v_left    bigint;
    v_touched uuid[] := '{}'::uuid[];
    v_target  record;
    v_cutoffs timestamptz[];
    v_kind    record;
    v_count   bigint;
BEGIN
    IF p_limit < 0 THEN
        RAISE EXCEPTION 'p_limit must be NULL (everything due) or at least 0, got %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_policy FROM auth.cleanup_policy;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'auth.cleanup_policy has no row: run token-janitor migrate to restore it';
    END IF;
    PERFORM auth._lock('purge');
    v_left := coalesce(p_limit, 9223372036854775807);
    deleted := '{}';
    drained := true;
    resume := '{}';
    locked := 0;

    FOR v_target IN
        SELECT t.kind, t.shape, t.retentions, t.ordinality AS n,
               p_kinds IS NULL OR t.kind = ANY (p_kinds) AS included
        FROM auth.purge_targets() WITH ORDINALITY t
        ORDER BY t.ordinality
    LOOP
        resume := resume || p_from[v_target.n];
        CONTINUE WHEN NOT v_target.included;
        v_count := 0;
        IF v_target.shape = 'emptied' THEN
            -- After every kind that can empty a session (the targets list
            -- 'emptied' kinds last): the sessions this batch emptied, and
            -- once nothing else is due, every dead session without tokens.
            -- A batch that emptied none (rotated rows alone never do) has
            -- nothing to look at until the sweep.
            IF cardinality(v_touched) > 0 OR drained THEN
                v_cutoffs := auth._purge_cutoffs(v_policy, v_target.retentions, v_now);
            END IF;
            IF cardinality(v_touched) > 0 THEN
                v_count := auth._purge_delete(auth._purge_statement(v_target.kind, 'touched'),
                                              v_cutoffs, NULL, v_touched);
            END IF;
            IF drained THEN
                v_count := v_count + auth._purge_delete(auth._purge_statement(v_target.kind, 'sweep'),
                                                        v_cutoffs, NULL, NULL);
            END IF;
        ELSIF coalesce((p_from[v_target.n]).key <> 'infinity', true) THEN
            SELECT * INTO v_kind
            FROM auth._purge_kind(v_target.kind, v_target.shape,
                                  auth._purge_cutoffs(v_policy, v_target.retentions, v_now), v_left,
                                  p_from[v_target.n], p_reorder);
            v_count := v_kind.deleted;
            v_left := greatest(v_left - v_count, 0);
            v_touched := v_touched || v_kind.touched;
            locked := locked + v_kind.locked;
            drained := drained AND v_kind.drained;
            resume[v_target.n] := CASE WHEN v_kind.drained THEN ROW('infinity', NULL, NULL)::auth.purge_position
                                       ELSE v_kind.resume END;
        END IF;
        deleted := deleted || jsonb_build_object(v_target.kind, v_count);
    END LOOP;
    RETURN NEXT;
END
$$;

-- auth.purge_refresh_tokens: deletes up to p_limit due token rows (NULL: all
-- that are due) in the caller's transaction, then the dead sessions left
-- without tokens; returns how many rows of each kind it deleted: the pinned
-- kinds in their columns (each column the sum of the kinds whose run_column
-- it names: expired counts expired_in_place too), and every kind of
-- auth.purge_targets on these two tables in by_kind (kind -> rows), so a
-- new kind needs no new column.
-- Security events are the run's (auth.run_token_cleanup).
CREATE OR REPLACE FUNCTION auth.purge_refresh_tokens(
    p_now   timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
)
RETURNS TABLE (expired bigint, revoked bigint, rotated bigint, sessions bigint, by_kind jsonb)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.counts[1], c.counts[2], c.counts[3], c.counts[4], b.deleted
    FROM auth._purge_batch(p_now, p_limit, NULL,
                           ARRAY(SELECT t.kind FROM auth.purge_targets() t
                                 WHERE t.relation IN ('auth.refresh_tokens'::regclass, 'auth.sessions'::regclass))) b,
         LATERAL (SELECT ARRAY(SELECT (SELECT sum((b.deleted ->> t.kind)::bigint)::bigint FROM auth.purge_targets() t
                                       WHERE t.run_column = p.col || '_deleted')
                               FROM unnest(ARRAY['expired', 'revoked', 'rotated', 'sessions']) WITH ORDINALITY p (col, n)
                               ORDER BY p.n) AS counts) c
$$;

-- auth._purge_step's statements, from the definitions as they stand now.
SELECT auth._purge_compile();
