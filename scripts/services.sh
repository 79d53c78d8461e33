#!/usr/bin/env bash
# Makes PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1 and creates the
# `svc` database. Idempotent: a service that already answers is left alone;
# one that is installed but stopped is started; on a fresh Debian or Ubuntu
# machine, run as root, missing ones are installed from the distribution's
# packages first.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379
AMQP_PORT=5672
DATABASE=${SVC_DATABASE_NAME:-svc}

SCRIPT=services
source "$(dirname "$0")/lib.sh"

ensure_postgres() {
    answers $PG_PORT && return 0
    local fresh=0
    if ! command -v pg_ctlcluster >/dev/null; then
        install_packages postgresql postgresql-client
        fresh=1
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    if ((fresh == 1)); then
        # A development box: let local TCP clients in as `postgres` without a
        # password, as the default DATABASE_URL expects.
        local hba=/etc/postgresql/$version/main/pg_hba.conf
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL $PG_PORT 60
}

ensure_redis() {
    answers $REDIS_PORT && return 0
    command -v redis-server >/dev/null || install_packages redis-server
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/svc.log
    wait_for Redis $REDIS_PORT 30
}

ensure_rabbitmq() {
    answers $AMQP_PORT && return 0
    command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
    as_root rabbitmq-server -detached || true
    wait_for RabbitMQ $AMQP_PORT 120
}

ensure_database() {
    command -v psql >/dev/null || { log "no psql: \`svc migrate\` will create the database"; return 0; }
    local exists
    exists=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")
    if [[ $exists != 1 ]]; then
        psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$DATABASE\""
        log "created database $DATABASE"
    fi
}

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_database
log "ready: postgres://postgres@127.0.0.1:$PG_PORT/$DATABASE redis://127.0.0.1:$REDIS_PORT amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
