-- Token lifecycle: issue, rotate (with reuse detection and its grace),
-- revoke, list. Re-applied on every migrate.
--
-- The clock: each pinned clock-dependent function exists twice under one
-- name. The form with a required p_now is the clock-driven one, for tests,
-- verify's self-test and the demo: only the owner may execute it. The form
-- without p_now reads the server's clock_timestamp() once, when it is
-- called: not now() (the caller's transaction start) nor
-- statement_timestamp() (which a DO block or a slow subquery holds back),
-- so a caller cannot back-date a rotation, an expiry check or the end of
-- a reuse grace (docs/design.md, "The clock"). It is SECURITY DEFINER, so the
-- application role needs EXECUTE on it and nothing else, and it is the only
-- form the application role may execute: the application never chooses the
-- clock. A call with named arguments picks its form by whether it passes
-- p_now. Every function pins search_path, so nothing on the caller's path
-- can shadow what it calls. The hot path's helpers are PL/pgSQL, not SQL:
-- PL/pgSQL keeps its plans for the session, where a SQL function that
-- cannot be inlined (it pins search_path) is planned again in every
-- transaction that calls it (measured: 40-50 us a call).
--
-- Genuine or forged: a token's row holds the SHA-256 of its secret; tokens
-- of format rt2_ also carry an authenticator, HMAC-SHA256 under the
-- session's key (auth.sessions.mac_key) of session ‖ generation ‖
-- token_hash, truncated to 16 bytes. It proves a token genuine after the
-- purge deleted its row. Only the owner reads the key; whoever holds a copy
-- of it can forge authenticators (and so read 'reuse_detected', a forged
-- logout) but cannot mint a token, which needs a secret whose hash is stored.

-- auth._check_token_hash: raises a clear error for a hash argument that cannot
-- be a SHA-256 digest (NULL, empty or oversized) before anything is written.
CREATE OR REPLACE FUNCTION auth._check_token_hash(p_name text, p_hash bytea)
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

-- auth._check_optional_length: raises a clear error for an optional argument
-- (NULL allowed) that is not exactly p_length bytes.
CREATE OR REPLACE FUNCTION auth._check_optional_length(p_name text, p_value bytea, p_length integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NOT NULL AND octet_length(p_value) <> p_length THEN
        RAISE EXCEPTION '% must be NULL or % bytes, got % bytes', p_name, p_length, octet_length(p_value)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth._check_ttl: a token lifetime starting at p_now must have no negative
-- field and end after p_now and no later than p_now + p_max_ttl (which also
-- keeps every expiry finite; NULL: the policy row is missing). Compared as
-- times, not as intervals: interval comparison counts a month as 30 days,
-- so '3500000 mons -104999640 days' would compare as 360 days and end in
-- the year 6214.
CREATE OR REPLACE FUNCTION auth._check_ttl(p_ttl interval, p_max_ttl interval, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_months integer;
    v_days   integer;
BEGIN
    IF p_max_ttl IS NULL THEN
        RAISE EXCEPTION 'auth.cleanup_policy has no row: run token-janitor migrate to restore it';
    END IF;
    IF p_ttl IS NULL THEN
        RAISE EXCEPTION 'p_ttl must be a positive lifetime of at most max_ttl (%), got NULL', p_max_ttl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_ttl is a setting of auth.cleanup_policy';
    END IF;
    v_months := extract(year FROM p_ttl)::integer * 12 + extract(month FROM p_ttl)::integer;
    v_days := extract(day FROM p_ttl)::integer;
    IF v_months < 0 OR v_days < 0 OR p_ttl - make_interval(months => v_months, days => v_days) < interval '0' THEN
        RAISE EXCEPTION 'p_ttl must have no negative field and be a positive lifetime of at most max_ttl (%), got % (months %, days %, time %)',
            p_max_ttl, p_ttl, v_months, v_days, p_ttl - make_interval(months => v_months, days => v_days)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_ttl is a setting of auth.cleanup_policy';
    END IF;
    -- With no negative field, an interval over twice max_ttl (a month is
    -- 28 to 31 days, a day 23 to 25 hours) ends after p_now + p_max_ttl;
    -- refusing it first keeps p_now + p_ttl from overflowing.
    IF p_ttl > p_max_ttl * 2 OR p_now + p_ttl > p_now + p_max_ttl THEN
        RAISE EXCEPTION 'p_ttl must end at most max_ttl (%) after now, by %; got %',
            p_max_ttl, p_now + p_max_ttl, p_ttl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_ttl is a setting of auth.cleanup_policy';
    END IF;
    IF p_now + p_ttl <= p_now THEN
        RAISE EXCEPTION 'p_ttl must be a positive lifetime of at most max_ttl (%), got %', p_max_ttl, p_ttl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_ttl is a setting of auth.cleanup_policy';
    END IF;
END
$$;

-- auth._check_now: a driven clock must be a finite time.
CREATE OR REPLACE FUNCTION auth._check_now(p_now timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_now IS NULL OR NOT isfinite(p_now) THEN
        RAISE EXCEPTION 'p_now must be a finite time, got %', coalesce(p_now::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth._check_binding: raises a clear error for a binding argument that
-- cannot be one (NULL is allowed: no binding): a client id of 1 to 256
-- characters; a DPoP key's JWK thumbprint (RFC 7638: base64url without
-- padding of a SHA-256 digest, 43 characters of A-Z a-z 0-9 - _).
CREATE OR REPLACE FUNCTION auth._check_binding(p_client_id text, p_dpop_jkt text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_client_id IS NOT NULL AND length(p_client_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'p_client_id must be NULL or 1 to 256 characters, got % characters', length(p_client_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dpop_jkt IS NOT NULL AND p_dpop_jkt !~ '^[A-Za-z0-9_-]{43}$' THEN
        RAISE EXCEPTION 'p_dpop_jkt must be NULL or a JWK SHA-256 thumbprint (RFC 7638): 43 base64url characters, got % characters%',
            length(p_dpop_jkt),
            CASE WHEN length(p_dpop_jkt) = 43 THEN ' with one outside A-Z a-z 0-9 - _' ELSE '' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- auth._mac_pads: an HMAC-SHA256 key (at most 64 bytes) as its inner and
-- outer padded blocks, (key ‖ zeros) XOR 0x36… and XOR 0x5c…, 128 bytes.
-- Kept in this form so each MAC costs two sha256() calls.
CREATE OR REPLACE FUNCTION auth._mac_pads(p_key bytea)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_block bytea;
BEGIN
    IF octet_length(p_key) > 64 THEN
        RAISE EXCEPTION 'an HMAC-SHA256 key longer than 64 bytes must be hashed first';
    END IF;
    v_block := p_key || decode(repeat('00', 64 - octet_length(p_key)), 'hex');
    RETURN auth._xor(v_block, decode(repeat('36', 64), 'hex'))
        || auth._xor(v_block, decode(repeat('5c', 64), 'hex'));
END
$$;

-- auth._new_mac_key: a fresh random MAC key as its padded blocks. 32 bytes
-- from two gen_random_uuid() (the server's strong random source; 244 random
-- bits, the version bits being fixed).
CREATE OR REPLACE FUNCTION auth._new_mac_key()
RETURNS bytea
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN auth._mac_pads(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
END
$$;

-- auth._mac: HMAC-SHA256 of p_message under the key whose padded blocks are
-- p_pads (auth._mac_pads); 32 bytes.
CREATE OR REPLACE FUNCTION auth._mac(p_pads bytea, p_message bytea)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN sha256(substr(p_pads, 65, 64) || sha256(substr(p_pads, 1, 64) || p_message));
END
$$;

-- auth._authenticator: what a genuine rt2_ token of (session, generation)
-- with this token hash carries: the first 16 bytes of HMAC(session key,
-- session id ‖ generation (4 bytes, big-endian) ‖ token_hash).
CREATE OR REPLACE FUNCTION auth._authenticator(
    p_mac_key    bytea,
    p_session_id uuid,
    p_generation integer,
    p_token_hash bytea
)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN substr(auth._mac(p_mac_key, uuid_send(p_session_id) || int4send(p_generation) || p_token_hash), 1, 16);
END
$$;

-- auth._xor: bytewise XOR of two byte strings of one length.
CREATE OR REPLACE FUNCTION auth._xor(p_a bytea, p_b bytea)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN substr(varbit_send(('x' || encode(p_a, 'hex'))::varbit # ('x' || encode(p_b, 'hex'))::varbit), 5);
END
$$;

-- auth._prune_grace_keys: deletes the grace keys no seal can need any more
-- at p_now: a key's slice ends a quarter of reuse_grace after it starts, and
-- a seal made in it is within its grace for reuse_grace after that.
-- Row locks: the deleted keys, skipping any another transaction holds (the
-- next prune takes them): prunes by rotations at different clocks and by a
-- cleanup run, planned in different orders, could otherwise deadlock (seen
-- in make demo). Returns how many it deleted.
CREATE OR REPLACE FUNCTION auth._prune_grace_keys(p_now timestamptz, p_grace interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM auth.grace_keys k
    WHERE k.id IN (SELECT g.id FROM auth.grace_keys g
                   WHERE g.starts_at <= p_now - p_grace * 1.25
                   FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- auth._wrap_seal: the successor_seal to store for the token of
-- (session, generation) issued at p_now: the client's 32-byte seal XOR
-- HMAC(grace key of p_now's slice, session ‖ generation), after the key's id.
-- Creates the slice's key when it is the first, and then prunes old keys.
CREATE OR REPLACE FUNCTION auth._wrap_seal(
    p_seal       bytea,
    p_session_id uuid,
    p_generation integer,
    p_now        timestamptz,
    p_grace      interval
)
RETURNS bytea
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_start timestamptz := date_bin(p_grace / 4, p_now, timestamptz 'epoch');
    v_key   auth.grace_keys%ROWTYPE;
BEGIN
    SELECT * INTO v_key FROM auth.grace_keys k WHERE k.starts_at = v_start;
    IF NOT FOUND THEN
        -- A concurrent rotation may insert the same slice first: then this
        -- waits for it and reads its key.
        INSERT INTO auth.grace_keys (starts_at, mac_key) VALUES (v_start, auth._new_mac_key())
        ON CONFLICT (starts_at) DO NOTHING;
        SELECT * INTO v_key FROM auth.grace_keys k WHERE k.starts_at = v_start;
        PERFORM auth._prune_grace_keys(p_now, p_grace);
    END IF;
    RETURN int8send(v_key.id)
        || auth._xor(p_seal, auth._mac(v_key.mac_key, uuid_send(p_session_id) || int4send(p_generation)));
END
$$;

-- auth._unwrap_seal: the client's seal back from a stored successor_seal, or
-- NULL once its grace key is gone.
CREATE OR REPLACE FUNCTION auth._unwrap_seal(p_wrapped bytea, p_session_id uuid, p_generation integer)
RETURNS bytea
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT auth._xor(substr(p_wrapped, 9), auth._mac(k.mac_key, uuid_send(p_session_id) || int4send(p_generation)))
            FROM auth.grace_keys k
            WHERE k.id = ('x' || encode(substr(p_wrapped, 1, 8), 'hex'))::bit(64)::bigint);
END
$$;

-- auth._record_security_event: records a security event of a family at
-- p_now: the first of its kind as a row of auth.security_events, each later
-- one while that row is kept as a repeat on it (count + 1, last_seen_at),
-- so a replay in a loop adds no rows. The caller holds the session row
-- locked (rotate_token: FOR NO KEY UPDATE), so two events of one family
-- never both insert. Row locks: the family's event, and the kind's row of
-- auth.security_event_totals (its trigger), until commit.
CREATE OR REPLACE FUNCTION auth._record_security_event(
    p_now        timestamptz,
    p_session_id uuid,
    p_user_id    text,
    p_generation integer,
    p_kind       text
)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE auth.security_events e
    SET count = e.count + 1, last_seen_at = greatest(e.last_seen_at, p_now)
    WHERE e.session_id = p_session_id AND e.kind = p_kind;
    IF NOT FOUND THEN
        INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind, last_seen_at)
        VALUES (p_now, p_session_id, p_user_id, p_generation, p_kind, p_now);
    END IF;
END
$$;

-- auth.issue_token (clock-driven form, owner only): starts a new session
-- (token family) at generation 0, expiring at p_now + p_ttl (at most
-- max_session_lifetime after p_now), with a fresh MAC key; returns the
-- authenticator of the first token. Optionally bound to a client
-- (p_client_id) and a DPoP key (p_dpop_jkt, its RFC 7638 thumbprint), which
-- every rotation must then present, and labelled for the device list
-- (p_device_label, 1 to 100 characters). Inserts one session row and one
-- token row; takes the user's lock shared (auth._lock_user).
CREATE OR REPLACE FUNCTION auth.issue_token(
    p_user_id      text,
    p_token_hash   bytea,
    p_ttl          interval,
    p_now          timestamptz,
    p_client_id    text DEFAULT NULL,
    p_dpop_jkt     text DEFAULT NULL,
    p_device_label text DEFAULT NULL
)
RETURNS TABLE (session_id uuid, generation integer, expires_at timestamptz, authenticator bytea)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_session  uuid;
    v_key      bytea := auth._new_mac_key();
    v_expires  timestamptz;
    v_max_ttl  interval;
    v_lifetime interval;
    v_history  boolean;
BEGIN
    IF p_user_id IS NULL OR length(p_user_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'p_user_id must be 1 to 256 characters, got %',
            coalesce(length(p_user_id)::text || ' characters', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_device_label IS NOT NULL AND length(p_device_label) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'p_device_label must be NULL or 1 to 100 characters, got % characters',
            length(p_device_label)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM auth._check_binding(p_client_id, p_dpop_jkt);
    PERFORM auth._check_token_hash('p_token_hash', p_token_hash);
    PERFORM auth._check_now(p_now);
    SELECT p.max_ttl, p.max_session_lifetime, p.token_history INTO v_max_ttl, v_lifetime, v_history
    FROM auth.cleanup_policy p;
    PERFORM auth._check_ttl(p_ttl, v_max_ttl, p_now);
    PERFORM auth._lock_user(p_user_id, false);
    v_expires := least(p_now + p_ttl, p_now + v_lifetime);

    INSERT INTO auth.sessions AS s (user_id, created_at, generation, refresh_expires_at, expiry_floor, mac_key,
                                    client_id, dpop_jkt, device_label)
    VALUES (p_user_id, p_now, 0, v_expires, v_expires, v_key, p_client_id, p_dpop_jkt, p_device_label)
    RETURNING s.id INTO v_session;

    INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, rotates_in_place)
    VALUES (v_session, 0, p_token_hash, p_now, v_expires, NOT v_history);

    RETURN QUERY SELECT v_session, 0, v_expires, auth._authenticator(v_key, v_session, 0, p_token_hash);
END
$$;

-- auth.issue_token (server clock): the application's form.
-- SECURITY DEFINER: the application role has no privilege on the tables.
CREATE OR REPLACE FUNCTION auth.issue_token(
    p_user_id      text,
    p_token_hash   bytea,
    p_ttl          interval,
    p_client_id    text DEFAULT NULL,
    p_dpop_jkt     text DEFAULT NULL,
    p_device_label text DEFAULT NULL
)
RETURNS TABLE (session_id uuid, generation integer, expires_at timestamptz, authenticator bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM auth.issue_token(p_user_id => p_user_id, p_token_hash => p_token_hash,
                                                p_ttl => p_ttl, p_now => clock_timestamp(),
                                                p_client_id => p_client_id, p_dpop_jkt => p_dpop_jkt,
                                                p_device_label => p_device_label);
END
$$;

-- auth.rotate_token (clock-driven form, owner only): exchanges a live token
-- for the next generation. Locks the session row (FOR NO KEY UPDATE), which
-- serialises concurrent rotations of one family: the later one sees the
-- advanced generation. Outcomes, checked in this order:
--   unknown        no such session, or a generation newer than the session's
--   invalid        not provably genuine: the authenticator (when given) does
--                  not match, or the row exists and its hash differs, or the
--                  row is gone and there is no authenticator (an rt1_ token
--                  of a purged generation cannot be told from a forgery).
--                  Or presented by another client or key than the session
--                  is bound to (p_client_id, p_dpop_jkt). Nothing changes.
--   rotated        (grace) the immediate predecessor presented again within
--                  reuse_grace of its rotation while its successor is live:
--                  the same successor is returned (its sealed secret, which
--                  only the predecessor's holder can open); nothing changes
--   reuse_detected a genuine token of an older generation, or whose row was
--                  rotated: the session and all its tokens are revoked
--                  'reuse_detected' and auth.security_events records it
--   revoked        the token or its session is revoked (nothing changes)
--   expired        the token or its session is expired, or the session is
--                  max_session_lifetime old (nothing changes)
--   rotated        generation+1 is issued with p_new_token_hash, expiring
--                  at p_now + p_ttl but never after created_at +
--                  max_session_lifetime, and, when reuse_grace is on, with
--                  p_successor_seal (32 bytes) wrapped for the grace. With
--                  an authenticator, token_history off (the policy's
--                  default) and a row written so (rotates_in_place), it
--                  replaces the presented token's row in place (one row per
--                  session); otherwise (token_history on, an rt1_ token, a
--                  row from before V10) that row is revoked 'rotated' and a
--                  row is inserted for the successor
-- Both 'rotated' outcomes return the session's user_id, for an application
-- role that cannot read auth.sessions; every other outcome returns NULL in
-- generation, expires_at and user_id.
CREATE OR REPLACE FUNCTION auth.rotate_token(
    p_session_id       uuid,
    p_generation       integer,
    p_token_hash       bytea,
    p_new_token_hash   bytea,
    p_ttl              interval,
    p_now              timestamptz,
    p_authenticator    bytea DEFAULT NULL,
    p_successor_seal   bytea DEFAULT NULL,
    p_client_id        text DEFAULT NULL,
    p_dpop_jkt         text DEFAULT NULL
)
RETURNS TABLE (outcome text, generation integer, expires_at timestamptz, user_id text,
               authenticator bytea, successor_seal bytea)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_session  auth.sessions%ROWTYPE;
    v_token    auth.refresh_tokens%ROWTYPE;
    v_next     auth.refresh_tokens%ROWTYPE;
    v_grace    interval;
    v_max_ttl  interval;
    v_lifetime interval;
    v_history  boolean;
    v_retention interval;
    v_key      bytea;
    v_seal     bytea;
    v_expires  timestamptz;
BEGIN
    SELECT p.reuse_grace, p.max_ttl, p.max_session_lifetime, p.token_history, p.expired_retention
    INTO v_grace, v_max_ttl, v_lifetime, v_history, v_retention
    FROM auth.cleanup_policy p;
    PERFORM auth._check_token_hash('p_token_hash', p_token_hash);
    PERFORM auth._check_token_hash('p_new_token_hash', p_new_token_hash);
    PERFORM auth._check_now(p_now);
    PERFORM auth._check_ttl(p_ttl, v_max_ttl, p_now);
    PERFORM auth._check_optional_length('p_authenticator', p_authenticator, 16);
    PERFORM auth._check_optional_length('p_successor_seal', p_successor_seal, 32);
    PERFORM auth._check_binding(p_client_id, p_dpop_jkt);

    IF p_session_id IS NULL OR p_generation IS NULL OR p_generation < 0 THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    SELECT * INTO v_session FROM auth.sessions s WHERE s.id = p_session_id FOR NO KEY UPDATE;
    IF NOT FOUND OR p_generation > v_session.generation THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    SELECT * INTO v_token FROM auth.refresh_tokens t
    WHERE t.session_id = p_session_id AND t.generation = p_generation;
    -- The authenticators are compared through SHA-256 so that how long the
    -- comparison takes tells nothing about how many leading bytes matched.
    IF (p_authenticator IS NOT NULL
        AND (v_session.mac_key IS NULL
             OR sha256(auth._authenticator(v_session.mac_key, p_session_id, p_generation, p_token_hash))
                <> sha256(p_authenticator)))
       OR (FOUND AND v_token.token_hash <> p_token_hash)
       OR (NOT FOUND AND p_authenticator IS NULL) THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    -- A bound session answers only its client and key, before anything
    -- else: a genuine older token presented by another client or without
    -- the key reads 'invalid', not 'reuse_detected'. Binding exists so that
    -- a token alone is worth nothing; letting a copied token (a log, a
    -- backup) revoke the family would give its finder the power to log the
    -- user out, and proves nothing about the key holder having been robbed.
    -- An unbound session (issued without binding, or before V9) stays
    -- unbound: what a rotation presents then is not checked.
    IF (v_session.client_id IS NOT NULL AND p_client_id IS DISTINCT FROM v_session.client_id)
       OR (v_session.dpop_jkt IS NOT NULL AND p_dpop_jkt IS DISTINCT FROM v_session.dpop_jkt) THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    IF p_generation < v_session.generation OR v_token.revoke_reason = 'rotated' THEN
        IF p_generation = v_session.generation - 1 AND v_grace > interval '0'
           AND v_session.revoked_at IS NULL THEN
            SELECT * INTO v_next FROM auth.refresh_tokens t
            WHERE t.session_id = p_session_id AND t.generation = p_generation + 1;
            IF FOUND AND v_next.revoked_at IS NULL AND p_now < v_next.issued_at + v_grace
               AND p_now <= v_next.expires_at THEN
                v_seal := auth._unwrap_seal(v_next.successor_seal, p_session_id, v_next.generation);
            END IF;
            IF v_seal IS NOT NULL THEN
                RETURN QUERY SELECT 'rotated'::text, v_next.generation, v_next.expires_at, v_session.user_id,
                    auth._authenticator(v_session.mac_key, p_session_id, v_next.generation, v_next.token_hash),
                    v_seal;
                RETURN;
            END IF;
        END IF;
        UPDATE auth.sessions s SET revoked_at = p_now, revoke_reason = 'reuse_detected'
        WHERE s.id = p_session_id AND s.revoked_at IS NULL;
        IF FOUND THEN
            PERFORM auth._notify_revoked(p_session_id);
        END IF;
        UPDATE auth.refresh_tokens t
        SET revoked_at = p_now, revoke_reason = 'reuse_detected', successor_seal = NULL
        WHERE t.session_id = p_session_id AND t.revoked_at IS NULL;
        PERFORM auth._record_security_event(p_now, p_session_id, v_session.user_id, p_generation,
                                            'reuse_detected');
        RETURN QUERY SELECT 'reuse_detected'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    IF v_session.revoked_at IS NOT NULL OR v_token.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    -- The current generation's row is missing only once the purge deleted it,
    -- which it does only after the token expired.
    -- A session older than max_session_lifetime is over, also one issued
    -- before the policy was set, whose token may still be live.
    IF v_token.session_id IS NULL OR v_token.expires_at < p_now
       OR v_session.refresh_expires_at < p_now
       OR p_now >= v_session.created_at + v_lifetime THEN
        RETURN QUERY SELECT 'expired'::text, NULL::integer, NULL::timestamptz, NULL::text, NULL::bytea, NULL::bytea;
        RETURN;
    END IF;

    v_expires := least(p_now + p_ttl, v_session.created_at + v_lifetime);
    -- Sessions issued before V4 draw their key at their first rotation.
    v_key := coalesce(v_session.mac_key, auth._new_mac_key());
    IF v_grace > interval '0' AND p_successor_seal IS NOT NULL THEN
        v_seal := auth._wrap_seal(p_successor_seal, p_session_id, p_generation + 1, p_now, v_grace);
    END IF;
    IF v_history OR p_authenticator IS NULL OR NOT v_token.rotates_in_place THEN
        -- The row stays as a predecessor's, no longer its session's current
        -- token: the expired kind's index takes it again (indexes.sql).
        UPDATE auth.refresh_tokens t
        SET revoked_at = p_now, revoke_reason = 'rotated', successor_seal = NULL, rotates_in_place = false
        WHERE t.session_id = p_session_id AND t.generation = p_generation;
        INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, successor_seal,
                                         rotates_in_place)
        VALUES (p_session_id, p_generation + 1, p_new_token_hash, p_now, v_expires, v_seal, NOT v_history);
    ELSE
        -- In place: the presented token's authenticator proved it genuine,
        -- and proves it again if it is replayed, so its row decides nothing
        -- and becomes its successor's.
        UPDATE auth.refresh_tokens t
        SET generation = p_generation + 1, token_hash = p_new_token_hash, issued_at = p_now,
            expires_at = v_expires, successor_seal = v_seal
        WHERE t.session_id = p_session_id AND t.generation = p_generation;
        -- A purge at a later clock may have deleted the row (expired past
        -- expired_retention by that clock) after it was read above: the
        -- UPDATE then waited for that purge and found nothing. The token
        -- was live at this rotation's clock, so its successor gets a row of
        -- its own, as with token_history on; never 'rotated' with no row
        -- behind the new token.
        IF NOT FOUND THEN
            INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at,
                                             successor_seal, rotates_in_place)
            VALUES (p_session_id, p_generation + 1, p_new_token_hash, p_now, v_expires, v_seal, true);
        END IF;
    END IF;
    -- The floor (V12) moves only when the expiry has run half of
    -- expired_retention past it or fallen below it: otherwise no indexed
    -- column changes, and the row is updated on its page (HOT).
    UPDATE auth.sessions s
    SET generation = p_generation + 1, refresh_expires_at = v_expires, mac_key = v_key,
        expiry_floor = CASE WHEN s.expiry_floor > v_expires OR s.expiry_floor < v_expires - v_retention / 2
                            THEN v_expires ELSE s.expiry_floor END
    WHERE s.id = p_session_id;

    RETURN QUERY SELECT 'rotated'::text, p_generation + 1, v_expires, v_session.user_id,
        auth._authenticator(v_key, p_session_id, p_generation + 1, p_new_token_hash), NULL::bytea;
END
$$;

-- auth._lock_family: locks a session row (FOR NO KEY UPDATE, to the end of
-- the transaction; nothing when there is no such session) before a
-- server-clock form reads the clock: a call that waited for another
-- transaction on the family (which the caller may hold open past an expiry
-- or a grace) then carries the time it got the family, not the time it
-- began to wait. The clock-driven form takes the same lock again, at no cost.
CREATE OR REPLACE FUNCTION auth._lock_family(p_session_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM auth.sessions s WHERE s.id = p_session_id FOR NO KEY UPDATE;
END
$$;

-- auth.rotate_token (server clock): the application's form. The clock is
-- read once the family is locked (auth._lock_family).
-- SECURITY DEFINER: the application role has no privilege on the tables.
CREATE OR REPLACE FUNCTION auth.rotate_token(
    p_session_id       uuid,
    p_generation       integer,
    p_token_hash       bytea,
    p_new_token_hash   bytea,
    p_ttl              interval,
    p_authenticator    bytea DEFAULT NULL,
    p_successor_seal   bytea DEFAULT NULL,
    p_client_id        text DEFAULT NULL,
    p_dpop_jkt         text DEFAULT NULL
)
RETURNS TABLE (outcome text, generation integer, expires_at timestamptz, user_id text,
               authenticator bytea, successor_seal bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM auth._lock_family(p_session_id);
    RETURN QUERY SELECT * FROM auth.rotate_token(
        p_session_id => p_session_id, p_generation => p_generation, p_token_hash => p_token_hash,
        p_new_token_hash => p_new_token_hash, p_ttl => p_ttl, p_now => clock_timestamp(),
        p_authenticator => p_authenticator, p_successor_seal => p_successor_seal,
        p_client_id => p_client_id, p_dpop_jkt => p_dpop_jkt);
END
$$;

-- auth._notify_revoked: tells listeners on channel token_janitor_revocations
-- that a session was revoked, with its id and nothing else. pg_notify is
-- transactional: listeners receive it once the revoking transaction
-- commits, and never when it rolls back.
CREATE OR REPLACE FUNCTION auth._notify_revoked(p_session_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('token_janitor_revocations', p_session_id::text);
END
$$;

-- auth._check_revoke_reason: the reasons a caller may give for a revocation.
CREATE OR REPLACE FUNCTION auth._check_revoke_reason(p_reason text)
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

-- auth.revoke_session (clock-driven form, owner only): revokes a session and
-- its unrevoked tokens (their seals go with them); returns how many tokens it
-- revoked (0 when the session was already revoked). Locks the session row,
-- like rotate_token, so the two never interleave. Notifies listeners
-- (auth._notify_revoked) when it revoked the session.
CREATE OR REPLACE FUNCTION auth.revoke_session(
    p_session_id uuid,
    p_now        timestamptz,
    p_reason     text DEFAULT 'logout'
)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_revoked integer;
BEGIN
    PERFORM auth._check_revoke_reason(p_reason);
    PERFORM auth._check_now(p_now);
    UPDATE auth.sessions s SET revoked_at = p_now, revoke_reason = p_reason
    WHERE s.id = p_session_id AND s.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM auth._notify_revoked(p_session_id);
    UPDATE auth.refresh_tokens t SET revoked_at = p_now, revoke_reason = p_reason, successor_seal = NULL
    WHERE t.session_id = p_session_id AND t.revoked_at IS NULL;
    GET DIAGNOSTICS v_revoked = ROW_COUNT;
    RETURN v_revoked;
END
$$;

-- auth.revoke_session (server clock): the application's form. The clock is
-- read once the family is locked (auth._lock_family).
-- SECURITY DEFINER: the application role has no privilege on the tables.
CREATE OR REPLACE FUNCTION auth.revoke_session(
    p_session_id uuid,
    p_reason     text DEFAULT 'logout'
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM auth._lock_family(p_session_id);
    RETURN auth.revoke_session(p_session_id => p_session_id, p_now => clock_timestamp(), p_reason => p_reason);
END
$$;

-- auth.revoke_token (server clock): revocation by a presented token (RFC
-- 7009): revokes the token's whole family, as revoke_session does, only when
-- the token is genuine: a row of its session and generation is stored with
-- its hash, or, once no row is stored (rotated away in place, or purged),
-- p_authenticator is the one of an rt2_ token of that session, generation
-- and hash (as rotate_token checks it) and the session is not bound to a
-- client or key. A forged token (a known session id
-- with a wrong secret), or an rt1_ token whose row is gone, revokes nothing
-- and returns 0; an endpoint answers 200 either way (RFC 7009 §2.2), so the
-- caller learns nothing. revoke_session takes the caller's word for the
-- session id (a signed-in user ending a device of theirs); this one needs
-- the token itself, so a revocation endpoint anyone can call cannot sign a
-- user out from a session id.
-- SECURITY DEFINER: the application role has no privilege on the tables.
CREATE OR REPLACE FUNCTION auth.revoke_token(
    p_session_id    uuid,
    p_generation    integer,
    p_token_hash    bytea,
    p_reason        text DEFAULT 'logout',
    p_authenticator bytea DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stored  bytea;
    v_genuine boolean;
BEGIN
    PERFORM auth._check_token_hash('p_token_hash', p_token_hash);
    PERFORM auth._check_revoke_reason(p_reason);
    PERFORM auth._check_optional_length('p_authenticator', p_authenticator, 16);
    PERFORM auth._lock_family(p_session_id);
    SELECT t.token_hash INTO v_stored FROM auth.refresh_tokens t
    WHERE t.session_id = p_session_id AND t.generation = p_generation;
    IF FOUND THEN
        v_genuine := v_stored = p_token_hash;
    ELSE
        -- Not for a session bound to a client or key: there, as in
        -- rotate_token, a copied token alone must be worth nothing, and a
        -- rotated-away one found in a log is no proof of the holder.
        SELECT p_authenticator IS NOT NULL AND s.mac_key IS NOT NULL AND p_generation BETWEEN 0 AND s.generation
               AND s.client_id IS NULL AND s.dpop_jkt IS NULL
               AND sha256(auth._authenticator(s.mac_key, p_session_id, p_generation, p_token_hash))
                   = sha256(p_authenticator)
        INTO v_genuine
        FROM auth.sessions s WHERE s.id = p_session_id;
    END IF;
    IF v_genuine IS NOT TRUE THEN
        RETURN 0;
    END IF;
    RETURN auth.revoke_session(p_session_id => p_session_id, p_now => clock_timestamp(), p_reason => p_reason);
END
$$;

-- auth.revoke_user_sessions (clock-driven form, owner only): revokes every
-- unrevoked session of a user but p_except_session_id (NULL: none; "sign
-- out everywhere else" passes the caller's own) and their tokens; returns
-- how many sessions it revoked, and notifies listeners of each
-- (auth._notify_revoked). Takes the user's lock exclusive first
-- (auth._lock_user), so no login of this user can slip past it, then locks
-- the sessions in id order so two concurrent calls for one user cannot
-- deadlock.
CREATE OR REPLACE FUNCTION auth.revoke_user_sessions(
    p_user_id            text,
    p_now                timestamptz,
    p_reason             text DEFAULT 'admin',
    p_except_session_id  uuid DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sessions uuid[];
BEGIN
    PERFORM auth._check_revoke_reason(p_reason);
    PERFORM auth._check_now(p_now);
    PERFORM auth._lock_user(p_user_id, true);
    SELECT array_agg(id ORDER BY id) INTO v_sessions FROM (
        SELECT s.id FROM auth.sessions s
        WHERE s.user_id = p_user_id AND s.revoked_at IS NULL
          AND s.id IS DISTINCT FROM p_except_session_id
        ORDER BY s.id
        FOR NO KEY UPDATE
    ) locked;
    IF v_sessions IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE auth.sessions s SET revoked_at = p_now, revoke_reason = p_reason
    WHERE s.id = ANY (v_sessions);
    UPDATE auth.refresh_tokens t SET revoked_at = p_now, revoke_reason = p_reason, successor_seal = NULL
    WHERE t.session_id = ANY (v_sessions) AND t.revoked_at IS NULL;
    PERFORM auth._notify_revoked(u.id) FROM unnest(v_sessions) AS u(id);
    RETURN cardinality(v_sessions);
END
$$;

-- auth.revoke_user_sessions (server clock): the application's form.
-- SECURITY DEFINER: the application role has no privilege on the tables.
CREATE OR REPLACE FUNCTION auth.revoke_user_sessions(
    p_user_id            text,
    p_reason             text DEFAULT 'admin',
    p_except_session_id  uuid DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN auth.revoke_user_sessions(p_user_id => p_user_id, p_now => clock_timestamp(), p_reason => p_reason,
                                     p_except_session_id => p_except_session_id);
END
$$;

-- auth.list_sessions: a user's sessions, newest first, at most p_limit
-- (1 to 1000) of them, without keys or token hashes: a device list.
-- last_used_at is the issue time of the session's newest token (its last
-- issue or rotation): rotation writes it anyway, where a column of
-- auth.sessions written on every rotation cost 10% more WAL (docs/design.md,
-- "The device list"); created_at once the purge deleted that token (the
-- session is then expired). SECURITY DEFINER: the application role has no
-- privilege on the tables.
CREATE OR REPLACE FUNCTION auth.list_sessions(p_user_id text, p_limit integer DEFAULT 100)
RETURNS TABLE (
    session_id         uuid,
    created_at         timestamptz,
    generation         integer,
    refresh_expires_at timestamptz,
    revoked_at         timestamptz,
    revoke_reason      text,
    last_used_at       timestamptz,
    device_label       text,
    client_id          text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000, got %', coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT s.id, s.created_at, s.generation, s.refresh_expires_at, s.revoked_at, s.revoke_reason,
               coalesce((SELECT t.issued_at FROM auth.refresh_tokens t
                         WHERE t.session_id = s.id AND t.generation = s.generation),
                        s.created_at),
               s.device_label, s.client_id
        FROM auth.sessions s
        WHERE s.user_id = p_user_id
        ORDER BY s.created_at DESC, s.id
        LIMIT p_limit;
END
$$;
