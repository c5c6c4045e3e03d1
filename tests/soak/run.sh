#!/usr/bin/env bash
# Data-integrity soak on every shipped device: random reads, writes, trims,
# write_zeroes and flushes from several connections checked against a model
# (tests/soak/soak.c, libnbd), then fio --verify=crc32c with several jobs,
# each on a region of its own.
#
#   tests/soak/run.sh                    every device below, SOAK_SECONDS each
#   tests/soak/run.sh SCRIPT [ARGS...]   one device script, e.g.
#       tests/soak/run.sh devices/ramdisk.lua size=256M
#   SOAK_SECONDS (20)  SOAK_CONNECTIONS (4)  SOAK_SEED (random; printed)
#   USBD_BIN: the usbd-lua to test (e.g. build-asan/usbd-lua)
. "$(dirname "$0")/../lib.sh"
USBD=${USBD_BIN:-$USBD}
SECONDS_EACH=${SOAK_SECONDS:-20}
CONNS=${SOAK_CONNECTIONS:-4}
SEED=${SOAK_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
SOAK="$TOP/build/soak"
if [ ! -x "$SOAK" ] || [ "$SOAK" -ot "$TOP/tests/soak/soak.c" ]; then
    ${CC:-cc} -O2 -g -Wall -Wextra -pthread -o "$SCRATCH/soak" "$TOP/tests/soak/soak.c" \
        $(pkg-config --cflags --libs libnbd) || {
        echo "not ok - soak: cannot build tests/soak/soak.c (libnbd-dev?)"; echo "0 passed, 1 failed"; exit 1; }
    SOAK="$SCRATCH/soak"
fi

# The devices: NAME SCRIPT ARGS... (one line each; a script that does not
# exist yet is skipped). @SCRATCH@ becomes this run's scratch folder.
DEVICES=(
    "ramdisk devices/ramdisk.lua size=64M"
    "filedisk devices/filedisk.lua path=@SCRATCH@/filedisk.img size=64M"
    "cowdisk examples/cowdisk.lua -- filedisk path=@SCRATCH@/cowbase.img size=64M"
    "cryptdisk examples/cryptdisk.lua key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f -- filedisk path=@SCRATCH@/cryptbase.img size=64M"
    "dedupdisk devices/dedupdisk.lua dir=@SCRATCH@/dedup size=64M memtable=2M map_cache=4 records=8"
    "dedupdisk-lz4 devices/dedupdisk.lua dir=@SCRATCH@/dedupc size=64M compress=lz4 memtable=2M"
)
if [ $# -gt 0 ]; then DEVICES=("$(basename "$1" .lua) $*"); fi

soak_device() {
    local name=$1 script=$2; shift 2
    local args=("${@//@SCRATCH@/$SCRATCH}")
    if [ ! -f "$TOP/$script" ] && [ ! -f "$script" ]; then
        echo "# $name: $script does not exist yet, skipped"
        return
    fi
    [ -f "$script" ] || script="$TOP/$script"
    start_server "soak-$name" "$script" "${args[@]}" || { not_ok "$name: server starts"; return; }

    local out rc
    # A deduplicating device gets data from a small pool of blocks.
    local pool=0 mixed=0
    case $name in dedup*) pool=64 ;; esac
    case " $* " in *" compress="*) mixed=1 ;; esac
    out=$(SOAK_POOL=$pool SOAK_POOL_MIXED=$mixed timeout $((SECONDS_EACH * 3 + 120)) "$SOAK" "$URI" "$SECONDS_EACH" "$CONNS" "$SEED" 2>&1)
    rc=$?
    echo "$out" | sed 's/^soak:/# soak:/'
    local summary
    summary=$(grep '^soak:' <<<"$out" | sed 's/^soak: //')
    check "$name: $CONNS connections, ${SECONDS_EACH}s of random I/O against the model (seed $SEED): ${summary:-no summary}" \
        [ "$rc" = 0 ]
    VERIFIED=$((VERIFIED + $(grep -oE '[0-9]+ bytes verified' <<<"$out" | awk '{print $1}' || echo 0)))

    # fio: each job writes its own 8 MiB region with mixed block sizes and
    # queue depth 8, then reads it all back checking crc32c headers.
    local fio_out
    fio_out=$(timeout 300 fio --name=verify --ioengine=nbd --uri="$URI" --rw=randwrite \
        --bssplit=4k/50:64k/30:512k/20 --iodepth=8 --numjobs=4 --size=8M --offset_increment=8M \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && ! grep -qiE 'verify.*(fail|bad)|crc32c: verify' <<<"$fio_out"; then
        ok "$name: fio --verify=crc32c, 4 jobs on their own regions, all intact"
        VERIFIED=$((VERIFIED + 32 * 1024 * 1024))
    else
        not_ok "$name: fio --verify=crc32c (exit $rc)"
        echo "$fio_out" | tail -25 | sed 's/^/# /'
    fi

    stop_server
    check "$name: server exits 0 after the soak" [ "$SERVER_STATUS" = 0 ]
    # A store with a check of its own must pass it afterwards.
    local a
    for a in "${args[@]}"; do
        case $name:$a in
            dedup*:dir=*)
                local fsck_out
                fsck_out=$(luajit "$TOP/tools/dedup-fsck.lua" "${a#dir=}" 2>&1)
                check "$name: the store check is clean afterwards ($(tail -1 <<<"$fsck_out"))" [ $? = 0 ]
                [ -n "$fsck_out" ] && echo "$fsck_out" | head -10 | sed 's/^/# /' ;;
        esac
    done
    if grep -qE 'AddressSanitizer|runtime error|LeakSanitizer' "$SERVER_LOG"; then
        not_ok "$name: sanitizer report in the server log"
        grep -E -A15 'AddressSanitizer|runtime error|LeakSanitizer' "$SERVER_LOG" | head -40 | sed 's/^/# /'
    fi
}

# The soak itself is tested: a device that loses one write in 500 must fail it.
soak_catches_liar() {
    start_server soak-liar "$TOP/tests/soak/liar.lua" size=16M || { not_ok "liar: server starts"; return; }
    local out rc
    out=$(timeout 60 "$SOAK" "$URI" 2 2 "$SEED" 2>&1)
    rc=$?
    check "the soak catches a device that loses writes ($(grep -oE '[0-9]+ mismatches' <<<"$out"))" \
        [ "$rc" = 1 ] && grep -qE '[1-9][0-9]* mismatches' <<<"$out"
    timeout 120 fio --name=liar --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=8 --size=8M \
        --verify=crc32c --verify_fatal=1 --verify_state_save=0 >/dev/null 2>&1
    rc=$?
    check "fio --verify catches a device that loses writes (exit $rc)" [ "$rc" != 0 ]
    stop_server
}

VERIFIED=0
[ $# -gt 0 ] || soak_catches_liar
for d in "${DEVICES[@]}"; do
    # shellcheck disable=SC2086
    soak_device $d
done
echo "# $VERIFIED bytes verified in all"
finish
