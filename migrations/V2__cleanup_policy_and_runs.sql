-- V2 cleanup_policy_and_runs
-- The purge's settings (one row) and its run history. The purge's indexes are
-- not here: they are built CONCURRENTLY by migrate (sql/indexes.sql), outside
-- refinery's transaction, so a deploy never blocks token writes.

-- auth.cleanup_policy: exactly one row. Each CHECK is named after its column
-- and its rule, so a refused UPDATE says which setting is wrong and why.
CREATE TABLE auth.cleanup_policy (
    singleton         boolean  NOT NULL DEFAULT true
        CONSTRAINT cleanup_policy_has_exactly_one_row PRIMARY KEY
        CONSTRAINT cleanup_policy_singleton_must_be_true CHECK (singleton),
    expired_retention interval NOT NULL DEFAULT interval '1 day'
        CONSTRAINT expired_retention_must_not_be_negative CHECK (expired_retention >= interval '0'),
    revoked_retention interval NOT NULL DEFAULT interval '7 days'
        CONSTRAINT revoked_retention_must_not_be_negative CHECK (revoked_retention >= interval '0'),
    rotated_retention interval NOT NULL DEFAULT interval '1 hour'
        CONSTRAINT rotated_retention_must_not_be_negative CHECK (rotated_retention >= interval '0'),
    -- Measured with token-janitor bench: 50k-row batches purge at close to
    -- the speed of one DELETE and disturb concurrent rotations less than
    -- smaller ones, which add commits and stretch the purge out.
    batch_size        integer  NOT NULL DEFAULT 50000
        CONSTRAINT batch_size_must_be_between_1_and_100000 CHECK (batch_size BETWEEN 1 AND 100000),
    -- Well under the default schedule's 5 minutes, so runs never queue up.
    max_runtime       interval NOT NULL DEFAULT interval '2 minutes'
        CONSTRAINT max_runtime_must_be_positive CHECK (max_runtime > interval '0'),
    history_retention interval NOT NULL DEFAULT interval '14 days'
        CONSTRAINT history_retention_must_be_positive CHECK (history_retention > interval '0')
);

INSERT INTO auth.cleanup_policy DEFAULT VALUES;

-- The purge reads its settings from the one row: deleting it is refused.
CREATE FUNCTION auth.cleanup_policy_keep_row()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'auth.cleanup_policy must keep its one row: UPDATE the settings instead of deleting them'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER cleanup_policy_keep_row
    BEFORE DELETE OR TRUNCATE ON auth.cleanup_policy
    FOR EACH STATEMENT EXECUTE FUNCTION auth.cleanup_policy_keep_row();

-- auth.cleanup_runs: one row per CALL auth.run_token_cleanup(). A row left
-- 'running' belongs to a run that was killed; the next run marks it 'failed'.
CREATE TABLE auth.cleanup_runs (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    status           text        NOT NULL
        CONSTRAINT cleanup_runs_status_valid
        CHECK (status IN ('running', 'ok', 'partial', 'skipped', 'failed')),
    expired_deleted  bigint      NOT NULL DEFAULT 0,
    revoked_deleted  bigint      NOT NULL DEFAULT 0,
    rotated_deleted  bigint      NOT NULL DEFAULT 0,
    sessions_deleted bigint      NOT NULL DEFAULT 0,
    batches          integer     NOT NULL DEFAULT 0,
    error            text,
    backend_pid      integer     NOT NULL DEFAULT pg_backend_pid()
);

-- History pruning and "last run" lookups go by start time.
CREATE INDEX cleanup_runs_started_at_idx ON auth.cleanup_runs (started_at);

-- Most rows of auth.refresh_tokens are deleted within hours of being written
-- (rotated tokens), and every rotation leaves a dead row version behind. The
-- default trigger (20% of the table dead) lets dead rows and index entries pile
-- up to millions on a large table before vacuum reclaims them; 2% keeps the
-- table and its indexes near their live size, and a small cost delay lets
-- vacuum keep up with a purge that deletes a large backlog.
ALTER TABLE auth.refresh_tokens SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
-- Each rotation also updates its session row: same reasoning.
ALTER TABLE auth.sessions SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05
);
