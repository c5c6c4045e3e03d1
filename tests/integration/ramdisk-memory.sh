#!/usr/bin/env bash
# The ramdisk takes memory only for what is written, on any kernel: with or
# without a shared zero page (without one, merely reading never-written
# anonymous memory allocates it). Reading a whole 1 GiB ramdisk leaves the
# server's resident memory where it was, 256 MiB written take 256 MiB that
# a trim gives back, and the data reads back byte for byte across chunk and
# table boundaries. Memory is the server's VmRSS, read from /proc.
. "$(dirname "$0")/../lib.sh"

status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER_PID/status"; }
rss_kb() { status_kb VmRSS; }
MiB=1048576

start_server ram "$TOP/devices/ramdisk.lua" size=1G || { not_ok "a 1G ramdisk starts"; finish; exit 1; }

# 1. A client reads every byte (--no-extents: no skipping what block status
# calls holes). The reply buffers in flight are bounded by the server's
# --max-inflight-bytes and recycled; nbdcopy is kept to 1 connection and 4
# requests of 256 KiB so that they are a few MiB at most. Where the kernel
# has a shared zero page, reading unwritten memory maps that page instead
# of allocating, which RSS does not show, but the page tables do: 2 MiB of
# them per GiB mapped. So both are watched.
rss0=$(rss_kb) pte0=$(status_kb VmPTE)
check "nbdcopy reads the whole 1G ramdisk" \
    nbdcopy --no-extents --connections=1 --requests=4 --request-size=262144 "$URI" null:
rss1=$(rss_kb) pte1=$(status_kb VmPTE)
echo "# RSS before the read $rss0 kB, after $rss1 kB; page tables $pte0 kB -> $pte1 kB"
check "reading 1 GiB of never-written ramdisk leaves RSS within 8 MiB of the start ($rss0 -> $rss1 kB)" \
    [ $((rss1 - rss0)) -lt 8192 ]
check "... and maps no memory for it: page tables grow under 512 kB ($pte0 -> $pte1 kB)" \
    [ $((pte1 - pte0)) -lt 512 ]
check "... and it reads as zeroes" qemu-io -f raw "$URI" -c 'read -P 0 0 64M' -c 'read -P 0 1009M 15M'

# 2. 256 MiB written take memory; trimmed, they give it back. One round
# first, so that the server's caches (request buffers, the Lua heap) are
# in their steady state before the baseline.
qio() { qemu-io -f raw "$URI" "$@" >"$SCRATCH/qio.out" 2>&1 || { cat "$SCRATCH/qio.out" >&2; return 1; }; }
qio -c 'write -P 0x5a 256M 256M' -c 'discard 256M 256M' || not_ok "warm-up write and discard"
base=$(rss_kb)
check "qemu-io writes 256 MiB" qio -c 'write -P 0x5a 256M 256M'
full=$(rss_kb)
check "writing 256 MiB takes at least 250 MiB ($base -> $full kB)" [ $((full - base)) -ge $((250 * 1024)) ]
check "... which read back" qio -c 'read -P 0x5a 256M 256M'
check "qemu-io discards the 256 MiB" qio -c 'discard 256M 256M'
trimmed=$(rss_kb)
echo "# RSS before writing $base kB, written $full kB, trimmed $trimmed kB"
check "the trim gives the memory back: RSS within 8 MiB of before ($base -> $trimmed kB)" \
    [ $((trimmed - base)) -lt 8192 ]
check "... and the range reads as zeroes" qio -c 'read -P 0 256M 256M'

# 3. Byte for byte at odd offsets: across 64 KiB chunk boundaries, across
# the 64 MiB boundary between chunk tables, at the very end of the device.
writes=(-c 'write -P 0x11 65535 131074' -c 'write -P 0x22 67108861 7'
        -c 'write -P 0x33 1073671824 70000' -c 'write -P 0x44 200000 3')
reads=(-c 'read -P 0x11 65535 131074' -c 'read -P 0x22 67108861 7'
       -c 'read -P 0x33 1073671824 70000' -c 'read -P 0x44 200000 3'
       -c 'read -P 0 0 65535' -c 'read -P 0 196609 3391' -c 'read -P 0 200003 65533'
       -c 'read -P 0 67108800 61' -c 'read -P 0 67108868 100' -c 'read -P 0 1073600000 71824')
check "qemu-io writes patterns at odd offsets" qio "${writes[@]}"
check "... each reads back, and every byte around them is zero" qio "${reads[@]}"
# Zeroing part of a chunk keeps the rest of it; a discard of whole 4 KiB
# blocks inside a chunk, too.
check "write_zeroes of 1000 bytes at an odd offset inside written data" \
    qio -c 'write -z 70001 1000'
check "... zeroes exactly those bytes" \
    qio -c 'read -P 0x11 65535 4466' -c 'read -P 0 70001 1000' -c 'read -P 0x11 71001 125608'
check "a discard of 8 KiB inside a chunk" qio -c 'discard 139264 8192'
check "... zeroes exactly those bytes" \
    qio -c 'read -P 0x11 71001 68263' -c 'read -P 0 139264 8192' -c 'read -P 0x11 147456 49153'

stop_server
check "the server exits 0 on SIGTERM" [ "$SERVER_STATUS" = 0 ]
finish
