#!/usr/bin/env bash
# Every test: the Lua lint, C unit tests, busted specs, integration tests
# with real NBD clients, and the kernel path under qemu. Each suite prints TAP-style
# "ok -" / "not ok -" lines; the totals close the run.
set -u
cd "$(dirname "$0")/.."
. tests/suites.sh

suite "lint (luacheck)" tests/lint.sh
suite "unit tests (check)" tests/unit/run.sh
suite "specs (busted)" busted --lua=luajit -o TAP spec
for t in tests/integration/*.sh; do
    suite "integration: $(basename "$t" .sh)" "$t"
done
# Ceph RBD against throwaway single-node clusters (make deps installs Ceph).
for t in tests/ceph/rbd-*.sh; do
    suite "ceph: $(basename "$t" .sh)" "$t"
done
for t in tests/hostile/run.sh tests/soak/run.sh fuzz/run.sh; do suite "robustness: $t" "$t"; done
# The hostile clients again over TLS, and the TLS handshake's own cases.
suite "robustness: tests/hostile/run.sh --tls" tests/hostile/run.sh --tls
# The dedupdisk through kill -9 and power cuts (build/cutfs), in rounds.
suite "powercut: cutfs" tests/powercut/cutfs-check.sh
suite "powercut" tests/powercut/run.sh
if [ -z "${SKIP_KERNEL:-}" ] && [ -x tests/kernel/run.sh ]; then
    suite "kernel nbd driver under qemu" tests/kernel/run.sh
    # Debian 12's 6.12 kernel: nbd over netlink and ublk (the whole suite:
    # make test-kernel KERNEL=6.12).
    [ -n "${SKIP_KERNEL_612:-}" ] ||
        suite "kernel 6.12 under qemu: netlink nbd, ublk" env KERNEL=6.12 tests/kernel/run.sh multi ublk
fi
suites_end
