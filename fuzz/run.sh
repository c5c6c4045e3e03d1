#!/usr/bin/env bash
# Run the libFuzzer targets built by `make fuzz-build` (build-fuzz/fuzz_*).
#
#   fuzz/run.sh fuzz [SECONDS]   fuzz each target for SECONDS (default 60),
#                                starting from fuzz/corpus/TARGET; new inputs
#                                go to build-fuzz/corpus/TARGET, crashes to
#                                build-fuzz/crash-TARGET-*
#   fuzz/run.sh replay           run every committed input once: the seeds in
#                                fuzz/corpus/ and the findings kept as
#                                regression tests in fuzz/regressions/
#
# Output is TAP-style ("ok - ..."), ending with "N passed, N failed".
# To keep a finding: minimise it (build-fuzz/fuzz_T -minimize_crash=1 FILE),
# copy it to fuzz/regressions/T/NAME, fix the bug, commit both.
set -u
cd "$(dirname "$0")/.."
mode=${1:-replay}
seconds=${2:-${FUZZ_SECONDS:-60}}
targets=(handshake request)
# Build (or bring up to date) the targets first; make fuzz does this anyway.
if command -v "${SAN_CC:-clang}" >/dev/null; then
    make -s fuzz-build >/dev/null || echo "# make fuzz-build failed"
fi
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }

for t in "${targets[@]}"; do
    bin=build-fuzz/fuzz_$t
    if [ ! -x "$bin" ]; then
        not_ok "fuzz $t: $bin is not built (make fuzz-build)"
        continue
    fi
    log=build-fuzz/fuzz-$t.log
    dirs=(fuzz/corpus/$t)
    [ -d fuzz/regressions/$t ] && dirs+=(fuzz/regressions/$t)
    if [ "$mode" = replay ]; then
        n=$(find "${dirs[@]}" -type f | wc -l)
        # -runs=0: load (so run) every input, then stop.
        if "$bin" -runs=0 -timeout=20 "${dirs[@]}" >"$log" 2>&1; then
            ok "fuzz $t: all $n committed inputs replay clean"
        else
            not_ok "fuzz $t: replaying committed inputs failed"
            grep -E 'ERROR|SUMMARY|fuzz_|Test unit written' "$log" | head -20 | sed 's/^/# /'
        fi
        continue
    fi
    mkdir -p build-fuzz/corpus/$t
    if "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
            -artifact_prefix=build-fuzz/crash-$t- build-fuzz/corpus/$t "${dirs[@]}" >"$log" 2>&1; then
        execs=$(awk '/number_of_executed_units/ {print $NF}' "$log")
        rate=$(awk '/average_exec_per_sec/ {print $NF}' "$log")
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
        ok "fuzz $t: ${seconds}s, $execs executions ($rate/s), $cov, no crash"
    else
        not_ok "fuzz $t: crash or failure (log: $log)"
        grep -E 'ERROR|SUMMARY|fuzz_|Test unit written|artifact' "$log" | head -20 | sed 's/^/# /'
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
