-- Advisory locks: every advisory lock token-janitor takes, by name, in the
-- one place the SQL (auth._lock_key) and the Rust code (src/locks.rs reads
-- this file when it is compiled) share. Re-applied on every migrate.
--
-- A lock's key is its four-letter tag read as a big-endian integer ('tjcl' =
-- 0x746a636c = 1953129324), so `to_hex(objid)` in pg_locks spells the tag
-- back. Lock order and holders: docs/design.md §7.

-- auth._lock_key: the advisory lock key of lock p_name; an unknown name is
-- an error. IMMUTABLE with a constant name, so the planner computes it once
-- per plan, not per call.
CREATE OR REPLACE FUNCTION auth._lock_key(p_name text)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tag text;
BEGIN
    v_tag := CASE p_name
        -- one deploy at a time (session lock, polled by token-janitor migrate)
        WHEN 'migrate' THEN 'tjmg'
        -- one cleanup run at a time (session lock, tried by run_token_cleanup)
        WHEN 'cleanup run' THEN 'tjcl'
        -- purges take turns, one transaction at a time (transaction lock)
        WHEN 'purge' THEN 'tjcm'
        -- a user's logins against "sign out everywhere" (transaction lock,
        -- second key hashtext(user id))
        WHEN 'user' THEN 'tjus'
        -- exact full-table counts one at a time (transaction lock, tried)
        WHEN 'exact count' THEN 'tjob'
    END;
    IF v_tag IS NULL THEN
        RAISE EXCEPTION 'no advisory lock named %', quote_literal(p_name);
    END IF;
    RETURN ('x' || encode(convert_to(v_tag, 'SQL_ASCII'), 'hex'))::bit(32)::integer;
END
$$;
