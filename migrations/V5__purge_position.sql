-- V5 purge_position
-- auth.purge_position: where a purge batch of one kind ends and the next
-- starts, as the full key of its purge index (sql/indexes.sql): the kind's
-- timestamp, then the primary key. With the primary key in the position,
-- rows that share one timestamp (a mass revocation, revoke_user_sessions in
-- one transaction, a bulk import) split between batches inside one index
-- range scan, where a timestamp alone made the purge delete them one
-- primary-key lookup at a time (measured: 0.07x the speed of one DELETE on a
-- table whose 900k due rows share nine timestamps).
CREATE TYPE auth.purge_position AS (
    key        timestamptz,
    session_id uuid,
    generation integer
);

-- auth.cleanup_policy.pace: whether a run paces itself to the token traffic
-- it sees between batches (auth.run_pace). Off by default. Measured with
-- scripts/pgbench-rotate.sh (2.7M due rows, 300 rotations/s, 2 cores): on a
-- machine busy with other work the rotations' p99 during the purge was
-- 35.7 ms paced against 86.8 ms unpaced; on a quiet one pacing bought nothing
-- (2.17x and 1.97x idle against 1.68x and 2.02x) and the purge took 1.5-2.4x
-- as long while the traffic ran.
ALTER TABLE auth.cleanup_policy
    ADD COLUMN pace boolean NOT NULL DEFAULT false;
