# Sourced by stack.sh and bench/prepare.sh: points svc at the local services in a
# database, queues and keys named $NAME, and empties them (no rows, no queued
# messages, no cached keys from a previous run), then migrates. The caller
# runs `forget_named || true` again when it is done (in an EXIT trap, so
# that a failure there cannot change the caller's exit code).
#   NAME and svc (the binary) must be set.

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$NAME
export REDIS_URL=redis://127.0.0.1:6379
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
export SVC_QUEUE_PREFIX=$NAME SVC_CACHE_PREFIX=$NAME: SVC_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}

# Drops the database, keys, queues and exchanges named $NAME: before a run,
# so that it starts empty, and after it, so that nothing is left behind.
# Keys go with UNLINK: a pending-marker hash can hold hundreds of thousands
# of ids, and DEL would hold Redis for as long as freeing it takes.
# (The broker tools are absent where RabbitMQ runs in a container; there a
# leftover queue is drained by the consumer before the load starts.)
forget_named() {
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)"
    if command -v redis-cli >/dev/null; then
        # SCAN by pages of 10,000: after a benchmark Redis holds about a
        # million cached records, and redis-cli --scan asks for 10 at a time.
        local cursor=0 page
        while :; do
            mapfile -t page < <(redis-cli --raw scan "$cursor" match "$NAME:*" count 10000)
            cursor=${page[0]:-0}
            if ((${#page[@]} > 1)); then redis-cli unlink "${page[@]:1}" >/dev/null; fi
            [[ $cursor != 0 ]] || break
        done
    fi
    if command -v rabbitmqctl >/dev/null; then
        # Side by side: each rabbitmqctl takes a second or more to start.
        local queue deleting=()
        for queue in "$NAME.data.ingest" "$NAME.data.dead"; do
            rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 &
            deleting+=($!)
        done
        # rabbitmqctl has no command that deletes an exchange.
        rabbitmqctl -q eval "[rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, X), false, <<\"svc\">>)
            || X <- [<<\"$NAME.data\">>, <<\"$NAME.data.dlx\">>]]." >/dev/null 2>&1 &
        deleting+=($!)
        wait "${deleting[@]}" || true
    fi
}

forget_named
$svc migrate
