#!/usr/bin/env bash
# pgbench-rotate.sh — how a purge disturbs an independent client: pgbench
# calls auth.rotate_token open loop (a fixed schedule, so a stall shows up as
# schedule lag instead of fewer calls) while CALL auth.run_token_cleanup()
# deletes the due rows of a seeded table, and the same load with no purge is
# the baseline. Both run on copies of one seeded database, back to back.
#
#   DATABASE_URL=postgres://…/any scripts/pgbench-rotate.sh [options]
#     --rows N          token rows to seed, ten per session, 90% due (3000000)
#     --layout L        time (rows in issue order), ties (a session's rows
#                       together, each generation's due rows revoked at one
#                       instant: a mass revocation) or spread (as ties, the
#                       sessions in login order: scripts/seed-layout.sql)  (time)
#     --rate R          rotations per second, all clients together      (300)
#     --clients C       pgbench connections                             (2)
#     --idle-seconds S  length of the baseline                          (20)
#     --purge-seconds S length of the load around each purge, which starts
#                       3 s in and must end before the load does       (45)
#     --limit-ms MS     pgbench --latency-limit: a call still waiting this
#                       long past its scheduled start is skipped and counted
#                       as failed                                       (100)
#     --unpaced         also a purge with auth.cleanup_policy.pace off, on
#                       a third copy, after the one with pace on (the default)
#     --batch-size N    auth.cleanup_policy.batch_size of the purges;
#                       repeatable: one purge (on its own copy) per size, in
#                       the order given                     (the policy's default)
#     --token-history   auth.cleanup_policy.token_history on for the baseline
#                       and the purges: every rotation revokes its row and
#                       inserts its successor's, as before rotation in place
#                       (off, the default: a rotation replaces the row)
#
# Each rotation presents the token's authenticator, as TokenStore does, so
# with token_history off it replaces the session's row in place (the seed
# writes the live rows as this release does).
# Latency is counted from each call's scheduled start (pgbench's latency plus
# its schedule lag). The purge window's p99 covers the calls scheduled while
# the purge ran. A rotation that does not return 'rotated' aborts its client
# (division by zero), which pgbench reports and this script fails on.
#
# It creates databases tj_pgbench_<pid>_* on the server and drops them at the
# end, whatever happens. Needs psql and pgbench (postgresql-client 15) and
# builds token-janitor (debug) when TJ is not set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
ROWS=3000000 LAYOUT=time RATE=300 CLIENTS=2 IDLE_S=20 PURGE_S=45 LIMIT_MS=100 UNPACED=false BATCH_SIZES=()
HISTORY=false
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --layout) LAYOUT="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --idle-seconds) IDLE_S="$2"; shift 2 ;;
        --purge-seconds) PURGE_S="$2"; shift 2 ;;
        --limit-ms) LIMIT_MS="$2"; shift 2 ;;
        --unpaced) UNPACED=true; shift ;;
        --batch-size) BATCH_SIZES+=("$2"); shift 2 ;;
        --token-history) HISTORY=true; shift ;;
        *) echo "pgbench-rotate.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$LAYOUT" in time|ties|spread) ;; *) echo "pgbench-rotate.sh: --layout is time, ties or spread" >&2; exit 2 ;; esac
for size in "${BATCH_SIZES[@]}"; do
    case "$size" in
        '' | *[!0-9]*) echo "pgbench-rotate.sh: --batch-size takes a whole number of rows (1 to 100000), got '$size'" >&2; exit 2 ;;
    esac
done
# shellcheck source=scripts/scratch.sh
. "$ROOT/scripts/scratch.sh" pgbench
SESSIONS=$((ROWS / 10))

