#!/usr/bin/env bash
# rotation-cost.sh — what a refresh costs in storage, WAL and speed, with
# auth.cleanup_policy.token_history off (the default: the session's token
# row is replaced in place) and on (a row per issued token, as before
# release 0.2), side by side in one run, on fresh databases of one server.
#
#   DATABASE_URL=postgres://…/any scripts/rotation-cost.sh [options]
#     --sessions N   sessions issued, one per user                     (1000)
#     --rotations R  rotations of every session, one transaction each   (20)
#     --seconds S    length of the saturation run                       (20)
#     --clients C    pgbench connections of the saturation run          (2)
#     --repeat K     saturation runs per mode, alternating modes        (3)
#     --prepared     pgbench -M prepared: each client parses and plans the
#                    rotation once, as TokenStore's pooled connections do
#                    (default: pgbench's simple protocol, every call parsed)
#     --floor        also runs, alternating with the others, a rotation
#                    stripped of every check, the policy read, the family
#                    lock and the token read (auth.rotation_floor, installed
#                    in the token_history-off scratch database only, never
#                    by migrate): what any rotation in PL/pgSQL costs at
#                    least, for measurement only
#
# pgbench's protocol is --prepared's or its simple one. Per mode it prints:
#   rows_per_session  token rows per live session after the rotations, no
#                     cleanup having run;
#   wal_per_rotation  WAL bytes written by the rotations (a CHECKPOINT
#                     first, so full-page images are counted as a server
#                     writes them), divided by their number;
#   rotations_per_s   each saturation run: pgbench, C clients, no rate
#                     limit, random sessions, after the rotations above.
# and, alternating with those runs, the same pgbench load of transactions
# that each update one integer of a 1,000-row table: what committing a
# transaction costs here, the ceiling of any rotation's rate.
# Every rotation goes through the application's form of auth.rotate_token
# (the server's clock) with the token's authenticator, as TokenStore calls
# it, and must return 'rotated' (a division by zero stops the script).
#
# It creates databases tj_rotcost_<pid>_* and drops them at the end,
# whatever happens. Needs psql and pgbench (postgresql-client 15); builds
# token-janitor (debug) when TJ is not set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
SESSIONS=1000 ROTATIONS=20 SECONDS_=20 CLIENTS=2 REPEAT=3 PROTOCOL=simple FLOOR=
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) SESSIONS="$2"; shift 2 ;;
        --rotations) ROTATIONS="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --prepared) PROTOCOL=prepared; shift ;;
        --floor) FLOOR=1; shift ;;
        *) echo "rotation-cost.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
for value in "$SESSIONS" "$ROTATIONS" "$SECONDS_" "$CLIENTS" "$REPEAT"; do
    case "$value" in
        '' | 0 | *[!0-9]*) echo "rotation-cost.sh: every option takes a positive whole number, got '$value'" >&2; exit 2 ;;
    esac
done
# shellcheck source=scripts/scratch.sh
. "$ROOT/scripts/scratch.sh" rotcost

# One rotation of the session of user $1 (an expression) through function
# $2 (default auth.rotate_token), its token's hash being
# sha256('u<k>/<generation>'). The authenticator is computed from the
# session's key, which this superuser reads; an application has it in the
# token string.
rotation() {
    cat <<SQL
SELECT 1 / (r.outcome = 'rotated')::int
FROM auth.sessions s,
     ${2:-auth.rotate_token}(p_session_id => s.id, p_generation => s.generation,
                       p_token_hash => sha256(convert_to(s.user_id || '/' || s.generation, 'UTF8')),
                       p_new_token_hash => sha256(convert_to(s.user_id || '/' || (s.generation + 1), 'UTF8')),
                       p_ttl => interval '30 days',
                       p_authenticator => auth._authenticator(s.mac_key, s.id, s.generation,
                           sha256(convert_to(s.user_id || '/' || s.generation, 'UTF8'))),
                       p_successor_seal => sha256(convert_to(s.user_id || ':' || s.generation, 'UTF8'))) r
WHERE s.user_id = $1
SQL
}
{ echo "\\set k random(1, $SESSIONS)"; rotation "'u' || :k"; echo ';'; } >"$WORK/rotate.sql"
{ echo "\\set k random(1, $SESSIONS)"; rotation "'u' || :k" auth.rotation_floor; echo ';'; } >"$WORK/floor.sql"
printf '%s\n' '\set k random(1, 1000)' 'UPDATE ceiling SET n = n + 1 WHERE id = :k;' >"$WORK/ceiling.sql"

