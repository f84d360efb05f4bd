#!/usr/bin/env bash
# Fault 5, bad networks, in release: 5% loss, 100 ± 50 ms delay (which
# reorders), a 30 s full partition, through tillstream-chaos-relay (this
# kernel has no netem). Pass: every event acknowledged, and stored, exactly
# once.
#
#   tests/chaos/bad_network.sh            the e2e test, RUNS times (default 3),
#                                         seeds 1..RUNS; prints each run's
#                                         figures. Logs in $OUT (default
#                                         target/chaos/bad_network).
#   tests/chaos/bad_network.sh loadgen    real processes: `tillstream serve`,
#                                         the relay, and tillstream-loadgen
#                                         through it with --verify.
#
# The test's shape comes from TILLSTREAM_BADNET_* (see tests/tests/
# bad_network.rs, Plan): DEVICES (100), ENDPOINTS (4), EVERY_S (1),
# EVENTS_PER_BATCH (5), PARTITION_AFTER_S (10), PARTITION_FOR_S (30),
# FAULTS_FOR_S (partition end + 5), SEND_FOR_S (faults end + 10),
# DRAIN_S (30), LOSS (0.05), SEED. For example, a bigger fleet:
#
#   TILLSTREAM_BADNET_DEVICES=1000 tests/chaos/bad_network.sh
#
# The loadgen mode takes EVENTS (30000), RATE (events/s, 500), BATCH (5),
# PARTITION_AFTER_S (20), PARTITION_FOR_S (30), FAULTS_FOR_S (55), SEED (1).
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/chaos/bad_network}
mkdir -p "$OUT"

run_tests() {
    local runs=${RUNS:-3}
    for i in $(seq 1 "$runs"); do
        local log="$OUT/test-$i.log"
        echo "== run $i of $runs (seed ${TILLSTREAM_BADNET_SEED:-$i}), log $log"
        if ! TILLSTREAM_BADNET_SEED=${TILLSTREAM_BADNET_SEED:-$i} \
            cargo test --release -p tillstream-tests --test e2e \
            bad_network::every_event -- --nocapture >"$log" 2>&1; then
            tail -40 "$log"
            echo "FAILED: run $i (see $log)"
            exit 1
        fi
        grep -E '^(events |relay: |clients: |ack latency|  [a-zA-Z]|    lossy)' "$log" || true
    done
}

# Prints the first value of "PREFIX<value>" in FILE, waiting up to 60 s.
wait_for() {
    local file=$1 prefix=$2
    for _ in $(seq 1 600); do
        local v
        v=$(sed -n "s|^.*${prefix}\([^ ]*\).*$|\1|p" "$file" | head -1)
        if [[ -n $v ]]; then
            echo "$v"
            return
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$prefix' in $file" >&2
    return 1
}

run_loadgen() {
    cargo build --release -p tillstream-tests --bins
    cargo build --release -p tillstream-loadgen
    local bin=target/release
    # Globals: the EXIT trap runs after this function returned.
    data=$(mktemp -d)
    pids=()
    # Stop what this script started, by pid, whatever happens.
    trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$data"' EXIT

    "$bin/tillstream-under-test" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 \
        --data-dir "$data" --shards 2 2>"$OUT/server.log" &
    pids+=($!)
    local quic http
    quic=$(wait_for "$OUT/server.log" "tillstream listening on ")
    http=$(wait_for "$OUT/server.log" "HTTP API on ")

    "$bin/tillstream-chaos-relay" --server "$quic" --seed "${SEED:-1}" \
        --partition-after-s "${PARTITION_AFTER_S:-20}" \
        --partition-for-s "${PARTITION_FOR_S:-30}" \
        --faults-for-s "${FAULTS_FOR_S:-55}" \
        --stats-every-s 10 >"$OUT/relay.log" 2>&1 &
    pids+=($!)
    local relay
    relay=$(wait_for "$OUT/relay.log" "relay listening on ")
    echo "server $quic ($http), relay $relay"

    local status=0
    "$bin/tillstream-loadgen" --server "$relay" --ca "$data/tls/cert.pem" --http "$http" \
        --events "${EVENTS:-30000}" --rate "${RATE:-500}" --batch-size "${BATCH:-5}" \
        --give-up-after 300 --verify --report "$OUT/loadgen.json" \
        2>"$OUT/loadgen.log" || status=$?
    kill -TERM "${pids[1]}"
    wait "${pids[1]}" || true
    cat "$OUT/loadgen.log"
    grep -E '^relay (phase|summary)' "$OUT/relay.log"
    echo "loadgen exit status $status (report $OUT/loadgen.json)"
    return "$status"
}

case ${1:-test} in
test) run_tests ;;
loadgen) run_loadgen ;;
*)
    echo "usage: $0 [test|loadgen]" >&2
    exit 2
    ;;
esac
