-- Token lifecycle: issue, rotate (with reuse detection), revoke, list.
-- Re-applied on every migrate. Each function is SECURITY DEFINER so that the
-- application role needs EXECUTE only, never a privilege on the tables; each
-- pins search_path so a schema on the caller's path cannot shadow anything.

-- auth.check_token_hash: raises a clear error for a hash argument that cannot
-- be a SHA-256 digest (NULL, empty or oversized) before anything is written.
CREATE OR REPLACE FUNCTION auth.check_token_hash(p_name text, p_hash bytea)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_hash IS NULL OR octet_length(p_hash) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION '% must be a SHA-256 digest (32 bytes), got %', p_name,
            coalesce(octet_length(p_hash)::text || ' bytes', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth.check_ttl: a token lifetime must be positive.
CREATE OR REPLACE FUNCTION auth.check_ttl(p_ttl interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_ttl IS NULL OR p_ttl <= interval '0' THEN
        RAISE EXCEPTION 'p_ttl must be a positive interval, got %', coalesce(p_ttl::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth.issue_token: starts a new session (token family) at generation 0.
-- Inserts one session row and one token row.
CREATE OR REPLACE FUNCTION auth.issue_token(
    p_user_id    text,
    p_token_hash bytea,
    p_ttl        interval,
    p_now        timestamptz DEFAULT now()
)
RETURNS TABLE (session_id uuid, generation integer, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_session uuid;
    v_expires timestamptz;
BEGIN
    IF p_user_id IS NULL OR length(p_user_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'p_user_id must be 1 to 256 characters, got %',
            coalesce(length(p_user_id)::text || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM auth.check_token_hash('p_token_hash', p_token_hash);
    PERFORM auth.check_ttl(p_ttl);
    v_expires := v_now + p_ttl;

    INSERT INTO auth.sessions AS s (user_id, created_at, generation, refresh_expires_at)
    VALUES (p_user_id, v_now, 0, v_expires)
    RETURNING s.id INTO v_session;

    INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at)
    VALUES (v_session, 0, p_token_hash, v_now, v_expires);

    RETURN QUERY SELECT v_session, 0, v_expires;
END
$$;

-- auth.rotate_token: exchanges a live token for the next generation.
-- Locks the session row (FOR NO KEY UPDATE), which serialises concurrent
-- rotations of one family: the loser sees the advanced generation and is
-- treated as a replay. Outcomes, checked in this order:
--   unknown        no such session, or a generation newer than the session's
--   invalid        the token row exists and its hash differs (nothing changes)
--   reuse_detected the generation is older than the session's (its row may
--                  already be purged) or its row was rotated: the session and
--                  all its tokens are revoked 'reuse_detected'
--   revoked        the token or its session is revoked (nothing changes)
--   expired        the token or its session is expired (nothing changes)
--   rotated        the token is revoked 'rotated', generation+1 is issued
CREATE OR REPLACE FUNCTION auth.rotate_token(
    p_session_id     uuid,
    p_generation     integer,
    p_token_hash     bytea,
    p_new_token_hash bytea,
    p_ttl            interval,
    p_now            timestamptz DEFAULT now()
)
RETURNS TABLE (outcome text, generation integer, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_session auth.sessions%ROWTYPE;
    v_token   auth.refresh_tokens%ROWTYPE;
    v_expires timestamptz;
BEGIN
    PERFORM auth.check_token_hash('p_token_hash', p_token_hash);
    PERFORM auth.check_token_hash('p_new_token_hash', p_new_token_hash);
    PERFORM auth.check_ttl(p_ttl);

    IF p_session_id IS NULL OR p_generation IS NULL OR p_generation < 0 THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    SELECT * INTO v_session FROM auth.sessions s WHERE s.id = p_session_id FOR NO KEY UPDATE;
    IF NOT FOUND OR p_generation > v_session.generation THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    SELECT * INTO v_token FROM auth.refresh_tokens t
    WHERE t.session_id = p_session_id AND t.generation = p_generation;
    IF FOUND AND v_token.token_hash <> p_token_hash THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    IF p_generation < v_session.generation OR v_token.revoke_reason = 'rotated' THEN
        UPDATE auth.sessions s SET revoked_at = v_now, revoke_reason = 'reuse_detected'
        WHERE s.id = p_session_id AND s.revoked_at IS NULL;
        UPDATE auth.refresh_tokens t SET revoked_at = v_now, revoke_reason = 'reuse_detected'
        WHERE t.session_id = p_session_id AND t.revoked_at IS NULL;
        RETURN QUERY SELECT 'reuse_detected'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    IF v_session.revoked_at IS NOT NULL OR v_token.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    -- The current generation's row is missing only once the purge deleted it,
    -- which it does only after the token expired.
    IF v_token.session_id IS NULL OR v_token.expires_at < v_now
       OR v_session.refresh_expires_at < v_now THEN
        RETURN QUERY SELECT 'expired'::text, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;

    v_expires := v_now + p_ttl;
    UPDATE auth.refresh_tokens t SET revoked_at = v_now, revoke_reason = 'rotated'
    WHERE t.session_id = p_session_id AND t.generation = p_generation;
    INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at)
    VALUES (p_session_id, p_generation + 1, p_new_token_hash, v_now, v_expires);
    UPDATE auth.sessions s SET generation = p_generation + 1, refresh_expires_at = v_expires
    WHERE s.id = p_session_id;

    RETURN QUERY SELECT 'rotated'::text, p_generation + 1, v_expires;
END
$$;

-- auth.check_revoke_reason: the reasons a caller may give for a revocation.
CREATE OR REPLACE FUNCTION auth.check_revoke_reason(p_reason text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_reason IS NULL OR p_reason NOT IN ('logout', 'admin', 'reuse_detected') THEN
        RAISE EXCEPTION 'p_reason must be one of logout, admin, reuse_detected, got %',
            coalesce(quote_literal(p_reason), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth.revoke_session: revokes a session and its unrevoked tokens; returns
-- how many tokens it revoked (0 when the session was already revoked).
-- Locks the session row, like rotate_token, so the two never interleave.
CREATE OR REPLACE FUNCTION auth.revoke_session(
    p_session_id uuid,
    p_reason     text DEFAULT 'logout',
    p_now        timestamptz DEFAULT now()
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_revoked integer;
BEGIN
    PERFORM auth.check_revoke_reason(p_reason);
    UPDATE auth.sessions s SET revoked_at = v_now, revoke_reason = p_reason
    WHERE s.id = p_session_id AND s.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    UPDATE auth.refresh_tokens t SET revoked_at = v_now, revoke_reason = p_reason
    WHERE t.session_id = p_session_id AND t.revoked_at IS NULL;
    GET DIAGNOSTICS v_revoked = ROW_COUNT;
    RETURN v_revoked;
END
$$;

-- auth.revoke_user_sessions: revokes every unrevoked session of a user and
-- their tokens; returns how many sessions it revoked. Locks the sessions in id
-- order so two concurrent calls for one user cannot deadlock.
CREATE OR REPLACE FUNCTION auth.revoke_user_sessions(
    p_user_id text,
    p_reason  text DEFAULT 'admin',
    p_now     timestamptz DEFAULT now()
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now      timestamptz := coalesce(p_now, now());
    v_sessions uuid[];
BEGIN
    PERFORM auth.check_revoke_reason(p_reason);
    SELECT array_agg(id ORDER BY id) INTO v_sessions FROM (
        SELECT s.id FROM auth.sessions s
        WHERE s.user_id = p_user_id AND s.revoked_at IS NULL
        ORDER BY s.id
        FOR NO KEY UPDATE
    ) locked;
    IF v_sessions IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE auth.sessions s SET revoked_at = v_now, revoke_reason = p_reason
    WHERE s.id = ANY (v_sessions);
    UPDATE auth.refresh_tokens t SET revoked_at = v_now, revoke_reason = p_reason
    WHERE t.session_id = ANY (v_sessions) AND t.revoked_at IS NULL;
    RETURN cardinality(v_sessions);
END
$$;

-- auth.list_sessions: a user's sessions, newest first, without token hashes.
CREATE OR REPLACE FUNCTION auth.list_sessions(p_user_id text)
RETURNS TABLE (
    session_id         uuid,
    created_at         timestamptz,
    generation         integer,
    refresh_expires_at timestamptz,
    revoked_at         timestamptz,
    revoke_reason      text
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.id, s.created_at, s.generation, s.refresh_expires_at, s.revoked_at, s.revoke_reason
    FROM auth.sessions s
    WHERE s.user_id = p_user_id
    ORDER BY s.created_at DESC, s.id
$$;
