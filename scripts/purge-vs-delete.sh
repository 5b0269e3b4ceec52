#!/usr/bin/env bash
# purge-vs-delete.sh — a run of the cleanup against the DELETE a DBA would
# write, on identical copies of one seeded table (scripts/seed-layout.sql),
# alternating, with nothing else on the server: the yardstick of issue 25 on
# the layouts bench does not seed (spread: random session ids in login
# order).
#
#   DATABASE_URL=postgres://…/any scripts/purge-vs-delete.sh [options]
#     --rows N      token rows, ten per session, 90% due (rotated)   (1000000)
#     --layout L    time, ties or spread (scripts/seed-layout.sql)   (spread)
#     --repeat K    runs of each, alternating                        (3)
#
# Each copy is VACUUMed, ANALYZEd and CHECKPOINTed first. The DELETE is
#   DELETE FROM auth.refresh_tokens
#   WHERE revoke_reason = 'rotated' AND revoked_at < now() - interval '1 hour'
# (the policy's rotated_retention written in: the planner's own plan); the
# run is CALL auth.run_token_cleanup() with the default policy. Prints each
# time (psql's \timing, milliseconds), the medians and their ratio (DELETE
# time / run time: 1.00x is as fast as the DELETE), and the order the run's
# first batch chose for the rotated rows.
#
# It creates databases tj_pvd_<pid>_* and drops them at the end, whatever
# happens. Needs psql (postgresql-client 15); builds token-janitor (debug)
# when TJ is not set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROWS=1000000 LAYOUT=spread REPEAT=3
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --layout) LAYOUT="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        *) echo "purge-vs-delete.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$LAYOUT" in time|ties|spread) ;; *) echo "purge-vs-delete.sh: --layout is time, ties or spread" >&2; exit 2 ;; esac
# shellcheck source=scripts/scratch.sh
. "$ROOT/scripts/scratch.sh" pvd

psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE ${PREFIX}_seed"
"$TJ" --database-url "$SERVER/${PREFIX}_seed" migrate --no-schedule >/dev/null 2>"$WORK/migrate.log" \
    || { cat "$WORK/migrate.log" >&2; exit 1; }
psql -qX -v ON_ERROR_STOP=1 -v sessions="$((ROWS / 10))" -v layout="$LAYOUT" "$SERVER/${PREFIX}_seed" \
    -f "$ROOT/scripts/seed-layout.sql" >/dev/null
echo "seeded $(sql "${PREFIX}_seed" "SELECT count(*) FROM auth.refresh_tokens") token rows ($LAYOUT layout)"

DELETE="DELETE FROM auth.refresh_tokens WHERE revoke_reason = 'rotated' AND revoked_at < now() - interval '1 hour'"
RUN="CALL auth.run_token_cleanup()"
# The milliseconds `statement` takes on a fresh copy named `copy`.
timed() {
    local copy="${PREFIX}_$1" statement="$2"
    psql -qX -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $copy TEMPLATE ${PREFIX}_seed"
    psql -qX -v ON_ERROR_STOP=1 "$SERVER/$copy" -c "VACUUM ANALYZE auth.refresh_tokens" -c "CHECKPOINT"
    psql -qXAt -v ON_ERROR_STOP=1 "$SERVER/$copy" -c '\timing on' -c "$statement" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

: >"$WORK/delete" ; : >"$WORK/run"
for k in $(seq 1 "$REPEAT"); do
    d=$(timed "delete_$k" "$DELETE"); echo "$d" >>"$WORK/delete"
    r=$(timed "run_$k" "$RUN"); echo "$r" >>"$WORK/run"
    left=$(sql "${PREFIX}_run_$k" "SELECT count(*) FROM auth.refresh_tokens WHERE revoke_reason = 'rotated'")
    echo "round $k: DELETE $d ms, run $r ms ($left rotated rows left; $(sql "${PREFIX}_run_$k" \
        "SELECT status || ', ' || batches || ' batches' FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1"))"
    psql -qX "$DATABASE_URL" -c "DROP DATABASE ${PREFIX}_delete_$k" -c "DROP DATABASE ${PREFIX}_run_$k"
done
order=$(sql "${PREFIX}_seed" "SELECT CASE WHEN auth._purge_order('rotated', auth._purge_cutoffs(p, t.retentions, now()))
                                         THEN 'page order' ELSE 'key order' END
                                FROM auth.cleanup_policy p, auth.purge_targets('rotated') t")
dm=$(median <"$WORK/delete"); rm_=$(median <"$WORK/run")
echo "median: DELETE $dm ms, run $rm_ ms: the run at $(awk -v d="$dm" -v r="$rm_" 'BEGIN { printf "%.2f", d / r }')x the DELETE ($order)"