# The template: migrated, then seeded (scripts/seed-layout.sql: SESSIONS
# families of ten tokens, 90% due; token hashes that the rotation script
# recomputes).
echo "seeding $ROWS token rows ($LAYOUT layout)" >&2
psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE ${PREFIX}_template"
DATABASE_URL="$SERVER/${PREFIX}_template" "$TJ" migrate --no-schedule >/dev/null
psql -qX -v ON_ERROR_STOP=1 -v sessions="$SESSIONS" -v layout="$LAYOUT" "$SERVER/${PREFIX}_template" \
    -f "$ROOT/scripts/seed-layout.sql"
sql "${PREFIX}_template" "UPDATE auth.cleanup_policy SET token_history = $HISTORY" >/dev/null
DUE=$(sql "${PREFIX}_template" "SELECT count(*) FROM auth.refresh_tokens WHERE revoke_reason = 'rotated' AND revoked_at < now() - interval '1 hour'")

# One rotation: each client takes sessions of its own (k ≡ client_id modulo
# the client count), so two clients never present the same token. The
# authenticator is computed from the session's key, which this superuser
# reads; an application has it in the token string.
cat >"$WORK/rotate.sql" <<SQL
\set k random(0, $SESSIONS / $CLIENTS - 1) * $CLIENTS + :client_id
SELECT 1 / (r.outcome = 'rotated')::int
FROM auth.sessions s,
     auth.rotate_token(p_session_id => s.id, p_generation => s.generation,
                       p_token_hash => sha256(convert_to(s.id::text || '/' || s.generation, 'UTF8')),
                       p_new_token_hash => sha256(convert_to(s.id::text || '/' || (s.generation + 1), 'UTF8')),
                       p_ttl => interval '30 days',
                       p_authenticator => auth._authenticator(s.mac_key, s.id, s.generation,
                           sha256(convert_to(s.id::text || '/' || s.generation, 'UTF8'))),
                       p_successor_seal => sha256(convert_to(s.id::text || ':' || s.generation, 'UTF8'))) r
WHERE s.id = md5(:k::text)::uuid;
SQL

prepare_copy() {
    psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE ${PREFIX}_$1 TEMPLATE ${PREFIX}_template STRATEGY = FILE_COPY"
    psql -qX -v ON_ERROR_STOP=1 "$SERVER/${PREFIX}_$1" >/dev/null <<SQL
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT pg_prewarm(c.oid) FROM pg_class c WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind IN ('r', 'i');
CHECKPOINT;
SQL
    # The copy's files reach the disk now, not while the load runs: without
    # this, two idle baselines of nine had p99s of 35 and 62 ms, the others
    # 4-13 ms; with it, all nine 5-13 ms (docs/performance.md).
    sync
}

# pgbench on database $1 for $2 seconds, per-call log under $WORK/$1.
load() {
    "$PGBIN/pgbench" -n -R "$RATE" -c "$CLIENTS" -j "$CLIENTS" -T "$2" \
        --latency-limit="$LIMIT_MS" -f "$WORK/rotate.sql" \
        -l --log-prefix="$WORK/log_$1" "$SERVER/${PREFIX}_$1" >"$WORK/$1.out" 2>&1
}

# "p50_ms p99_ms calls skipped" of the calls scheduled in [from_us, to_us] (epoch
# microseconds) in the logs of $1. Log fields: client, transaction, latency
# us (or 'skipped'), script, end epoch s, end us, schedule lag us.
p99() {
    cat "$WORK/log_$1".* | awk -v from="$2" -v to="$3" '
        { end = $5 * 1000000 + $6
          if ($3 == "skipped") { if (end >= from && end <= to) skipped++; next }
          total = $3 + $7; start = end - total
          if (start >= from && start <= to) print total / 1000.0 }
        END { print "skipped", skipped + 0 > "/dev/stderr" }' 2>"$WORK/$1.skipped" |
        sort -g | awk 'function rank(q) { r = int(NR * q); if (r < NR * q) r++; return r < 1 ? 1 : r }
                       { v[NR] = $1 } END { printf "%.2f %.2f %d", v[rank(0.5)], v[rank(0.99)], NR }'
    printf ' %s\n' "$(awk '{ print $2 }' "$WORK/$1.skipped")"
}
now_us() { date +%s%6N; }

