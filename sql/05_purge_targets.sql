-- Purge targets: what the cleanup deletes, one definition per kind of due
-- row (docs/design.md §5). Every part of the cleanup reads these rows: the
-- purge engine builds its statements from them (sql/20_purge.sql), the run
-- counts into their columns (sql/30_cleanup_run.sql), explain_purge,
-- cleanup_backlog, verify's plan and index checks, status and bench list
-- them. Adding a kind is one row here and its index in sql/indexes.sql (and
-- its test): runs count it in auth.cleanup_runs.deleted_by_kind and
-- purge_refresh_tokens in by_kind. Re-applied on every migrate.

-- auth.purge_targets: the kinds (only p_kind's when given; an unknown kind
-- is an error), in the order a batch deletes them:
--   kind              the kind's name (cleanup_backlog, status, metrics)
--   shape             how a batch deletes it:
--                     'range'  due rows in key order, a batch being the range
--                              between two auth.purge_position values (key,
--                              then the primary key, `row_key`), one index
--                              range scan however many rows share a key; or,
--                              on a heap that does not follow the key, in
--                              page order (auth._purge_order);
--                     'through' due rows found through their session: a
--                              batch is the range of sessions (auth.sessions,
--                              ordered by key_column, then id) between two
--                              positions, its due rows those of these
--                              sessions; never in page order
--                     'oldest' the oldest due rows by key, LIMIT n, by
--                              primary key (`row_key`); for tables whose rows
--                              do not fit auth.purge_position;
--                     'emptied' rows the deletes of the kinds that can empty
--                              them leave without children (`touched`), then
--                              all of them once the batch drains (`sweep`);
--                              listed after every other kind
--   relation          the table
--   key_column        the column a batch orders by (NULL for 'emptied'; a
--                     column of auth.sessions for 'through')
--   row_key           the primary key's columns after key_column
--   due               when a row is due: a predicate on the relation's
--                     columns with $1 = now - retentions[1] (and, for
--                     sessions, $6 = now - retentions[2])
--   retentions        the auth.cleanup_policy settings of those cutoffs
--   indexes           the indexes the kind's statements use (sql/indexes.sql;
--                     a 'range' kind's page-order steps use none: they read
--                     a TID range of the heap, auth._purge_order)
--   empties_sessions  whether deleting a row can leave its session without
--                     token rows: its deletes return session ids, which
--                     'emptied' looks at
--   run_column        the auth.cleanup_runs column that also counts its
--                     deletes, and purge_refresh_tokens' pinned column of
--                     that name less '_deleted', for the kinds from before
--                     deleted_by_kind and those that split one of them
--                     (NULL for a kind added since); kinds that share one
--                     add up there
-- SECURITY DEFINER-free and readable by monitoring: definitions, no data.
CREATE OR REPLACE FUNCTION auth.purge_targets(p_kind text DEFAULT NULL)
RETURNS TABLE (kind text, shape text, relation regclass, key_column text, row_key text[],
               due text, retentions text[], indexes text[], empties_sessions boolean,
               run_column text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM (VALUES
        -- A row of its own (token_history, an rt1_ token, a row from before
        -- V10, a row revoked 'rotated').
        ('expired', 'range', 'auth.refresh_tokens'::regclass, 'expires_at',
         ARRAY['session_id', 'generation'],
         'NOT rotates_in_place AND expires_at < $1',
         ARRAY['expired_retention'], ARRAY['refresh_tokens_expired_rows_idx'], true,
         'expired_deleted'),
        -- A session's current token row, which a rotation replaces in place.
        -- No index holds it by expiry: that would take an entry per rotation
        -- (about 90 bytes of WAL of the 740 a rotation wrote) for a row that
        -- expires once. Its expires_at is its session's refresh_expires_at,
        -- whose expiry_floor is at or before it, so it is found through the
        -- sessions whose floor is before the cutoff, as the session sweep
        -- finds a session dead by expiry.
        ('expired_in_place', 'through', 'auth.refresh_tokens'::regclass, 'expiry_floor',
         ARRAY['session_id', 'generation'],
         'rotates_in_place AND expires_at < $1',
         ARRAY['expired_retention'], ARRAY['sessions_expiry_floor_idx', 'refresh_tokens_pkey'], true,
         'expired_deleted'),
        ('revoked', 'range', 'auth.refresh_tokens'::regclass, 'revoked_at',
         ARRAY['session_id', 'generation'],
         'revoke_reason <> ''rotated'' AND revoked_at < $1',
         ARRAY['revoked_retention'], ARRAY['refresh_tokens_revoked_purge_idx'], true,
         'revoked_deleted'),
        -- The bulk of the purge. A rotated row never empties its session (the
        -- session holds a newer token), so its deletes return nothing: a plain
        -- DELETE costs half as much as one that returns its rows.
        ('rotated', 'range', 'auth.refresh_tokens'::regclass, 'revoked_at',
         ARRAY['session_id', 'generation'],
         'revoke_reason = ''rotated'' AND revoked_at < $1',
         ARRAY['rotated_retention'], ARRAY['refresh_tokens_rotated_purge_idx'], false,
         'rotated_deleted'),
        ('security_events', 'oldest', 'auth.security_events'::regclass, 'occurred_at',
         ARRAY['id'],
         'occurred_at < $1',
         ARRAY['audit_retention'], ARRAY['security_events_occurred_at_idx'], false,
         'security_events_deleted'),
        -- A dead session never gets a token again, so "no token rows" cannot
        -- change under a delete. Dead by expiry is found by expiry_floor, a
        -- time at or before refresh_expires_at that rotations seldom move
        -- (V12), so that they update the session row HOT.
        ('sessions', 'emptied', 'auth.sessions'::regclass, NULL,
         ARRAY['id'],
         '(expiry_floor < $1 AND refresh_expires_at < $1 OR revoked_at < $6)'
         ' AND NOT EXISTS (SELECT 1 FROM auth.refresh_tokens t WHERE t.session_id = sessions.id)',
         ARRAY['expired_retention', 'revoked_retention'],
         ARRAY['sessions_expiry_floor_idx', 'sessions_revoked_at_idx'], false,
         'sessions_deleted')
    ) AS t (kind, shape, relation, key_column, row_key, due, retentions, indexes, empties_sessions, run_column)
    WHERE p_kind IS NULL OR t.kind = p_kind;
    IF NOT FOUND AND p_kind IS NOT NULL THEN
        RAISE EXCEPTION 'no purge target %', quote_literal(p_kind);
    END IF;
END
$$;

-- auth._purge_cutoffs: a row is due at p_now under p_policy when its key
-- is before these times, one per setting of a kind's retentions.
CREATE OR REPLACE FUNCTION auth._purge_cutoffs(
    p_policy     auth.cleanup_policy,
    p_retentions text[],
    p_now        timestamptz
)
RETURNS timestamptz[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(SELECT p_now - (to_jsonb(p_policy) ->> r.setting)::interval
                 FROM unnest(p_retentions) WITH ORDINALITY r (setting, n) ORDER BY r.n);
END
$$;
