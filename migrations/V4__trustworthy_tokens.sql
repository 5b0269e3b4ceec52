-- V4 trustworthy_tokens
-- What lets a token be proven genuine after its row is purged, the reuse
-- grace, the policy limits on lifetimes, and the record of security events
-- (README, "Trustworthy tokens").

-- Policy: reuse_grace, max_ttl and audit_retention (pinned names).
ALTER TABLE auth.cleanup_policy
    -- The immediate predecessor presented again this soon after its rotation
    -- (a lost response, two tabs) gets the same successor instead of
    -- revoking the family. 0 turns it off. Capped: a long grace is a long
    -- window in which a stolen predecessor quietly opens the live token.
    ADD COLUMN reuse_grace interval NOT NULL DEFAULT interval '10 seconds'
        CONSTRAINT reuse_grace_must_be_between_0_and_5_minutes
        CHECK (reuse_grace BETWEEN interval '0' AND interval '5 minutes'),
    -- The longest lifetime issue_token and rotate_token accept.
    ADD COLUMN max_ttl interval NOT NULL DEFAULT interval '1 year'
        CONSTRAINT max_ttl_must_be_between_1_second_and_10_years
        CHECK (max_ttl BETWEEN interval '1 second' AND interval '10 years'),
    -- How long auth.security_events rows are kept.
    ADD COLUMN audit_retention interval NOT NULL DEFAULT interval '90 days'
        CONSTRAINT audit_retention_must_be_positive CHECK (audit_retention > interval '0');

-- Each session's MAC key: the HMAC-SHA256 key's inner and outer padded
-- blocks (64 + 64 bytes), drawn when the session is issued. Tokens of format
-- rt2_ carry HMAC(key, session ‖ generation ‖ token_hash) truncated to 16
-- bytes, which proves a token genuine once its row is gone. NULL for sessions
-- issued before V4: the first rotation draws one. Only the owner reads it.
ALTER TABLE auth.sessions
    ADD COLUMN mac_key bytea
        CONSTRAINT sessions_mac_key_length CHECK (octet_length(mac_key) = 128);

-- The successor's secret, sealed by the client under a key only the holder
-- of the predecessor can derive, then wrapped by the database under the
-- short-lived key of auth.grace_keys whose id is its first 8 bytes: it lets the
-- predecessor, presented again within reuse_grace, receive this same token.
-- Cleared when this token is rotated or revoked; useless once its grace key
-- is deleted.
ALTER TABLE auth.refresh_tokens
    ADD COLUMN successor_seal bytea
        CONSTRAINT refresh_tokens_successor_seal_length CHECK (octet_length(successor_seal) = 40);

-- auth.grace_keys: one HMAC key (padded blocks) per slice of time a quarter
-- of reuse_grace long; seals made during the slice are wrapped under it. A
-- key is deleted once no seal wrapped under it can still be within its grace
-- (by the next rotation that needs a new key, or the next cleanup run), so a
-- copy of the database taken later opens no successor.
CREATE TABLE auth.grace_keys (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    starts_at timestamptz NOT NULL CONSTRAINT grace_keys_one_per_slice UNIQUE,
    mac_key   bytea       NOT NULL
        CONSTRAINT grace_keys_mac_key_length CHECK (octet_length(mac_key) = 128)
);

-- auth.security_events (pinned name): an append-only record of security
-- outcomes (today: every reuse_detected). No foreign key: it outlives the
-- session it describes. Purged by the cleanup run after audit_retention.
CREATE TABLE auth.security_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    session_id  uuid        NOT NULL,
    user_id     text        NOT NULL,
    generation  integer     NOT NULL,
    kind        text        NOT NULL
        CONSTRAINT security_events_kind_valid CHECK (kind IN ('reuse_detected'))
);

-- The cleanup run deletes events by age.
CREATE INDEX security_events_occurred_at_idx ON auth.security_events (occurred_at);

-- Append-only: a row is never changed, only deleted once past its retention.
CREATE FUNCTION auth.security_events_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'auth.security_events is append-only: rows are never updated'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER security_events_append_only
    BEFORE UPDATE ON auth.security_events
    FOR EACH ROW EXECUTE FUNCTION auth.security_events_append_only();

-- The run record counts security events deleted too.
ALTER TABLE auth.cleanup_runs
    ADD COLUMN security_events_deleted bigint NOT NULL DEFAULT 0;
