#!/usr/bin/env bash
# instructions.sh — the purge's CPU work against one DELETE's, counted in
# instructions. `token-janitor bench` times both, and on a shared or virtual
# machine the same run's seconds move by a third from one run to the next;
# valgrind's callgrind counts the instructions the server executes, which do
# not move with what else the machine is doing (two runs of the script
# counted the same run within 2,000 instructions of 4.6 billion). Use it to
# tell whether a change to the engine made it cheaper; the seconds that the
# targets speak of still come from bench.
#
#   scripts/instructions.sh [options]
#     --rows N          token rows to seed, a multiple of ten (ten per session),
#                       90% due                                        (1000000)
#     --layout L        time, ties or spread (scripts/seed-layout.sql)  (time)
#     --pace on|off     auth.cleanup_policy.pace of the purge   (the default, on)
#     --batch-size N    auth.cleanup_policy.batch_size of the purge
#                                                         (the policy's default)
#     --keep DIR        keep the three callgrind files in DIR (baseline,
#                       delete, purge), for callgrind_annotate --inclusive=yes
#
# It creates a throwaway cluster of its own (in a temporary folder, on the
# first free port from 54500 up; PostgreSQL 15 server binaries, no pg_cron
# needed), seeds one template database and stops the server. Then, for each of
# three measurements, it copies the template and starts one backend in
# single-user mode under callgrind on the copy: start-up and pg_prewarm of the
# auth schema's tables and indexes alone (the baseline), then with one
# `DELETE` of the due rows (bench's: the rotated kind's due predicate with
# the retention read from the policy, as the planner plans it), then with
# `CALL auth.run_token_cleanup()`. Each count stops where the backend's
# shutdown checkpoint starts (writing the pages the command dirtied is the
# checkpointer's work in a running server, not the statement's). A second
# backend, not counted, then checks on the same copy that the run ended 'ok'
# and that both left the same number of token rows. The script prints each
# count net of the baseline and their ratio. In single-user mode nothing
# else runs: no autovacuum, no other backend, so pace sees no traffic. Under
# callgrind the backend runs about 50 times slower than usual, so pace's
# first tenth of a second of small batches (wall-clock time) covers one or
# two batches where a real run takes about 50: with pace on, the count
# leaves out that overhead (about 1.75 M instructions a batch, which the
# --batch-size 1250 --pace off run measures) and moves by that much with the
# machine's speed. The run's max_runtime is lifted for the same reason.
# The seed is scripts/seed-layout.sql, not bench's: the layouts match in
# shape (heap order, shared revoke times), not in every timestamp. About
# three minutes for 1M rows.
#
# Needs valgrind, psql and the PostgreSQL 15 server binaries; builds
# token-janitor (debug: it only runs migrate) when TJ is not set. As root,
# it runs the server as the postgres user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
ROWS=1000000 LAYOUT=time PACE="" BATCH_SIZE="" KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --layout) LAYOUT="$2"; shift 2 ;;
        --pace) PACE="$2"; shift 2 ;;
        --batch-size) BATCH_SIZE="$2"; shift 2 ;;
        --keep) KEEP="$2"; shift 2 ;;
        *) echo "instructions.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
die() { echo "instructions.sh: $*" >&2; exit 2; }
fail() { echo "instructions.sh: $*" >&2; exit 1; }
case "$LAYOUT" in time|ties|spread) ;; *) die "--layout is time, ties or spread, got '$LAYOUT'" ;; esac
case "$PACE" in ''|on|off) ;; *) die "--pace is on or off, got '$PACE'" ;; esac
[[ "$ROWS" =~ ^[1-9][0-9]*0$ ]] || die "--rows takes a multiple of ten (ten tokens per session), got '$ROWS'"
[[ "$BATCH_SIZE" =~ ^([1-9][0-9]*)?$ ]] || die "--batch-size takes a whole number of rows (1 to 100000), got '$BATCH_SIZE'"
[ -z "$KEEP" ] || mkdir -p "$KEEP" || die "cannot create --keep folder $KEEP"
command -v valgrind >/dev/null || die "valgrind is missing: apt-get install valgrind"
[ -x "$PGBIN/postgres" ] || die "no PostgreSQL server binaries in $PGBIN: apt-get install postgresql-15, or set PGBIN"
if [ -z "${TJ:-}" ]; then
    cargo build --quiet --manifest-path "$ROOT/Cargo.toml" --bin token-janitor
    TJ="$ROOT/target/debug/token-janitor"
fi

