#!/bin/sh
# Create the federation streams with 3 replicas (JetStream Raft groups); idempotent.
# Names/subjects (omega.constellation.federation.topology): OMEGA_SHARD carries each
# shard's CRDT accumulators up to its region, OMEGA_REGION each region's merge up to
# the hub, OMEGA_BROADCAST the hub's global state back down to every shard.
# max-age must exceed the roles' full-state checkpoint period (1 h): a restarted
# region or hub rebuilds its state by replaying its input stream.
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

add OMEGA_SHARD "omega.fed.shard.>" 24h
add OMEGA_REGION "omega.fed.region.>" 24h
add OMEGA_BROADCAST "omega.fed.global" 24h
nats stream report
