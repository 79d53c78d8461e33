# Sourced by stack.sh and bench/prepare.sh: points svc at the local services in a
# database, queues and keys named $NAME, and empties them (no rows, no queued
# messages, no cached keys from a previous run), then migrates.
#   NAME and svc (the binary) must be set.

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$NAME
export REDIS_URL=redis://127.0.0.1:6379
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
export SVC_QUEUE_PREFIX=$NAME SVC_CACHE_PREFIX=$NAME: SVC_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}

# (The broker tools are absent where RabbitMQ runs in a container; a leftover
# queue there is drained by the consumer before the load starts.)
# Drops the database and the keys named $NAME; also for cleaning up after.
forget_named() {
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)"
    if command -v redis-cli >/dev/null; then
        redis-cli --scan --pattern "$NAME:*" | xargs -r redis-cli del >/dev/null
    fi
}

forget_named
$svc migrate
if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl purge_queue "$NAME.data.ingest" >/dev/null 2>&1 || true
fi
