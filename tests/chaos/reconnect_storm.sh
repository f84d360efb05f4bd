#!/usr/bin/env bash
# Fault 8, reconnect storm, at full size in release: 10,000 devices, every
# connection dropped at once by killing `tillstream serve` and starting it
# again on the same address and data directory; each device has a batch in
# flight. Pass: every device reconnects, every event is stored exactly once
# (verify ok, 0 missing, 0 duplicates), server memory stays under its bound.
# The 10 s target is checked too when STRICT=1.
#
#   tests/chaos/reconnect_storm.sh
#
# Knobs (environment):
#   DEVICES  devices (10000)          RUNS    runs (3); medians are printed
#   DROP     kill | term (kill)       STRICT  1: fail a run slower than 10 s
#   IDLE_S   the devices' QUIC idle timeout, which also bounds a handshake
#            (client default 5)
#   OUT      where logs go (target/chaos/reconnect_storm)
#
# Timing figures depend on the machine, and on what else runs on it: the
# load average is printed before each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/chaos/reconnect_storm}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
export TILLSTREAM_STORM_DEVICES=${DEVICES:-10000}
export TILLSTREAM_STORM_DROP=${DROP:-kill}
export TILLSTREAM_STORM_STRICT=${STRICT:-0}
if [[ -n ${IDLE_S:-} ]]; then export TILLSTREAM_STORM_IDLE_S=$IDLE_S; fi

cargo build --release -p tillstream-tests --tests --bins
summaries="$OUT/summaries.txt"
: >"$summaries"
status=0
for i in $(seq 1 "$RUNS"); do
    log="$OUT/run-$i.log"
    echo "== run $i of $RUNS: $TILLSTREAM_STORM_DEVICES devices, drop by $TILLSTREAM_STORM_DROP; $(uptime | sed 's/.*load/load/'); log $log"
    if cargo test --release -p tillstream-tests --test e2e storm:: -- \
        --nocapture --test-threads 1 >"$log" 2>&1; then
        grep -E '^storm: ' "$log" || true
        grep -E '^storm-summary ' "$log" >>"$summaries" || true
    else
        tail -30 "$log"
        echo "FAILED: run $i (see $log)"
        status=1
    fi
done

# Median of each numeric field over the runs that passed.
if [[ -s $summaries ]]; then
    echo "== medians over $(wc -l <"$summaries") run(s)"
    for key in reconnect_p50_s reconnect_p99_s reconnect_last_s conn_per_s \
        connect_failures server_peak_mib clients_peak_mib; do
        sed -n "s/.* $key=\([0-9.]*\).*/\1/p" "$summaries" | sort -g |
            awk -v k="$key" '{v[NR]=$1} END {m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "  %-18s %s\n", k, m}'
    done
    echo "  per run: missing=$(sed -n 's/.* missing=\([0-9]*\).*/\1/p' "$summaries" | paste -sd,)" \
        "duplicates=$(sed -n 's/.* duplicates=\([0-9]*\).*/\1/p' "$summaries" | paste -sd,)" \
        "verify_ok=$(sed -n 's/.* verify_ok=\([a-z]*\).*/\1/p' "$summaries" | paste -sd,)"
fi
exit $status
