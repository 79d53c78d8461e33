#!/usr/bin/env bash
# The production read path on one machine: a streaming (hot standby) replica
# of the local PostgreSQL on 127.0.0.1:5433, and PgBouncer in transaction
# pooling mode on 127.0.0.1:6432 in front of it. Both come from the
# distribution's packages (installed if missing, as root) and run as the
# `postgres` user from their own directory, so the primary's own cluster is
# untouched apart from one pg_hba line that lets loopback replication in.
#
#   scripts/replica.sh          start (idempotent) and print DATABASE_READ_URL
#   scripts/replica.sh stop     stop both and remove their directory
#   scripts/replica.sh status   succeed when both are up (the replica streaming)
#
# Reads: DATABASE_READ_URL=postgres://postgres@127.0.0.1:6432/<database>
set -euo pipefail

PRIMARY_PORT=${SVC_PRIMARY_PORT:-5432}
REPLICA_PORT=${SVC_REPLICA_PORT:-5433}
BOUNCER_PORT=${SVC_PGBOUNCER_PORT:-6432}
DIR=${SVC_REPLICA_DIR:-/var/tmp/svc-read-path}
DATA=$DIR/replica

SCRIPT=replica
source "$(dirname "$0")/lib.sh"
as_postgres() { runuser -u postgres -- "$@"; }
primary() { psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -AtqX "$@"; }

# The replica and PgBouncer run as the postgres user: starting them takes root.
[[ $(id -u) -eq 0 ]] || exec sudo "$0" "$@"
cd "$(dirname "$0")/.."

bin_dir() {
    local version
    version=$(primary -c 'show server_version_num')
    echo "/usr/lib/postgresql/$((version / 10000))/bin"
}

stop() {
    if [[ -f $DIR/pgbouncer.pid ]]; then
        kill "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null || true
    fi
    if [[ -f $DATA/postmaster.pid ]]; then
        as_postgres "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$DIR"
    log "stopped and removed $DIR"
}

ensure_packages() {
    command -v pgbouncer >/dev/null && return 0
    install_packages pgbouncer
}

# Loopback replication connections, trusted like every other local connection here.
allow_replication() {
    local hba
    hba=$(primary -c 'show hba_file')
    if ! grep -qE '^host\s+replication\s+postgres\s+127\.0\.0\.1/32' "$hba"; then
        printf 'host replication postgres 127.0.0.1/32 trust\n' >>"$hba"
        primary -c 'select pg_reload_conf()' >/dev/null
        log "allowed loopback replication in $hba"
    fi
}

replica_streams() {
    [[ $(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -AtqX \
        -c 'select pg_is_in_recovery()' 2>/dev/null) == t ]] &&
        [[ -n $(primary -c "select 1 from pg_stat_replication where application_name = 'svc_replica'") ]]
}

start_replica() {
    replica_streams && return 0
    # Anything half there (stopped, or too far behind to catch up) is rebuilt.
    if [[ -f $DATA/postmaster.pid ]]; then
        as_postgres "$(bin_dir)/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null || true
    fi
    rm -rf "$DATA"
    install -d -o postgres -g postgres -m 700 "$DIR" "$DATA"
    log "taking a base backup of 127.0.0.1:$PRIMARY_PORT"
    as_postgres "$(bin_dir)/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres \
        -D "$DATA" -X stream -c fast -R -d "application_name=svc_replica"
    # Debian keeps the primary's configuration outside its data directory, so
    # the copy has none: give the replica its own.
    as_postgres tee "$DATA/postgresql.conf" >/dev/null <<EOF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
hot_standby = on
max_connections = 100
shared_buffers = 128MB
EOF
    as_postgres tee "$DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    as_postgres touch "$DATA/pg_ident.conf"
    as_postgres "$(bin_dir)/pg_ctl" -D "$DATA" -l "$DIR/replica.log" -w start >/dev/null
    local deadline=$((SECONDS + 60))
    until replica_streams; do
        ((SECONDS < deadline)) || die "the replica does not stream (see $DIR/replica.log)"
        sleep 0.5
    done
    log "streaming replica on 127.0.0.1:$REPLICA_PORT"
}

start_bouncer() {
    answers "$BOUNCER_PORT" && return 0
    as_postgres tee "$DIR/userlist.txt" >/dev/null <<<'"postgres" ""'
    # Transaction pooling, as in production. svc's read pool uses unnamed
    # statements, which PgBouncer 1.18 can pool; its startup options
    # (statement_timeout) are dropped here and belong on the replica's role.
    as_postgres tee "$DIR/pgbouncer.ini" >/dev/null <<EOF
[databases]
* = host=127.0.0.1 port=$REPLICA_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $DIR
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options,application_name
pidfile = $DIR/pgbouncer.pid
logfile = $DIR/pgbouncer.log
EOF
    as_postgres pgbouncer -d -q "$DIR/pgbouncer.ini"
    local deadline=$((SECONDS + 20))
    until answers "$BOUNCER_PORT"; do
        ((SECONDS < deadline)) || die "PgBouncer does not answer (see $DIR/pgbouncer.log)"
        sleep 0.2
    done
    log "PgBouncer (transaction pooling) on 127.0.0.1:$BOUNCER_PORT"
}

case ${1:-start} in
stop) stop ;;
status) answers "$BOUNCER_PORT" && replica_streams ;;
start)
    answers "$PRIMARY_PORT" || scripts/services.sh
    ensure_packages
    allow_replication
    start_replica
    start_bouncer
    echo "DATABASE_READ_URL=postgres://postgres@127.0.0.1:$BOUNCER_PORT/${SVC_DATABASE_NAME:-svc}"
    ;;
*) die "usage: $0 [start|stop|status]" ;;
esac
