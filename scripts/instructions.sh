#!/usr/bin/env bash
# instructions.sh — the purge's CPU work against one DELETE's, counted in
# instructions. `token-janitor bench` times both, and on a shared or virtual
# machine the same run's seconds move by a third from one run to the next;
# valgrind's callgrind counts the instructions the server executes, which do
# not move with what else the machine is doing (two runs of the script
# counted the same purge within 1,100 instructions of 5.1 billion). Use it to tell whether a change to
# the engine made it cheaper; the seconds that the issue's targets speak of
# still come from bench.
#
#   scripts/instructions.sh [options]
#     --rows N          token rows to seed, ten per session, 90% due (1000000)
#     --layout L        time or ties (scripts/seed-layout.sql)           (time)
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
# single-user mode under callgrind on the copy: the same start-up and
# pg_prewarm of the token tables alone (the baseline), then with one `DELETE`
# of the due rows (bench's: the rotated kind's due predicate with the
# retention read from the policy, as the planner plans it), then with
# `CALL auth.run_token_cleanup()`. It prints each
# one's instructions net of the baseline and their ratio, after checking that
# both deleted the same rows. In single-user mode nothing else runs: no
# autovacuum, no other backend, so pace sees no traffic. Under callgrind the
# backend runs about 50 times slower than usual, and pace's first tenth of a
# second of small batches (wall-clock time) covers fewer batches: with pace
# on, the count leaves out about 50 small batches' overhead (the
# --batch-size 1250 --pace off run measures it per batch). About three
# minutes for 1M rows.
#
# Needs valgrind, psql and the PostgreSQL 15 server binaries; builds
# token-janitor (debug) when TJ is not set. Run as root, the server runs as
# the postgres user.
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
case "$LAYOUT" in time|ties) ;; *) die "--layout is time or ties, got '$LAYOUT'" ;; esac
case "$PACE" in ''|on|off) ;; *) die "--pace is on or off, got '$PACE'" ;; esac
case "$ROWS" in '' | *[!0-9]*) die "--rows takes a whole number, got '$ROWS'" ;; esac
[ "$ROWS" -ge 10 ] || die "--rows must be at least 10 (one family of ten tokens)"
case "$BATCH_SIZE" in *[!0-9]*) die "--batch-size takes a whole number of rows (1 to 100000), got '$BATCH_SIZE'" ;; esac
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
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"
PGDATA="$WORK/data"
cleanup() {
    as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=54500
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    PORT=$((PORT + 1))
    [ "$PORT" -le 54599 ] || die "no free port from 54500 to 54599"
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
as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/server.log" -w start >/dev/null
SERVER="postgres://postgres@127.0.0.1:$PORT"
echo "seeding $ROWS token rows ($LAYOUT layout)" >&2
psql -qX -v ON_ERROR_STOP=1 "$SERVER/postgres" -c "CREATE DATABASE template_tj"
DATABASE_URL="$SERVER/template_tj" "$TJ" migrate --no-schedule >"$WORK/migrate.log" 2>&1 ||
    { cat "$WORK/migrate.log" >&2; die "token-janitor migrate failed"; }
psql -qX -v ON_ERROR_STOP=1 -v sessions="$((ROWS / 10))" -v layout="$LAYOUT" "$SERVER/template_tj" \
    -f "$ROOT/scripts/seed-layout.sql"
psql -qX -v ON_ERROR_STOP=1 -v pace="$PACE" -v batch_size="$BATCH_SIZE" "$SERVER/template_tj" >/dev/null <<'SQL'
CREATE EXTENSION pg_prewarm;
UPDATE auth.cleanup_policy SET pace = coalesce(nullif(:'pace', '')::boolean, pace),
                               batch_size = coalesce(nullif(:'batch_size', '')::int, batch_size);
SQL
# The rotated kind's due rows, written as bench's single-delete writes them.
DUE_SQL=$(psql -qXAt -v ON_ERROR_STOP=1 "$SERVER/template_tj" -c "SELECT replace(t.due, '\$1',
    '(now() - (SELECT p.rotated_retention FROM auth.cleanup_policy p))') FROM auth.purge_targets() t WHERE t.kind = 'rotated'")
POLICY=$(psql -qXAt "$SERVER/template_tj" -c "SELECT 'batch_size ' || batch_size || ', pace ' || CASE WHEN pace THEN 'on' ELSE 'off' END FROM auth.cleanup_policy")
as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -w stop >/dev/null

# One backend in single-user mode on a fresh copy of the template, under
# callgrind: start-up, pg_prewarm of the token tables, then the commands
# $2... (each its own statement, ending in ';'); writes to $WORK/$1.result, on
# one line, the instructions it executed and the values its commands returned
# (single-user mode's output).
single() {
    printf '%s\n' "DROP DATABASE IF EXISTS copy_tj;" "" "CREATE DATABASE copy_tj TEMPLATE template_tj STRATEGY = FILE_COPY;" "" |
        as_owner "$PGBIN/postgres" --single -j -D "$PGDATA" postgres >/dev/null 2>"$WORK/copy.err" ||
        { cat "$WORK/copy.err" >&2; die "could not copy the template"; }
    {
        echo "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind IN ('r', 'i');"
        echo
        printf '%s\n\n' "${@:2}"
    } >"$WORK/$1.sql"
    as_owner valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$1" \
        "$PGBIN/postgres" --single -j -D "$PGDATA" copy_tj <"$WORK/$1.sql" >"$WORK/$1.out" 2>"$WORK/$1.err" ||
        { cat "$WORK/$1.err" >&2; die "the $1 backend failed"; }
    if grep -q "ERROR:" "$WORK/$1.out" "$WORK/$1.err"; then
        grep -h "ERROR:" "$WORK/$1.out" "$WORK/$1.err" >&2
        die "the $1 commands failed"
    fi
    echo >"$WORK/$1.result" "$(grep -o 'Collected : [0-9]*' "$WORK/$1.err" | awk '{ print $3 }')" \
        "$(grep -o '= "[^"]*"' "$WORK/$1.out" | tail -n +2 | tr -d '="' | tr '\n' ' ')"
}

echo "measuring under callgrind: baseline, one DELETE, the purge ($POLICY)" >&2
single baseline "SELECT 1;"
single delete "DELETE FROM auth.refresh_tokens WHERE $DUE_SQL;" "SELECT count(*) FROM auth.refresh_tokens;"
single purge "CALL auth.run_token_cleanup();" \
    "SELECT (SELECT count(*) FROM auth.refresh_tokens),
            (SELECT status || '/' || rotated_deleted || '/' || batches FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1);"
read -r base _ <"$WORK/baseline.result"
read -r delete delete_left <"$WORK/delete.result"
read -r purge purge_left purge_run <"$WORK/purge.result"
[ -z "$KEEP" ] || cp "$WORK"/callgrind.* "$KEEP"/
[ "$delete_left" = "$purge_left" ] ||
    die "the DELETE left $delete_left token rows and the purge $purge_left: they did not delete the same rows"
IFS=/ read -r status deleted batches <<<"$purge_run"
[ "$status" = ok ] || die "the purge ended '$status', not 'ok'"

cat <<REPORT
rows $ROWS ($LAYOUT layout), $deleted due deleted by each; purge: $POLICY, $batches batches
baseline (start-up, pg_prewarm): $base instructions
one DELETE:                      $((delete - base)) instructions
CALL auth.run_token_cleanup():   $((purge - base)) instructions
one DELETE / the purge:          $(awk -v d="$((delete - base))" -v p="$((purge - base))" 'BEGIN { printf "%.3f", d / p }')
REPORT
