-- Indexes built CONCURRENTLY by `token-janitor migrate`, one statement each,
-- outside any transaction, so building one on a table that already holds
-- millions of rows never blocks token traffic. An INVALID leftover of an
-- interrupted build is dropped and rebuilt. Each serves a purge query; any
-- other index on these tables would only slow the rotate path down.

-- expired kind: expires_at < now - expired_retention (any revoke state).
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_expires_at_idx
    ON auth.refresh_tokens (expires_at);

-- rotated kind: the bulk of the table, kept apart so the revoked kind's index
-- stays small.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_rotated_idx
    ON auth.refresh_tokens (revoked_at) WHERE revoke_reason = 'rotated';

-- revoked kind: logout, admin and reuse_detected revocations.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_revoked_idx
    ON auth.refresh_tokens (revoked_at) WHERE revoke_reason <> 'rotated';

-- session sweep: dead by expiry.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_refresh_expires_at_idx
    ON auth.sessions (refresh_expires_at);

-- session sweep: dead by revocation.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_revoked_at_idx
    ON auth.sessions (revoked_at) WHERE revoked_at IS NOT NULL;
