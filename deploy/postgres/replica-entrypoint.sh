#!/bin/bash
# Streaming replica: on first start clone the primary with pg_basebackup (-R writes
# standby.signal and primary_conninfo), then run postgres as a hot standby.
set -euo pipefail

: "${PRIMARY_HOST:?}" "${REPLICATION_PASSWORD:?}" "${REPLICATION_SLOT:?}" "${PGDATA:?}"
export PGPASSWORD="$REPLICATION_PASSWORD"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -h "$PRIMARY_HOST" -p 5432 -U replicator; do
        echo "waiting for $PRIMARY_HOST"; sleep 2
    done
    rm -rf "${PGDATA:?}"/*
    pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
        -X stream -R -S "$REPLICATION_SLOT" --checkpoint=fast --progress
    chmod 0700 "$PGDATA"
fi

# max_locks_per_transaction: at least the primary's (docker-compose.yml), or a hot standby refuses to start
exec postgres -c hot_standby=on -c hot_standby_feedback=on -c max_locks_per_transaction=256
