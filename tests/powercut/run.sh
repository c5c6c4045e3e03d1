#!/usr/bin/env bash
# Power cuts and kill -9 under a dedupdisk torture, in rounds. A round:
# the server on a store inside a cutfs mount (build/cutfs: writes not yet
# fsync'd are held in memory), tests/powercut/torture.py's load against it
# from 4 connections, then after a random time kill -9 of both, a cut
# (a random part of the unsynced writes reaches the backing directory, the
# rest is lost), a fresh mount, the server again (it must open the store),
# torture.py check (every block reads a version the model allows) and reuse
# (every content of the round written again reads back right: none is
# shared with a block that lost its bytes), a clean stop, dedup-fsck, and a
# sync of the mount.
#
#   tests/powercut/run.sh
#   POWERCUT_MODE      cut (default), or kill: kill -9 alone, on a plain
#                      directory (the page cache keeps every write)
#   POWERCUT_ROUNDS    rounds per device (5: some 2.5 minutes in all)
#   POWERCUT_DEVICES   device settings, each a name or ARG,ARG...:
#                      "plain lz4 verify" (plain; compress=lz4; verify=true)
#   POWERCUT_SEED      the run's seed (random; printed); with the same
#                      ROUNDS and DEVICES a run makes the same requests, kill
#                      times and cuts (where in the load a kill falls is up
#                      to timing)
#   POWERCUT_KEEP_GOING=1  keep a store that failed a round (default: the
#                      next round starts from a new store and model)
#   USBD_BIN           the usbd-lua to test; CUTFS_BIN the cutfs to use
. "$(dirname "$0")/../lib.sh"
USBD=${USBD_BIN:-$USBD}

# dedup-fsck's exit status from which a round fails: 1 leaks, 2 damage.
# Leaks are allowed after a crash for now; 1 once they are not.
FSCK_FAIL_AT=2

MODE=${POWERCUT_MODE:-cut}
ROUNDS=${POWERCUT_ROUNDS:-5}
DEVICES=${POWERCUT_DEVICES:-plain lz4 verify}
SEED=${POWERCUT_SEED:-$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')}
PY=/usr/bin/python3           # Debian's, where python3-libnbd is
# A hung server or check fails its round rather than the whole run.
TORTURE=(timeout 300 "$PY" "$TOP/tests/powercut/torture.py")
FSCK=(timeout 300 luajit "$TOP/tools/dedup-fsck.lua")
CUTFS=${CUTFS_BIN:-$TOP/build/cutfs}

case $MODE in cut | kill) ;; *) not_ok "POWERCUT_MODE is cut or kill, not $MODE"; finish; exit 1 ;; esac
need_tools nbdinfo luajit
"$PY" -c 'import nbd' 2>/dev/null || { not_ok "python3-libnbd is installed (make deps)"; finish; exit 1; }
if [ "$MODE" = cut ]; then
    need_tools fusermount3
    if [ -z "${CUTFS_BIN:-}" ] && { [ ! -x "$CUTFS" ] || [ "$CUTFS" -ot "$TOP/tests/powercut/cutfs.c" ]; }; then
        make -s -C "$TOP" build/cutfs >"$SCRATCH/make.log" 2>&1 ||
            { sed 's/^/# /' "$SCRATCH/make.log"; not_ok "build/cutfs builds (libfuse3-dev)"; finish; exit 1; }
    fi
fi

LOAD_PID= CUTFS_PID= MNT_NOW=
powercut_cleanup() {
    [ -n "$LOAD_PID" ] && kill -9 "$LOAD_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null
    unmount_cutfs
}
trap 'powercut_cleanup; cleanup' EXIT

# mount_cutfs BACKING MNT: a fresh cutfs mount; unmount_cutfs ends it.
mount_cutfs() {
    mkdir -p "$1" "$2"
    "$CUTFS" "$1" "$2" -f >>"$SCRATCH/cutfs.log" 2>&1 &
    CUTFS_PID=$! MNT_NOW=$2
    for _ in $(seq 100); do mountpoint -q "$2" && return 0; sleep 0.05; done
    echo "# cutfs did not mount: $(tail -5 "$SCRATCH/cutfs.log")"
    return 1
}
unmount_cutfs() {
    [ -n "$CUTFS_PID" ] || return 0
    # Not "mountpoint -q" first: after a cut even the mount's root fails.
    fusermount3 -u "$MNT_NOW" 2>/dev/null || fusermount3 -uz "$MNT_NOW" 2>/dev/null
    wait "$CUTFS_PID" 2>/dev/null
    CUTFS_PID= MNT_NOW=
}

# stop_server, but a server still there after 60 s is killed (status 137).
stop_bounded() {
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID"
    SERVER_STATUS=$? SERVER_PID=
}

