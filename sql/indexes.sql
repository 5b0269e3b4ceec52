-- Indexes built CONCURRENTLY by `token-janitor migrate`, one statement each,
-- outside any transaction, so building one on a table that already holds
-- millions of rows never blocks token traffic. An INVALID leftover of an
-- interrupted build is dropped and rebuilt. Each serves a purge query; any
-- other index on these tables would only slow the rotate path down.
--
-- The token kinds' indexes end with the primary key: a batch is the range
-- between two auth.purge_position values, so rows that share a timestamp
-- split between batches inside one range scan. They replace indexes on the
-- timestamp alone (named in migrate's RETIRED_INDEXES, dropped CONCURRENTLY
-- once these are built).

-- expired kind: expires_at < now - expired_retention (any revoke state), of
-- the rows that do not rotate in place. A rotation in place changes its
-- row's key, so the update is never HOT and adds an entry to every index
-- that holds the row: this one would take one per rotation (the
-- expired_in_place kind finds those rows through their session).
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_expired_rows_idx
    ON auth.refresh_tokens (expires_at, session_id, generation) WHERE NOT rotates_in_place;

-- rotated kind: the bulk of the table, kept apart so the revoked kind's index
-- stays small.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_rotated_purge_idx
    ON auth.refresh_tokens (revoked_at, session_id, generation) WHERE revoke_reason = 'rotated';

-- revoked kind: logout, admin and reuse_detected revocations.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_revoked_purge_idx
    ON auth.refresh_tokens (revoked_at, session_id, generation) WHERE revoke_reason <> 'rotated';

-- session sweep and expired_in_place: dead by expiry, through expiry_floor
-- (at or before refresh_expires_at; V12): an index on refresh_expires_at,
-- which every rotation moves, would take a new entry per rotation in each
-- of the session's indexes. Ends with the primary key, for the positions of
-- expired_in_place's batches.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_expiry_floor_idx
    ON auth.sessions (expiry_floor, id);

-- session sweep: dead by revocation.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_revoked_at_idx
    ON auth.sessions (revoked_at) WHERE revoked_at IS NOT NULL;