prepare() {
    local db="${PREFIX}_$1"
    psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
    DATABASE_URL="$SERVER/$db" "$TJ" migrate --no-schedule >/dev/null 2>"$WORK/migrate.log" ||
        { cat "$WORK/migrate.log" >&2; exit 1; }
    sql "$db" "UPDATE auth.cleanup_policy SET token_history = $1, reuse_grace = interval '10 seconds'" >/dev/null
    sql "$db" "SELECT count(*) FROM generate_series(1, $SESSIONS) k,
                   auth.issue_token(p_user_id => 'u' || k, p_token_hash => sha256(convert_to('u' || k || '/0', 'UTF8')),
                                    p_ttl => interval '30 days')" >/dev/null
    sql "$db" "CHECKPOINT" >/dev/null
    local from
    from=$(sql "$db" "SELECT pg_current_wal_lsn()")
    # Each rotation in its own transaction, as an application makes them.
    for _ in $(seq "$ROTATIONS"); do
        sql "$db" "SELECT format(\$f\$$(rotation '%L');\$f\$, user_id) FROM auth.sessions ORDER BY user_id" >"$WORK/round.sql"
        psql -qXAt -v ON_ERROR_STOP=1 "$SERVER/$db" -f "$WORK/round.sql" >/dev/null
    done
    sql "$db" "SELECT round(count(*)::numeric / (SELECT count(*) FROM auth.sessions WHERE revoked_at IS NULL AND refresh_expires_at >= now()), 2),
                      round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$from') / ($SESSIONS * $ROTATIONS))
               FROM auth.refresh_tokens"
}

# saturate DB SCRIPT: transactions per second of SCRIPT on scratch database DB.
saturate() {
    "$PGBIN/pgbench" -n -M "$PROTOCOL" -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_" -f "$WORK/$2.sql" "$SERVER/${PREFIX}_$1" 2>&1 |
        awk '/^tps = / { printf "%.0f", $3 }'
}

declare -A ROWS WAL RATES
for mode in false true; do
    echo "token_history $mode: $SESSIONS sessions x $ROTATIONS rotations" >&2
    read -r ROWS[$mode] WAL[$mode] < <(prepare "$mode" | tr '|' ' ')
done
if [ -n "$FLOOR" ]; then
    # The in-place rotation's writes and nothing else: no argument, TTL,
    # binding, expiry or revocation check, no policy, no family lock, no read
    # of the token row. Never install this anywhere but a scratch database.
    psql -qX -v ON_ERROR_STOP=1 "$SERVER/${PREFIX}_false" >/dev/null <<'SQL'
CREATE FUNCTION auth.rotation_floor(p_session_id uuid, p_generation integer, p_token_hash bytea,
                                    p_new_token_hash bytea, p_ttl interval, p_authenticator bytea,
                                    p_successor_seal bytea)
RETURNS TABLE (outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_session auth.sessions%ROWTYPE;
    v_now     timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO v_session FROM auth.sessions s WHERE s.id = p_session_id FOR NO KEY UPDATE;
    IF sha256(auth._authenticator(v_session.mac_key, p_session_id, p_generation, p_token_hash))
       <> sha256(p_authenticator) THEN
        RETURN QUERY SELECT 'invalid'::text;
        RETURN;
    END IF;
    UPDATE auth.refresh_tokens t
    SET generation = p_generation + 1, token_hash = p_new_token_hash, issued_at = v_now,
        expires_at = v_now + p_ttl,
        successor_seal = auth._wrap_seal(p_successor_seal, p_session_id, p_generation + 1, v_now,
                                         interval '10 seconds')
    WHERE t.session_id = p_session_id AND t.generation = p_generation;
    UPDATE auth.sessions s SET generation = p_generation + 1, refresh_expires_at = v_now + p_ttl
    WHERE s.id = p_session_id;
    RETURN QUERY SELECT 'rotated'::text;
END
$$;
SQL
fi
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE ${PREFIX}_ceiling"
sql "${PREFIX}_ceiling" "CREATE TABLE ceiling (id integer PRIMARY KEY, n bigint NOT NULL);
                       INSERT INTO ceiling SELECT k, 0 FROM generate_series(1, 1000) k" >/dev/null
for i in $(seq "$REPEAT"); do
    for mode in false true; do
        echo "saturation run $i, token_history $mode: $CLIENTS clients, ${SECONDS_}s" >&2
        RATES[$mode]="${RATES[$mode]:-}$(saturate "$mode" rotate) "
    done
    if [ -n "$FLOOR" ]; then
        echo "saturation run $i, the floor rotation: $CLIENTS clients, ${SECONDS_}s" >&2
        FLOORS="${FLOORS:-}$(saturate false floor) "
    fi
    echo "saturation run $i, one-row updates: $CLIENTS clients, ${SECONDS_}s" >&2
    CEILING="${CEILING:-}$(saturate ceiling ceiling) "
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf '%-14s %16s %16s %s\n' token_history rows_per_session wal_per_rotation "rotations_per_s (runs; median)"
for mode in false true; do
    printf '%-14s %16s %16s %s; %s\n' "$mode" "${ROWS[$mode]}" "${WAL[$mode]}" "${RATES[$mode]% }" \
        "$(echo "${RATES[$mode]}" | median)"
done
if [ -n "$FLOOR" ]; then
    printf 'the floor rotation (token_history false)/s at saturation: %s; %s\n' "${FLOORS% }" "$(echo "$FLOORS" | median)"
fi
printf 'one-row updates/s at saturation (the commit ceiling): %s; %s\n' "${CEILING% }" "$(echo "$CEILING" | median)"
