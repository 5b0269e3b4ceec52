-- V7 owner_locks
-- Locks no role but the owner can take. Advisory locks are one namespace per
-- database: any role may take any key, and pg_locks shows every key to every
-- role. Through them the monitoring role stopped every cleanup run (it held
-- the run's key, and each run recorded 'skipped'), and pg_locks told anyone
-- which user was logging in (the per-user key was hashtext(user id)). Row
-- locks on tables only the owner role may touch have neither flaw: taking
-- one needs UPDATE on the table, and pg_locks shows a row lock only while
-- someone waits for it, as a page and offset. The routines that take them
-- are in sql/00_locks.sql.

-- auth.locks: one row per lock. 'cleanup run' is a lease, since a run
-- commits batch by batch and row locks end with each transaction: it names
-- the backend running (holder_pid, and its start, so that a later backend
-- that reuses the pid is not mistaken for it); the others are locked FOR
-- UPDATE for the rest of the taker's transaction.
CREATE TABLE auth.locks (
    name           text PRIMARY KEY,
    holder_pid     integer,
    holder_started timestamptz
);
INSERT INTO auth.locks (name) VALUES ('cleanup run'), ('purge'), ('exact count');

-- auth.user_locks: a row per user who has logged in, locked by issue_token
-- (KEY SHARE) and revoke_user_sessions (UPDATE) for the rest of their
-- transaction, so that a login concurrent with "sign out everywhere" is
-- either seen and revoked by it or issued after it. A row lock takes no slot
-- of the shared lock table: a transaction that issues tokens for tens of
-- thousands of users (a bulk import) holds as many row locks as it likes.
CREATE TABLE auth.user_locks (
    user_id text PRIMARY KEY
);

-- Due rows a run left because another transaction held them (a batch
-- deletes the rest and leaves those to a later run).
ALTER TABLE auth.cleanup_runs ADD COLUMN rows_locked bigint NOT NULL DEFAULT 0;
