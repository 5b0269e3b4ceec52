#!/usr/bin/env bash
# pg.sh — a throwaway local PostgreSQL 15 cluster with pg_cron preloaded.
#
#   scripts/pg.sh start    install missing packages (as root), create and start the
#                          cluster, print its DATABASE_URL; reuses a running cluster
#   scripts/pg.sh url      print the DATABASE_URL of the running cluster
#   scripts/pg.sh stop     stop the cluster
#   scripts/pg.sh crash    stop it the way a crash would (immediate: no
#                          checkpoint; the next start replays the WAL)
#   scripts/pg.sh destroy  stop it and remove its files
#
# The cluster lives in $PGHOME (default: target/pg under the repository), listens
# on 127.0.0.1 only, on the first free port from 54329 up, with trust
# authentication: it is for tests and demos, never for real data.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGHOME="${PGHOME:-$ROOT/target/pg}"
# As root the server runs as postgres, which must be able to reach PGHOME; a
# checkout under a private home directory falls back to a folder in /var/tmp.
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$(dirname "$PGHOME")" 2>/dev/null \
    && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
    PGHOME="/var/tmp/token-janitor-pg-$(echo "$ROOT" | md5sum | cut -c1-8)"
fi
PGDATA="$PGHOME/data"
PGVERSION=15
PGBIN="/usr/lib/postgresql/$PGVERSION/bin"
DBNAME="${PGDATABASE_NAME:-token_janitor}"
READY_TIMEOUT_S=60

log() { echo "pg.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Server binaries refuse to run as root; as root they run as the postgres user.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_packages() {
    local missing=()
    [ -x "$PGBIN/postgres" ] || missing+=("postgresql-$PGVERSION")
    [ -f "/usr/lib/postgresql/$PGVERSION/lib/pg_cron.so" ] || missing+=("postgresql-$PGVERSION-cron")
    command -v psql >/dev/null || missing+=("postgresql-client-$PGVERSION")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or run as root"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

port_file() { echo "$PGHOME/port"; }

url() {
    [ -f "$(port_file)" ] || die "no cluster in $PGHOME: run scripts/pg.sh start"
    echo "postgres://postgres@127.0.0.1:$(cat "$(port_file)")/$DBNAME"
}

running() {
    [ -f "$PGDATA/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
    local port
    for port in $(seq "${1:-54329}" 54429); do
        if port_free "$port"; then echo "$port"; return 0; fi
    done
    die "no free port in 54329-54429"
}

wait_ready() {
    local port="$1" deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$PGHOME/server.log" >&2 || true
            die "server not ready after ${READY_TIMEOUT_S}s (log: $PGHOME/server.log)"
        fi
        sleep 0.2
    done
}

init_cluster() {
    mkdir -p "$PGHOME"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGHOME"
    as_owner "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
# token-janitor throwaway cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGHOME'
shared_preload_libraries = 'pg_cron'
cron.database_name = '$DBNAME'
cron.timezone = 'UTC'
max_connections = 200
shared_buffers = 1GB
max_wal_size = 4GB
fsync = on
CONF
}

start() {
    install_packages
    if running; then
        url
        return 0
    fi
    [ -f "$PGDATA/PG_VERSION" ] || init_cluster
    local port attempt
    # Keep the port of an earlier start when it is still free.
    if [ -f "$(port_file)" ] && port_free "$(cat "$(port_file)")"; then
        port="$(cat "$(port_file)")"
    else
        port="$(pick_port)"
    fi
    # A port that looked free can be taken by the time the server binds it
    # (another cluster starting at once): then try the next free one.
    for attempt in 1 2 3; do
        echo "$port" >"$(port_file)"
        if as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGHOME/server.log" -o "-p $port" -w -t "$READY_TIMEOUT_S" start >/dev/null; then
            break
        fi
        if [ "$attempt" -eq 3 ] || ! tail -n 5 "$PGHOME/server.log" | grep -q "could not create any TCP/IP sockets"; then
            tail -n 20 "$PGHOME/server.log" >&2
            die "server did not start (log: $PGHOME/server.log)"
        fi
        log "port $port is taken; trying another"
        port="$(pick_port "$((port + 1))")"
    done
    wait_ready "$port"
    if ! "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" | grep -q 1; then
        "$PGBIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DBNAME"
    fi
    url
}

stop() {
    if running; then
        as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -m "${1:-fast}" -w stop >/dev/null
    fi
}

case "${1:-}" in
    start) start ;;
    url) running || die "cluster in $PGHOME is not running: run scripts/pg.sh start"; url ;;
    stop) stop ;;
    crash) stop immediate ;;
    destroy) stop; rm -rf "$PGHOME" ;;
    *) echo "usage: $0 start|url|stop|crash|destroy" >&2; exit 2 ;;
esac
