-- V1 auth_schema
-- The token store: sessions (token families) and one row per issued refresh
-- token. Immutable once released: later changes go in new migrations.

CREATE SCHEMA IF NOT EXISTS auth;

-- auth.sessions: one row per login (device); also the token family.
-- `generation` answers for rotated rows after the purge has deleted them: any
-- presented generation below it was rotated away, so replaying it is reuse.
CREATE TABLE auth.sessions (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            text        NOT NULL
        CONSTRAINT sessions_user_id_length CHECK (length(user_id) BETWEEN 1 AND 256),
    created_at         timestamptz NOT NULL,
    generation         integer     NOT NULL DEFAULT 0
        CONSTRAINT sessions_generation_nonnegative CHECK (generation >= 0),
    refresh_expires_at timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoke_reason      text,
    CONSTRAINT sessions_revoke_reason_valid
        CHECK (revoke_reason IN ('logout', 'admin', 'reuse_detected')),
    CONSTRAINT sessions_revoked_at_and_reason_together
        CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);

-- Lists and revokes a user's sessions (revoke_user_sessions, list_sessions).
CREATE INDEX sessions_user_id_idx ON auth.sessions (user_id);

-- auth.refresh_tokens: one row per issued token; only its SHA-256 is stored.
CREATE TABLE auth.refresh_tokens (
    session_id    uuid        NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    generation    integer     NOT NULL
        CONSTRAINT refresh_tokens_generation_nonnegative CHECK (generation >= 0),
    token_hash    bytea       NOT NULL
        CONSTRAINT refresh_tokens_token_hash_length CHECK (octet_length(token_hash) BETWEEN 1 AND 64),
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text,
    PRIMARY KEY (session_id, generation),
    CONSTRAINT refresh_tokens_revoke_reason_valid
        CHECK (revoke_reason IN ('rotated', 'logout', 'admin', 'reuse_detected')),
    CONSTRAINT refresh_tokens_revoked_at_and_reason_together
        CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);