# logged NAME COMMAND...: run it, keep its output in $SCRATCH/NAME.out and
# show it as comments; its status is the command's.
logged() {
    local name=$1; shift
    "$@" >"$SCRATCH/$name.out" 2>&1
    local rc=$?
    sed 's/^/# /' "$SCRATCH/$name.out"
    return $rc
}

device_args() {
    case $1 in
        plain) ;;
        lz4 | zstd) echo "compress=$1" ;;
        verify) echo "verify=true" ;;
        *) echo "${1//,/ }" ;;
    esac
}

# Figures for the closing summary.
ROUNDS_RUN=0 LOAD_FAILURES=() VIOLATION_ROUNDS=() OPEN_FAILURES=() REUSE_FAILURES=() FSCK_STATUS=() FSCK_CRASHED=()

# round DEVICE N: round N on DEVICE's store (STORE, STATE, BACK, MNT
# set by the caller). Returns 1 when the store should be started afresh.
round() {
    # From the run's seed, the device and the round's number alone, so that
    # POWERCUT_DEVICES=one-of-them replays that device's rounds.
    local dev=$1 n=$2 rseed
    rseed=$(printf '%s' "$SEED $dev $n" | cksum | cut -d' ' -f1)
    local args
    read -ra args <<<"$(device_args "$dev")"
    RANDOM=$rseed   # the round's kill time and cut, replayable
    local delay_ms=$((1500 + RANDOM % 4500)) pick=$((RANDOM % 5)) p drop_index=$((RANDOM % 3 != 0))
    case $pick in 0) p=0 ;; 1) p=1 ;; *) p=0.$(printf %03d $((RANDOM % 1000))) ;; esac
    local what="$dev round $n (seed $rseed)"
    ROUNDS_RUN=$((ROUNDS_RUN + 1))
    echo "# $what: kill -9 after $delay_ms ms$([ "$MODE" = cut ] && echo ", cut with P=$p")$([ "$MODE$drop_index" = cut1 ] && echo ", hash index lost");" \
        "replay: POWERCUT_MODE=$MODE POWERCUT_SEED=$SEED POWERCUT_ROUNDS=$n POWERCUT_DEVICES=$dev"
    if [ "$MODE" = cut ]; then
        mount_cutfs "$BACK" "$MNT" || { not_ok "$what: cutfs mounts"; return 1; }
    fi
    if ! start_server powercut-load -v "$TOP/devices/dedupdisk.lua" dir="$STORE" size=64M memtable=2M "${args[@]}"; then
        not_ok "$what: the server opens the store before the load"
        OPEN_FAILURES+=("$rseed(before)")
        return 1
    fi
    "$PY" "$TOP/tests/powercut/torture.py" load "$URI" --seed "$rseed" --state "$STATE" >"$SCRATCH/load.out" 2>&1 &
    LOAD_PID=$!
    sleep "$((delay_ms / 1000)).$(printf %03d $((delay_ms % 1000)))"
    # Both at once (the model on disk lists every request that was sent);
    # the load first, so that it never sees the server gone.
    kill -9 "$LOAD_PID" "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" "$LOAD_PID" 2>/dev/null
    SERVER_PID= LOAD_PID=
    sed 's/^/# /' "$SCRATCH/load.out"
    if grep -q "^load: request .* failed\|^load: connection failed" "$SCRATCH/load.out"; then
        grep -v "connected\|connection\|^nbd" "$SERVER_LOG" | head -8 | sed 's/^/# server: /'
        not_ok "$what: every request of the load succeeds"
        LOAD_FAILURES+=("$rseed")
    else
        ok "$what: every request of the load succeeds"
    fi
    if [ "$MODE" = cut ]; then
        local pending
        pending=$(cat "$MNT/.cutfs")
        echo "cut $rseed $p" >"$MNT/.cutfs" || { not_ok "$what: cutfs takes the cut"; return 1; }
        echo "# cutfs before the cut: $pending; $(tail -1 "$SCRATCH/cutfs.log")"
        unmount_cutfs
        mount_cutfs "$BACK" "$MNT" || { not_ok "$what: cutfs mounts again"; return 1; }
        # The hash index is never synced, and its dirty pages, mapped, are
        # still in the kernel at the cut: it comes back stale, and misses
        # the very contents whose records may have outlived their bytes, so
        # a rewrite of them would not be shared. In most rounds it is lost
        # whole, as when the cut drops its creation: the server rebuilds it
        # from the records, and a record that claims missing bytes is found.
        [ "$drop_index" = 1 ] && rm -f "$STORE/hashindex"
    fi
    # The store as the crash left it, checked on a copy (the hash index left
    # out: the check does not read it), before the server's open touches it.
    rm -rf "$SCRATCH/crashed"
    mkdir -p "$SCRATCH/crashed"
    for f in "$STORE"/*; do [ "${f##*/}" = hashindex ] || cp -r "$f" "$SCRATCH/crashed/"; done
    logged fsck-crashed "${FSCK[@]}" "$SCRATCH/crashed" | tail -6
    local rc=${PIPESTATUS[0]}
    FSCK_CRASHED+=("$rseed:$rc")
    if [ "$rc" -ge "$FSCK_FAIL_AT" ]; then
        not_ok "$what: dedup-fsck of the store as the crash left it exits $rc"
    else
        ok "$what: dedup-fsck of the store as the crash left it exits $rc"
    fi
    if ! start_server powercut -v "$TOP/devices/dedupdisk.lua" dir="$STORE" "${args[@]}"; then
        not_ok "$what: the server opens the store after the crash"
        OPEN_FAILURES+=("$rseed")
        SERVER_PID=
        return 1
    fi
    ok "$what: the server opens the store after the crash"
    local failed=0
    if logged check "${TORTURE[@]}" check "$URI" --state "$STATE"; then
        ok "$what: every block reads a version the model allows"
    else
        not_ok "$what: every block reads a version the model allows ($(grep -c '^VIOLATION' "$SCRATCH/check.out") shown)"
        VIOLATION_ROUNDS+=("$rseed:$(sed -n 's/.* \([0-9]*\) violations$/\1/p' "$SCRATCH/check.out")")
        failed=1
    fi
    if logged reuse "${TORTURE[@]}" reuse "$URI" --state "$STATE"; then
        ok "$what: the round's contents written again read back right"
    else
        not_ok "$what: the round's contents written again read back right"
        REUSE_FAILURES+=("$rseed")
        failed=1
    fi
    # What the server said, when the check or the reuse failed.
    [ "$failed" = 1 ] && grep -v "connected\|connection\|^nbd" "$SERVER_LOG" | head -8 | sed 's/^/# server: /'
    stop_bounded
    check "$what: the server stops cleanly on SIGTERM (status $SERVER_STATUS)" test "$SERVER_STATUS" = 0
    logged fsck "${FSCK[@]}" "$STORE" | tail -12
    rc=${PIPESTATUS[0]}
    FSCK_STATUS+=("$rseed:$rc")
    if [ "$rc" -ge "$FSCK_FAIL_AT" ]; then
        not_ok "$what: dedup-fsck exits $rc (0 clean, 1 leaks, 2 damage; fails from $FSCK_FAIL_AT)"
        failed=1
    else
        ok "$what: dedup-fsck exits $rc (0 clean, 1 leaks, 2 damage; fails from $FSCK_FAIL_AT)"
    fi
    if [ "$MODE" = cut ]; then
        echo sync >"$MNT/.cutfs" || { not_ok "$what: cutfs syncs"; return 1; }
        unmount_cutfs
    fi
    return $failed
}

