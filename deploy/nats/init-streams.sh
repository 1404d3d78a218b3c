#!/bin/sh
# Create the federation streams with 3 replicas (JetStream Raft groups); idempotent.
# Names/subjects: OMEGA_SHARD carries this shard's accumulators up to its region,
# OMEGA_BROADCAST carries consolidated patterns back down. Keep them in step with
# omega.constellation's federation settings.
set -eu

add() {
  name=$1; subjects=$2; max_age=$3
  if nats stream info "$name" >/dev/null 2>&1; then
    echo "stream $name exists"
  else
    nats stream add "$name" --subjects "$subjects" --replicas 3 --storage file \
      --retention limits --discard old --max-age "$max_age" --dupe-window 2m --defaults
  fi
}

add OMEGA_SHARD "omega.shard.${OMEGA_SHARD_ID}.>" 24h
add OMEGA_BROADCAST "omega.broadcast.>" 24h
nats stream report
