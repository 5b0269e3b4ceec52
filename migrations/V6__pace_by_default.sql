-- V6 pace_by_default
-- auth.cleanup_policy.pace is on by default, with a new meaning
-- (auth._run_pace): while other transactions use auth.refresh_tokens, and
-- until a run has seen none for a tenth of a second (a run starts that
-- way), its batches take an eighth of batch_size and, once it has seen
-- traffic, each waits as long as the one before took (at most a tenth of a
-- second); with nothing else on the table, whole batches and no wait. The
-- pace of V5 slept between whole batches, and bought nothing measurable.
-- Measured with
-- scripts/pgbench-rotate.sh --rows 1000000 (900k due, 300 rotations/s from
-- 2 pgbench clients, 2 cores), paced and unpaced purges alternating on
-- copies of one table: the rotations' p99 during the purge was 1.07x and
-- 1.24x idle paced against 1.22x and 1.54x unpaced (p50 1.84 ms, as idle,
-- against 2.00-2.43 ms), the purge 3.2-3.5 s against 0.85-1.03 s. Alone,
-- the first tenth of a second of small batches is what it costs.
ALTER TABLE auth.cleanup_policy ALTER COLUMN pace SET DEFAULT true;

-- Before this release off was the default and pace slept; the new pace costs
-- a run alone only its first tenth of a second of small batches, so every
-- install takes it.
UPDATE auth.cleanup_policy SET pace = true WHERE NOT pace;
