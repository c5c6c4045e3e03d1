# Shared by the integration tests: a scratch folder, starting and stopping
# usbd-lua, and TAP-style results that tests/run-all.sh counts.
# Source it from a test script run at the top of the repository.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USBD=${USBD_BIN:-$TOP/usbd-lua}   # make test-asan points this at its build
SCRATCH=$(mktemp -d /tmp/usbd-test.XXXXXX)
PASSED=0
FAILED=0
SERVER_PID=
SERVER_LOG=

cleanup() {
    blockdev_detach
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null
    wait 2>/dev/null
    [ -n "${KEEP_SCRATCH:-}" ] || rm -rf "$SCRATCH"
}
trap cleanup EXIT

# need_tools TOOL...: each is installed, or one failure and the test ends.
need_tools() {
    for tool; do
        command -v "$tool" >/dev/null || { not_ok "$tool is installed (make deps)"; finish; exit 1; }
    done
}

# The served export as a real block device: nbdfuse makes $URI a file,
# losetup makes the file $LOOP; $MNT is a mount point for it.
# blockdev_detach unmounts $MNT and lets go of both (cleanup does too).
FUSE_DIR="$SCRATCH/fuse"
MNT="$SCRATCH/mnt"
LOOP=
FUSE_PID=
blockdev_attach() {
    mkdir -p "$FUSE_DIR" "$MNT"
    nbdfuse "$FUSE_DIR/disk" "$URI" &
    FUSE_PID=$!
    for _ in $(seq 100); do [ -e "$FUSE_DIR/disk" ] && break; sleep 0.05; done
    LOOP=$(losetup -f --show "$FUSE_DIR/disk")
}
blockdev_detach() {
    mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    [ -n "$FUSE_PID" ] && { fusermount3 -u "$FUSE_DIR" 2>/dev/null; wait "$FUSE_PID" 2>/dev/null; }
    LOOP= FUSE_PID=
}

ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok - $*"; }
# check DESCRIPTION COMMAND...: ok if the command succeeds.
check() {
    local what=$1; shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# start_server NAME ARGS...: usbd-lua ARGS... on $SCRATCH/NAME.sock; sets
# SOCK, URI, SERVER_PID, SERVER_LOG. Waits until the socket answers, for at
# most SERVER_START_SECONDS (10; under valgrind a server takes 5-10 s to
# start on a loaded machine, so tests/hostile/sanitizers.sh raises it).
# For a server with --tls, URI_TLS holds what a client adds to the URI:
# e.g. "alice@|&tls-psk-file=keys.psk" (a user, |, then the query's
# credentials); URI is then nbds+unix://.
start_server() {
    local name=$1; shift
    SOCK="$SCRATCH/$name.sock"
    if [ -n "${URI_TLS:-}" ]; then
        URI="nbds+unix://${URI_TLS%%|*}/?socket=$SOCK${URI_TLS#*|}"
    else
        URI="nbd+unix:///?socket=$SOCK"
    fi
    SERVER_LOG="$SCRATCH/$name.log"
    "$USBD" -U "$SOCK" "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local deadline=$((SECONDS + ${SERVER_START_SECONDS:-10}))
    while :; do
        nbdinfo --can connect "$URI" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.05
    done
    echo "# server did not start within ${SERVER_START_SECONDS:-10} s: $(cat "$SERVER_LOG")"
    return 1
}

# stop_server: SIGTERM, wait, and leave its exit status in SERVER_STATUS.
stop_server() {
    SERVER_STATUS=
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID"
    SERVER_STATUS=$?
    SERVER_PID=
}

finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# start_tcp_server NAME ARGS...: usbd-lua -p PORT ARGS... on a free port;
# sets PORT, SERVER_PID, SERVER_LOG. Waits for it to print its URI, which
# it does once listening (a server that refuses clients, or wants TLS,
# cannot be asked with nbdinfo).
start_tcp_server() {
    local name=$1; shift
    SERVER_LOG="$SCRATCH/$name.log"
    local tries
    for tries in 1 2 3 4 5; do
        PORT=$((20000 + RANDOM % 20000))
        "$USBD" -p "$PORT" "$@" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        local deadline=$((SECONDS + ${SERVER_START_SECONDS:-10}))
        while kill -0 "$SERVER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            grep -q "^nbds\?://.*:$PORT/" "$SERVER_LOG" && return 0
            sleep 0.05
        done
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
        grep -q 'Address already in use' "$SERVER_LOG" || break
    done
    echo "# server did not start: $(cat "$SERVER_LOG")"
    return 1
}
