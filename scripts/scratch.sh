# scratch.sh — sourced by the measurement scripts that work on scratch
# databases of the server DATABASE_URL names: checks DATABASE_URL, builds
# token-janitor (debug) unless TJ names a binary, and sets
#   SERVER  DATABASE_URL without its database name;
#   PREFIX  tj_<name>_<pid>: every scratch database is PREFIX_<suffix>;
#   WORK    a temporary folder;
# and a trap that drops the scratch databases and WORK on exit, whatever
# happens. `sql DB STATEMENT` runs one statement in scratch database DB
# (its full name) and prints the result unaligned.
#
#   ROOT=… . "$ROOT/scripts/scratch.sh" NAME
: "${DATABASE_URL:?set DATABASE_URL to any database on the server (scripts/pg.sh start prints one)}"
if [ -z "${TJ:-}" ]; then
    cargo build --quiet --manifest-path "$ROOT/Cargo.toml" --bin token-janitor
    TJ="$ROOT/target/debug/token-janitor"
fi

SERVER="${DATABASE_URL%/*}"
PREFIX="tj_$1_$$"
WORK="$(mktemp -d)"
cleanup() {
    for db in $(psql -qXAt "$DATABASE_URL" -c "SELECT datname FROM pg_database WHERE datname LIKE '${PREFIX}\_%'" 2>/dev/null); do
        psql -qX "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
sql() { psql -qXAt -v ON_ERROR_STOP=1 "$SERVER/$1" -c "$2"; }
