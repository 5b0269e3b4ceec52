-- V7 larger_default_batch
-- The default batch_size goes from 10,000 to 25,000 rows, and with pace on
-- a run's batches under traffic take a twentieth of it (auth._run_pace), so
-- at the defaults they stay at the 1,250 rows the pace was measured with.
-- V3 chose 10,000 for the rotations' p99 under load, before a run paced
-- itself; now pace keeps batches small while the table has traffic, and a
-- run alone pays for every batch (its bounds, plans, run record and COMMIT:
-- 1-3 ms each here). Measured with psql on identical copies of one table
-- (1M rows, 900k due in time order, 2 cores, alternating): a run took
-- 1.03-1.19 s with 10,000 against 0.96-0.97 s with 25,000 (medians of
-- 5-6 runs, 0.61x and 0.75x one DELETE in the same rounds).
ALTER TABLE auth.cleanup_policy ALTER COLUMN batch_size SET DEFAULT 25000;

-- An install still on the old default moves to the new one; any other value
-- was chosen by hand and stays.
UPDATE auth.cleanup_policy SET batch_size = 25000 WHERE batch_size = 10000;
