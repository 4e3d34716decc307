#!/usr/bin/env bash
# benches/fleet-on-one-host.sh: issue 14's "fleet on one host" run, as BENCHMARKS.md reports it.
#
# What it shows, on this machine (the CI box: 2 cores), with the local compute driver: N (2,000) redis
# instances created through the REST API, 16 in flight, each with its own trove-guestagent process and
# its own redis-server, and then
#   1. every instance ACTIVE and the broker alive; how long after the last create the 1-minute load
#      average falls below 1 (and the 60·ln(L) s an idle machine needs from the load L it started at,
#      plus the instantaneous demand, procs_running, which the average lags);
#   2. IDLE (600) seconds of the fleet left alone: CPU-seconds and % of one core per guest agent and
#      per redis-server (p50 / p95 / max), the services', RabbitMQ's and PostgreSQL's totals, and the
#      guests' and servers' RSS at the end;
#   3. one module reapply over all N instances, waiting until every one of them is current;
#   4. a restart of the broker (`rabbitmqctl stop_app`, then `start_app`): how long it was down, how
#      long until every guest reconnected (its TCP connection, from /proc; the broker's connection
#      count), reported again (service_statuses.updated_at after the broker's return; guests report
#      every --report-interval, 30 s) and every instance is ACTIVE on such a report, the load during
#      the recovery, and that no guest process was restarted.
# The report is markdown, printed at the end and kept in target/fleet-on-one-host-<UTC time>.md.
#
# How long: at N = 2,000 about 20 minutes: the creates a few minutes, the idle window IDLE seconds
# (10 minutes), the reapply well under a minute, the broker's recovery up to 5 minutes (it fails past
# that), then stopping 2,000 guests and their servers. Run it on an otherwise idle machine: its load
# figures are the machine's, not only this run's.
#
# It restarts the machine's RabbitMQ (127.0.0.1:5672): every other client of it (other runs, tests)
# is disconnected for a few seconds. For a full restart of the broker, not only its application:
#   BROKER_STOP='rabbitmqctl stop' BROKER_START='<how this machine starts it>' benches/fleet-on-one-host.sh
#
# Needs root (rabbitmqctl, and scripts/stack services installs and starts PostgreSQL and RabbitMQ).
# Knobs: N (instances, default 2000), IDLE (seconds, default 600), BROKER_STOP / BROKER_START; any
# further arguments go to trove-bench (say --report-interval 10, --keep-logs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
N=${N:-2000}
IDLE=${IDLE:-600}
BROKER_STOP=${BROKER_STOP:-rabbitmqctl stop_app}
BROKER_START=${BROKER_START:-rabbitmqctl start_app}

log() { printf '%s\n' "fleet-on-one-host: $*" >&2; }

# Release services, and the guest agent as guest images ship it (target/guest/trove-guestagent, which
# trove-bench prefers when it is built).
cargo build --release --workspace --bins
cargo build --profile guest -p trove-guestagent

# PostgreSQL and RabbitMQ running, and the broker's open-file limit checked against the fleet: a
# broker with Debian's 1,024 descriptors refuses connections (and fails with emfile) long before 2,000
# guests. `services` only warns about a broker it did not start; to let it restart one with the
# raised limit: TROVE_RESTART_BROKER=1 (or run `scripts/stack broker-limits` first).
TROVE_FLEET_SIZE=$N scripts/stack services

# The bench, the services it starts, the guests and their redis-servers inherit this shell's limit.
hard=$(ulimit -Hn)
ulimit -n "$hard"
log "open files: $(ulimit -Sn) (hard $hard); processes: $(ulimit -u); kernel.pid_max $(cat /proc/sys/kernel/pid_max)"

read -r load1 _ < /proc/loadavg
log "nproc $(nproc), load now $(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$load1" 'BEGIN { exit !(l >= 1) }'; then
    log "warning: the 1-minute load is $load1 before the run: the load figures will not be an idle machine's"
fi

out=target/fleet-on-one-host-$(date -u +%Y%m%dT%H%M%SZ).md
log "report: $out"
target/release/trove-bench reapply --mode real --n "$N" --rounds 1 --create-concurrency 16 \
    --idle-secs "$IDLE" --broker-restart \
    --broker-stop-cmd "$BROKER_STOP" --broker-start-cmd "$BROKER_START" \
    --label "fleet-on-one-host" "$@" | tee "$out"
