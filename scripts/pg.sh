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
#
# A second, managed-like cluster (RDS, Cloud SQL, Azure) runs beside it:
#
#   scripts/pg.sh start-managed    create and start it, print the deployer's URL
#   scripts/pg.sh url-managed      print that URL
#   scripts/pg.sh stop-managed     stop it
#   scripts/pg.sh destroy-managed  stop it and remove its files
#
# It lives in $PGHOME-managed, on the first free port from 54430 up. TCP only
# over TLS with scram-sha-256 (hostssl; no host or trust line for TCP), with a
# CA (ca.crt) and a server certificate for localhost and 127.0.0.1 made with
# openssl at set-up, plus a second CA (other-ca.crt) that signed nothing the
# server shows, for tests that must see a certificate refused. pg_cron is
# preloaded for the `postgres` database and created there by the superuser, as
# a provider does; its jobs connect over the unix socket (cron.host), which
# the `local` line lets in. The application database `app` is owned by
# `deployer`, a non-superuser with CREATEROLE and a generated password, granted
# what providers grant their admin role: USAGE on schema cron and EXECUTE on
# cron.schedule_in_database and cron.alter_job.
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
# The managed-like cluster: see the header.
MANAGED=0
FIRST_PORT=54329
LAST_PORT=54429
MANAGED_DB=app
MANAGED_ROLE=deployer

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
    # Static checks of the PL/pgSQL routines (tests/plpgsql_check.rs).
    [ -f "/usr/lib/postgresql/$PGVERSION/lib/plpgsql_check.so" ] || missing+=("postgresql-$PGVERSION-plpgsql-check")
    command -v psql >/dev/null || missing+=("postgresql-client-$PGVERSION")
    [ "$MANAGED" -eq 0 ] || command -v openssl >/dev/null || missing+=("openssl")
    # The OAuth client that drives the reference service
    # (tests/reference_service.rs): Debian's python3 with oauthlib.
    /usr/bin/python3 -c 'import requests_oauthlib' 2>/dev/null || missing+=("python3-requests-oauthlib")
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
    if [ "$MANAGED" -eq 1 ]; then
        echo "postgres://$MANAGED_ROLE:$(cat "$PGHOME/$MANAGED_ROLE.password")@localhost:$(cat "$(port_file)")/$MANAGED_DB?sslmode=verify-full&sslrootcert=$PGHOME/ca.crt"
    else
        echo "postgres://postgres@127.0.0.1:$(cat "$(port_file)")/$DBNAME"
    fi
}

running() {
    [ -f "$PGDATA/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
    local port
    for port in $(seq "${1:-$FIRST_PORT}" "$LAST_PORT"); do
        if port_free "$port"; then echo "$port"; return 0; fi
    done
    die "no free port in $FIRST_PORT-$LAST_PORT"
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

# A CA, a server certificate it signs for localhost and 127.0.0.1, and a
# second CA that signs nothing the server shows.
make_certificates() {
    local dir="$PGHOME" days=3650
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=token-janitor test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=token-janitor other CA" \
        -keyout "$dir/other-ca.key" -out "$dir/other-ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    chmod 600 "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir/server.key" "$dir/server.crt"
    chmod 644 "$dir/ca.crt" "$dir/other-ca.crt"
}

init_managed_cluster() {
    mkdir -p "$PGHOME"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGHOME"
    make_certificates
    openssl rand -hex 16 >"$PGHOME/$MANAGED_ROLE.password"
    as_owner "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=reject \
        -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
# token-janitor managed-like cluster: TLS only, pg_cron in 'postgres'
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGHOME'
ssl = on
ssl_cert_file = '$PGHOME/server.crt'
ssl_key_file = '$PGHOME/server.key'
password_encryption = 'scram-sha-256'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.host = '$PGHOME'
cron.timezone = 'UTC'
max_connections = 50
CONF
    # TCP only over TLS with a password; the unix socket (set-up, and the jobs
    # pg_cron starts through cron.host) trusts the local system.
    cat >"$PGDATA/pg_hba.conf" <<HBA
local   all  all                 trust
hostssl all  all  127.0.0.1/32   scram-sha-256
HBA
}

# What a provider does before handing over the admin role, and the database
# that role owns.
provision_managed() {
    local port="$1" password
    password="$(cat "$PGHOME/$MANAGED_ROLE.password")"
    as_owner "$PGBIN/psql" -q -h "$PGHOME" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT format('CREATE ROLE %I LOGIN CREATEROLE PASSWORD %L', '$MANAGED_ROLE', '$password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$MANAGED_ROLE') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$MANAGED_DB', '$MANAGED_ROLE')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$MANAGED_DB') \gexec
GRANT USAGE ON SCHEMA cron TO $MANAGED_ROLE;
GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text, boolean),
                          cron.alter_job(bigint, text, text, text, text, boolean) TO $MANAGED_ROLE;
SQL
}

start() {
    install_packages
    if running; then
        url
        return 0
    fi
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        if [ "$MANAGED" -eq 1 ]; then init_managed_cluster; else init_cluster; fi
    fi
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
    if [ "$MANAGED" -eq 1 ]; then
        provision_managed "$port"
    elif ! "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
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

command="${1:-}"
case "$command" in
    *-managed)
        MANAGED=1
        PGHOME="$PGHOME-managed"
        PGDATA="$PGHOME/data"
        FIRST_PORT=54430
        LAST_PORT=54529
        command="${command%-managed}"
        ;;
esac

case "$command" in
    start) start ;;
    url) running || die "cluster in $PGHOME is not running: run scripts/pg.sh start${1#"$command"}"; url ;;
    stop) stop ;;
    crash) stop immediate ;;
    destroy) stop; rm -rf "$PGHOME" ;;
    *) echo "usage: $0 start|url|stop|crash|destroy[-managed]" >&2; exit 2 ;;
esac
