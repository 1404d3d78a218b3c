#!/bin/bash
# Runs once, on first start of the primary (docker-entrypoint-initdb.d):
# pgvector, a replication role, one physical slot per replica, pg_hba for streaming.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v repl_password="$REPLICATION_PASSWORD" <<'SQL'
CREATE EXTENSION IF NOT EXISTS vector;
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_password';
SELECT pg_create_physical_replication_slot('replica_1');
SELECT pg_create_physical_replication_slot('replica_2');
SQL

echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