echo "idle baseline: $RATE rotations/s for ${IDLE_S}s" >&2
prepare_copy idle
rows_before=$(sql "${PREFIX}_idle" "SELECT count(*) FROM auth.refresh_tokens")
from=$(now_us)
load idle "$IDLE_S"
read -r idle_p50 idle_p99 idle_n idle_skipped <<<"$(p99 idle "$((from + 1000000))" "$(now_us)")"
# In place, a rotation adds no row; with token_history, one each.
rows_added=$(($(sql "${PREFIX}_idle" "SELECT count(*) FROM auth.refresh_tokens") - rows_before))

# A purge on copy $1 with auth.cleanup_policy.pace = $2 and batch_size $3
# (empty: the default) under the same load; prints its report line and
# leaves its skipped count in $WORK/$1.skipped.
purge() {
    echo "purge (pace $2, batch size ${3:-default}): CALL auth.run_token_cleanup() over $DUE due rows under the same load" >&2
    prepare_copy "$1"
    sql "${PREFIX}_$1" "UPDATE auth.cleanup_policy SET pace = $2, batch_size = coalesce(${3:-NULL}, batch_size)" >/dev/null
    load "$1" "$PURGE_S" &
    local loader=$! started finished p50 p99 n skipped run
    sleep 3
    started=$(now_us)
    sql "${PREFIX}_$1" "CALL auth.run_token_cleanup()"
    finished=$(now_us)
    wait "$loader" || true
    if [ $(( (finished - started) / 1000000 + 3 )) -ge "$PURGE_S" ]; then
        echo "pgbench-rotate.sh: the purge outlasted the load; raise --purge-seconds" >&2
        exit 1
    fi
    read -r p50 p99 n skipped <<<"$(p99 "$1" "$started" "$finished")"
    run=$(sql "${PREFIX}_$1" "SELECT status || ' ' || rotated_deleted || ' ' || batches FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1")
    printf 'purge, pace %-5s batch size %s: p50 %s ms, p99 %s ms (%.2fx idle) over %s calls, %s skipped; run %s, %.2f s\n' \
        "$2," "$(sql "${PREFIX}_$1" "SELECT batch_size FROM auth.cleanup_policy")" "$p50" "$p99" "$(awk -v a="$p99" -v b="$idle_p99" 'BEGIN { print a / b }')" "$n" "$skipped" \
        "$(awk '{ printf "%s, %s rows in %s batches", $1, $2, $3 }' <<<"$run")" \
        "$(awk -v a="$started" -v b="$finished" 'BEGIN { print (b - a) / 1e6 }')"
}

[ ${#BATCH_SIZES[@]} -gt 0 ] || BATCH_SIZES=("")
lines=""
for i in "${!BATCH_SIZES[@]}"; do
    lines="$lines$(purge "purge_$i" true "${BATCH_SIZES[$i]}")"$'\n'
    if [ "$UNPACED" = true ]; then
        lines="$lines$(purge "unpaced_$i" false "${BATCH_SIZES[$i]}")"$'\n'
    fi
done
aborted=$(cat "$WORK"/*.out | grep -c "aborted" || true)
skipped=$(awk '{ s += $2 } END { print s + 0 }' "$WORK"/*.skipped)

cat <<REPORT
rows $ROWS, due $DUE, layout $LAYOUT, token_history $HISTORY, $RATE rotations/s from $CLIENTS pgbench clients (latency from the scheduled start, --latency-limit ${LIMIT_MS} ms)
idle:  p50 $idle_p50 ms, p99 $idle_p99 ms over $idle_n calls, $idle_skipped skipped; token rows added: $rows_added
${lines}pgbench clients aborted (a rotation that did not return 'rotated'): $aborted
load average: $(cut -d' ' -f1-3 /proc/loadavg)
REPORT
[ "$aborted" -eq 0 ] && [ "$skipped" -eq 0 ]