start_ns=$(date +%s%N)
echo "# POWERCUT_MODE=$MODE POWERCUT_SEED=$SEED POWERCUT_ROUNDS=$ROUNDS POWERCUT_DEVICES=\"$DEVICES\""
i=0
for dev in $DEVICES; do
    i=$((i + 1))
    D="$SCRATCH/dev$i"
    BACK="$D/backing" MNT="$D/mnt" STATE="$D/state"
    if [ "$MODE" = cut ]; then STORE="$MNT/store"; else STORE="$BACK/store"; fi
    mkdir -p "$BACK"
    for n in $(seq "$ROUNDS"); do
        if ! round "$dev" "$n"; then
            [ -n "$SERVER_PID" ] && { kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=; }
            unmount_cutfs
            [ -n "${POWERCUT_KEEP_GOING:-}" ] && continue
            # The next round from scratch, so that one failure is not counted again.
            echo "# $dev: the next round starts from a new store"
            rm -rf "$BACK" "$STATE" "$STATE".*
            mkdir -p "$BACK"
        fi
    done
    [ "$MODE" = cut ] && unmount_cutfs
done
echo "# $ROUNDS_RUN rounds in $((($(date +%s%N) - start_ns) / 1000000000)) s ($MODE);" \
    "rounds with violations (seed:count): ${VIOLATION_ROUNDS[*]:-none};" \
    "open failures: ${OPEN_FAILURES[*]:-none}; failed load requests: ${LOAD_FAILURES[*]:-none}; reuse failures: ${REUSE_FAILURES[*]:-none};" \
    "dedup-fsck after the crash (seed:status): ${FSCK_CRASHED[*]:-none}; at the round's end: ${FSCK_STATUS[*]:-none}"
finish
