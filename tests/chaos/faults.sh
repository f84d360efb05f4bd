#!/usr/bin/env bash
# The reliability tests (issue 3's nine faults) in a release build, each
# RUNS times (default 3), with the long settings CI does not use: 20+
# SIGKILLs, a minute of double load on slow storage, 10,000 reconnecting
# devices. Prints each run's figure lines; logs go to $OUT (default
# target/chaos/faults).
#
#   tests/chaos/faults.sh                 every fault
#   tests/chaos/faults.sh crash overload  only these test modules
#
# Modules: crash (kill -9), power_loss, full_disk (needs root: tmpfs),
# overload (slow storage), bad_network, restart (SIGTERM drain, shard
# changes), storm (reconnect storm), offline (long-offline replay).
# Knobs (environment): TILLSTREAM_CHAOS_KILLS (20), TILLSTREAM_CHAOS_RATE
# (4000 events/s), TILLSTREAM_CHAOS_SEED (from the clock; printed),
# TILLSTREAM_OVERLOAD_SECS (60 here, 10 in CI), TILLSTREAM_STORM_DEVICES
# (10000 here), and the TILLSTREAM_BADNET_* of bad_network.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/chaos/faults}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
export TILLSTREAM_OVERLOAD_SECS=${TILLSTREAM_OVERLOAD_SECS:-60}
export TILLSTREAM_STORM_DEVICES=${TILLSTREAM_STORM_DEVICES:-10000}
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(crash power_loss full_disk overload bad_network restart storm offline)

cargo build --release -p tillstream-tests --tests --bins
status=0
for m in "${modules[@]}"; do
    for i in $(seq 1 "$RUNS"); do
        log="$OUT/$m-$i.log"
        echo "== $m, run $i of $RUNS (log $log)"
        if cargo test --release -p tillstream-tests --test e2e "$m::" -- \
            --nocapture --include-ignored --test-threads 1 >"$log" 2>&1; then
            grep -E "^(kill -9 chaos|power loss|ack before|full disk|overload|SIGTERM drain|shard changes|storm|offline|reconnect|replay|bad network|tillstream verify)" "$log" | cut -c1-400 || true
        else
            tail -30 "$log"
            echo "FAILED: $m run $i (see $log)"
            status=1
        fi
    done
done
exit $status
