#!/usr/bin/env bash
# Fault 9, a long offline device, in release: a till and a shelf sensor
# replay a day of buffered batches from seq 1 after a reboot, half of them
# acknowledged before the outage; once against the same server, once
# across a server restart. Pass: 0 duplicates, 0 missing, verify ok; the
# day-old shelf counts the late-window rule refuses are kept as rejected
# rows.
#
#   tests/chaos/offline_replay.sh
#
# Knobs (environment):
#   BATCHES  till batches over the day, 20 events each; the sensor has a
#            quarter as many (5760: one every 15 s)
#   RUNS     runs (3)
#   OUT      where logs go (target/chaos/offline_replay)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/chaos/offline_replay}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
export TILLSTREAM_OFFLINE_BATCHES=${BATCHES:-5760}

cargo build --release -p tillstream-tests --tests
status=0
for i in $(seq 1 "$RUNS"); do
    log="$OUT/run-$i.log"
    echo "== run $i of $RUNS: $TILLSTREAM_OFFLINE_BATCHES till batches; $(uptime | sed 's/.*load/load/'); log $log"
    if cargo test --release -p tillstream-tests --test e2e offline:: -- \
        --nocapture --test-threads 1 >"$log" 2>&1; then
        grep -E '^offline' "$log" || true
    else
        tail -30 "$log"
        echo "FAILED: run $i (see $log)"
        status=1
    fi
done
exit $status
