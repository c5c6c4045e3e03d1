# Running test suites and counting their results: sourced by run-all.sh and
# hostile/sanitizers.sh. Each suite prints "ok -" / "not ok -" lines.
SUITES_OUT=$(mktemp)
SUITES_STATUS=0
trap 'rm -f "$SUITES_OUT"' EXIT

# suite NAME COMMAND...: run it, show its output, keep its results.
suite() {
    local name=$1; shift
    local before
    before=$(wc -l <"$SUITES_OUT")
    echo "=== $name"
    "$@" 2>&1 | tee -a "$SUITES_OUT"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "=== $name FAILED (exit $rc)"
        # A suite that failed without saying which test still counts once.
        tail -n +$((before + 1)) "$SUITES_OUT" | grep -q '^not ok ' ||
            echo "not ok - $name exited $rc" | tee -a "$SUITES_OUT"
        SUITES_STATUS=1
    fi
}

# The totals line; fails if anything failed.
suites_end() {
    local passed failed
    passed=$(grep -c '^ok ' "$SUITES_OUT")
    failed=$(grep -c '^not ok ' "$SUITES_OUT")
    echo
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$SUITES_STATUS" -eq 0 ]
}
