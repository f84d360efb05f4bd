#!/usr/bin/env bash
# Runs the tillstream fuzz targets with cargo-fuzz (libFuzzer) and prints
# each one's final figures.
#
#   tests/fuzz/run.sh                    # all targets, 1800 s each
#   SECS=60 tests/fuzz/run.sh hello      # one target, one minute
#
# Environment:
#   SECS              seconds per target (default 1800)
#   PARALLEL          targets run at once (default 2)
#   CARGO_TARGET_DIR  honoured (cargo reads it); set it to keep the fuzz
#                     build apart from the workspace's target/
#   LOG_DIR           where libFuzzer's output goes (default tests/fuzz/logs)
#   FUZZ_ARGS         extra libFuzzer flags, e.g. "-rss_limit_mb=4096"
#   NICE              niceness of builds and fuzzers (default 19)
#
# Exits non-zero if any target crashed; the crashing input is then in
# tests/fuzz/artifacts/<target>/ (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

SECS="${SECS:-1800}"
PARALLEL="${PARALLEL:-2}"
LOG_DIR="${LOG_DIR:-$here/logs}"
NICE="${NICE:-19}"
FUZZ_ARGS="${FUZZ_ARGS:-}"
ALL_TARGETS=(frame_header batch_validate core_apply hello credentials)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${ALL_TARGETS[@]}"); fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    nice -n "$NICE" cargo install cargo-fuzz --locked
fi

mkdir -p "$LOG_DIR"
# Seeds: real frames encoded by the protocol crate (idempotent).
nice -n "$NICE" cargo +nightly run --quiet --example seed >/dev/null
# Build once, so parallel runs do not wait on each other's build.
nice -n "$NICE" cargo +nightly fuzz build >/dev/null 2>"$LOG_DIR/build.log" \
    || { cat "$LOG_DIR/build.log" >&2; exit 1; }

run_one() {
    local t="$1" log="$LOG_DIR/$1.log" rc=0
    mkdir -p "corpus/$t"
    # shellcheck disable=SC2086
    nice -n "$NICE" cargo +nightly fuzz run "$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 $FUZZ_ARGS >"$log" 2>&1 || rc=$?
    echo "$rc" >"$LOG_DIR/$t.rc"
}

pids=()
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do sleep 5; done
    echo "$(date -u +%H:%M:%S) start $t (${SECS}s)"
    run_one "$t" &
    pids+=($!)
done
wait "${pids[@]}" || true

failed=0
echo
for t in "${targets[@]}"; do
    log="$LOG_DIR/$t.log"
    rc="$(cat "$LOG_DIR/$t.rc" 2>/dev/null || echo '?')"
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    files="$(find "corpus/$t" -type f | wc -l)"
    crash="no"
    if [ "$rc" != 0 ]; then
        crash="YES (exit $rc): $(grep -m1 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$log" || echo 'see log')"
        failed=1
    fi
    echo "== $t"
    echo "   final:  ${last:-<no stats line>}"
    echo "   execs:  ${execs:-?}  exec/s: ${rate:-?}  corpus files: $files  crashed: $crash"
    echo "   log:    $log"
done
exit "$failed"
