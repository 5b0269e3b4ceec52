-- Locks: every lock the cleanup and the lifecycle functions take, on rows of
-- tables only the owner role may touch (auth.locks and auth.user_locks,
-- migration V7): the application and monitoring roles can neither take nor
-- see them, so they cannot stop a run or hold up a login through them.
-- Re-applied on every migrate. Lock order and holders: docs/design.md §7.

-- auth._lock: locks lock p_name (a row of auth.locks) FOR UPDATE until the
-- caller's transaction ends, waiting for another holder; with p_try, returns
-- false at once instead of waiting. An unknown name is an error.
CREATE OR REPLACE FUNCTION auth._lock(p_name text, p_try boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM auth.locks l WHERE l.name = p_name) THEN
        RAISE EXCEPTION 'no lock named % in auth.locks: run token-janitor migrate to restore it',
            quote_literal(p_name);
    END IF;
    IF p_try THEN
        PERFORM 1 FROM auth.locks l WHERE l.name = p_name FOR UPDATE SKIP LOCKED;
        RETURN FOUND;
    END IF;
    PERFORM 1 FROM auth.locks l WHERE l.name = p_name FOR UPDATE;
    RETURN true;
END
$$;

-- auth._claim_run: takes the lease of the cleanup run for this backend,
-- unless a live backend holds it (its pid is running, and is the same
-- backend: its start time matches wherever this role may see it); returns
-- whether it took it. The lease outlives the transaction (auth._release_run
-- ends it); a backend that dies holding it (terminated, a crash) holds
-- nothing once it is gone. Locks: the lease's row, until the caller's
-- transaction ends (a second claim waits for that, milliseconds, then sees
-- the lease taken).
CREATE OR REPLACE FUNCTION auth._claim_run()
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lease auth.locks%ROWTYPE;
BEGIN
    PERFORM auth._lock('cleanup run');
    SELECT * INTO v_lease FROM auth.locks l WHERE l.name = 'cleanup run';
    IF v_lease.holder_pid IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_stat_activity a
        WHERE a.pid = v_lease.holder_pid
          AND (a.backend_start IS NULL OR a.backend_start = v_lease.holder_started)) THEN
        RETURN false;
    END IF;
    UPDATE auth.locks l
    SET holder_pid = pg_backend_pid(),
        holder_started = (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid())
    WHERE l.name = 'cleanup run';
    RETURN true;
END
$$;

-- auth._release_run: ends this backend's lease of the cleanup run.
CREATE OR REPLACE FUNCTION auth._release_run()
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE auth.locks l SET holder_pid = NULL, holder_started = NULL
    WHERE l.name = 'cleanup run' AND l.holder_pid = pg_backend_pid();
$$;

-- auth._lock_user: serialises a user's logins against "sign out everywhere".
-- issue_token takes it shared (KEY SHARE) and revoke_user_sessions
-- exclusive (UPDATE), both for the rest of the transaction, so a session
-- issued concurrently with revoke_user_sessions is either seen and revoked
-- by it or issued after it commits. Lock: the user's row of
-- auth.user_locks, created on first use; one whose row a concurrent
-- transaction deleted is created again, so a lock is always held on return.
CREATE OR REPLACE FUNCTION auth._lock_user(p_user_id text, p_exclusive boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    LOOP
        INSERT INTO auth.user_locks AS u (user_id) VALUES (p_user_id) ON CONFLICT (user_id) DO NOTHING;
        IF p_exclusive THEN
            PERFORM 1 FROM auth.user_locks u WHERE u.user_id = p_user_id FOR UPDATE;
        ELSE
            PERFORM 1 FROM auth.user_locks u WHERE u.user_id = p_user_id FOR KEY SHARE;
        END IF;
        EXIT WHEN FOUND;
    END LOOP;
END
$$;

-- The lock rows (migration V7 inserts them; this puts back any deleted
-- since, as auth._lock's error says).
INSERT INTO auth.locks (name) VALUES ('cleanup run'), ('purge'), ('exact count')
ON CONFLICT (name) DO NOTHING;
