-- V3 smaller_default_batch
-- The default batch_size goes from 50,000 to 10,000 rows. Measured with
-- `token-janitor bench --rows 3000000 --batch-size N` (2.7M due rows, 300
-- rotations/s, 2 cores) once a run stopped re-planning the kinds it had
-- drained, which had added milliseconds to every batch whatever its size:
-- the rotations' p99 during the purge was 1.1-1.9x idle with 10,000-row
-- batches (eight runs), 1.7-1.8x with 15,000, 1.8-2.1x with 20,000 and
-- 1.9-2.9x with 50,000 (four runs), at 0.62-0.90x the speed of one DELETE
-- with 10,000 and 0.76-0.94x with 50,000. Smaller batches commit, and flush
-- their own WAL, every ~6 ms rather than every ~30 ms: the likely reason
-- rotations committing meanwhile wait less.
ALTER TABLE auth.cleanup_policy ALTER COLUMN batch_size SET DEFAULT 10000;

-- An install still on the old default moves to the new one; any other value
-- was chosen by hand and stays.
UPDATE auth.cleanup_policy SET batch_size = 10000 WHERE batch_size = 50000;