# Server binaries refuse to run as root; as root they run as the postgres user.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
WORK="$(mktemp -d /var/tmp/tj-instructions.XXXXXX)"
PGDATA="$WORK/data"
cleanup() {
    as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK"; fi

PORT=54500
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    PORT=$((PORT + 1))
    [ "$PORT" -le 54599 ] || fail "no free port from 54500 to 54599"
done
as_owner "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = 1GB
max_wal_size = 4GB
autovacuum = off
CONF
as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/server.log" -w start >/dev/null ||
    { cat "$WORK/server.log" >&2; fail "the throwaway server did not start"; }
SERVER="postgres://postgres@127.0.0.1:$PORT"
echo "seeding $ROWS token rows ($LAYOUT layout)" >&2
psql -qX -v ON_ERROR_STOP=1 "$SERVER/postgres" -c "CREATE DATABASE template_tj"
DATABASE_URL="$SERVER/template_tj" "$TJ" migrate --no-schedule >"$WORK/migrate.log" 2>&1 ||
    { cat "$WORK/migrate.log" >&2; fail "token-janitor migrate failed"; }
psql -qX -v ON_ERROR_STOP=1 -v sessions="$((ROWS / 10))" -v layout="$LAYOUT" "$SERVER/template_tj" \
    -f "$ROOT/scripts/seed-layout.sql"
psql -qX -v ON_ERROR_STOP=1 -v pace="$PACE" -v batch_size="$BATCH_SIZE" "$SERVER/template_tj" >/dev/null <<'SQL'
CREATE EXTENSION pg_prewarm;
UPDATE auth.cleanup_policy SET pace = coalesce(nullif(:'pace', '')::boolean, pace),
                               batch_size = coalesce(nullif(:'batch_size', '')::int, batch_size),
                               max_runtime = interval '1 day';
SQL
# The rotated kind's due rows, written as bench's single-delete writes them.
DUE_SQL=$(psql -qXAt -v ON_ERROR_STOP=1 "$SERVER/template_tj" -c "SELECT replace(t.due, '\$1',
    '(now() - (SELECT p.rotated_retention FROM auth.cleanup_policy p))') FROM auth.purge_targets() t WHERE t.kind = 'rotated'")
POLICY=$(psql -qXAt "$SERVER/template_tj" -c "SELECT 'batch_size ' || batch_size || ', pace ' || CASE WHEN pace THEN 'on' ELSE 'off' END FROM auth.cleanup_policy")
as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -w stop >/dev/null

# A backend in single-user mode on database $1 running the commands $3...
# (each its own statement, ending in ';'), under the program prefix $2 (none,
# or valgrind's); its output in $WORK/<label $4>.out and .err. Fails on any
# ERROR (a single-user backend exits 0 after one).
backend() {
    local db="$1" prefix="$2" label="$3"
    shift 3
    printf '%s\n\n' "$@" >"$WORK/$label.sql"
    as_owner $prefix "$PGBIN/postgres" --single -j -D "$PGDATA" "$db" \
        <"$WORK/$label.sql" >"$WORK/$label.out" 2>"$WORK/$label.err" ||
        { cat "$WORK/$label.err" >&2; fail "the $label backend failed"; }
    if grep -q "ERROR:" "$WORK/$label.out" "$WORK/$label.err"; then
        grep -h "ERROR:" "$WORK/$label.out" "$WORK/$label.err" >&2
        fail "the $label commands failed"
    fi
}

# The instructions of start-up, pg_prewarm of the auth schema's tables and
# indexes and the commands $2... in a backend on a fresh copy of the template,
# up to its shutdown checkpoint (callgrind dumps the count before
# ShutdownXLOG into callgrind.$1.1); then the values that $CHECK returns on
# that copy, from a backend that is not counted, into $WORK/$1.check.
count() {
    local label="$1" total
    shift
    backend postgres "" "copy_$label" "DROP DATABASE IF EXISTS copy_tj;" \
        "CREATE DATABASE copy_tj TEMPLATE template_tj STRATEGY = FILE_COPY;"
    backend copy_tj "valgrind --tool=callgrind --dump-before=ShutdownXLOG --callgrind-out-file=$WORK/callgrind.$label" \
        "$label" "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind IN ('r', 'i');" "$@"
    total=$(awk '/^summary:/ { print $2 }' "$WORK/callgrind.$label.1" 2>/dev/null)
    [[ "$total" =~ ^[0-9]+$ ]] || fail "no instruction count for the $label backend in $WORK/callgrind.$label.1"
    echo "$total" >"$WORK/$label.count"
    backend copy_tj "" "check_$label" "$CHECK"
    echo "$(grep -o '= "[^"]*"' "$WORK/check_$label.out" | tr -d '="' | tr '\n' ' ')" >"$WORK/$label.check"
}

# What each measurement left: token rows, and the last run's status, rows
# deleted and batches ('none' where no run).
CHECK="SELECT (SELECT count(*) FROM auth.refresh_tokens),
              coalesce((SELECT status || '/' || rotated_deleted || '/' || batches FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1), 'none');"

echo "measuring under callgrind: baseline, one DELETE, the purge ($POLICY)" >&2
count baseline "SELECT 1;"
count delete "DELETE FROM auth.refresh_tokens WHERE $DUE_SQL;"
count purge "CALL auth.run_token_cleanup();"
[ -z "$KEEP" ] || cp "$WORK"/callgrind.* "$KEEP"/
read -r base <"$WORK/baseline.count"
read -r delete <"$WORK/delete.count"
read -r purge <"$WORK/purge.count"
read -r seeded _ <"$WORK/baseline.check"
read -r delete_left _ <"$WORK/delete.check"
read -r purge_left purge_run <"$WORK/purge.check"
IFS=/ read -r status deleted batches <<<"$purge_run"
[ "$status" = ok ] || fail "the purge ended '$status', not 'ok' (the server log of a single-user backend is in its .err)"
[ "$delete_left" = "$purge_left" ] ||
    fail "the DELETE left $delete_left token rows and the purge $purge_left: they did not delete as many rows"
[ "$((seeded - delete_left))" = "$deleted" ] ||
    fail "the DELETE deleted $((seeded - delete_left)) rows and the purge recorded $deleted"
[ "$delete" -gt "$base" ] && [ "$purge" -gt "$base" ] ||
    fail "a measurement counted no more than the baseline ($base): delete $delete, purge $purge"

cat <<REPORT
rows $seeded ($LAYOUT layout), $deleted due deleted by each; purge: $POLICY, $batches batches
baseline (start-up, pg_prewarm): $base instructions
one DELETE:                      $((delete - base)) instructions
CALL auth.run_token_cleanup():   $((purge - base)) instructions
one DELETE / the purge:          $(awk -v d="$((delete - base))" -v p="$((purge - base))" 'BEGIN { printf "%.3f", d / p }')
REPORT
