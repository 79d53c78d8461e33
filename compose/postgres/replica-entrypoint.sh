#!/bin/bash
# A streaming hot standby of the primary: on first start, a base backup that
# writes its own recovery settings (-R); afterwards, plain postgres.
set -euo pipefail
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    rm -rf "${PGDATA:?}"/*
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    until PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup -h "$PRIMARY_HOST" -U replicator \
        -D "$PGDATA" -X stream -S replica1 -R -c fast; do
        echo "waiting for the primary to take a base backup" >&2
        sleep 2
    done
fi
exec postgres -c hot_standby=on -c max_connections=200
