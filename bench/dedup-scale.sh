#!/usr/bin/env bash
# bench/dedup-scale.sh: the dedupdisk as its store grows (make bench-scale).
#
#   bench/dedup-scale.sh [GIB (32)] [DIR (/var/tmp)]
#   DDARGS="cache=128M" bench/dedup-scale.sh 8      more device arguments
#
# One fresh store in DIR: GIB GiB of unique data written as 1 MiB requests
# (qd8, GiB number i from fio's stream of seed i), and after every fourth
# GiB a copy of an earlier GiB (its stream again, written to a region of
# copies past the unique data); then 4 KiB random unique rewrites (qd32,
# 20 s) of the first GiB. After each GiB it prints the GiB's MiB/s, the
# server's RSS (anonymous and file-backed: the hash index is a shared file
# mapping), the store's size on disk, the metadata's share of it and the
# dedup ratio; every fourth GiB, the same writes through a filedisk into a
# fresh file on the same disk (the disk's own pace). Then the time to
# reopen the full store after a clean stop and after a kill -9 with 1 GiB
# written since its last flush (the page cache dropped both times).
#
# index= is sized by docs/devices/dedupdisk.md's rule (16 bytes per unique
# block); the memory the configuration allows is printed beside the RSS.
# The table goes to DIR/usbd-scale.*/scale.tsv; with gnuplot installed and
# PLOT=FILE.png set, a plot of MiB/s and RSS against GiB written.
set -u
cd "$(dirname "$0")/.." || exit 1
GIB=${1:-32}
WORK=$(mktemp -d "${2:-/var/tmp}/usbd-scale.XXXXXX")
trap 'kill -9 $PID 2>/dev/null; rm -rf "$WORK/store"' EXIT
STORE=$WORK/store SOCK=$WORK/s.sock URI="nbd+unix:///?socket=$WORK/s.sock"
G=$((1 << 30))
COPIES=$((GIB / 4))
SIZE=$(((GIB + COPIES + 1) * G))
INDEX=$((16 * GIB * G / 4096))
CACHE=64 MEMTABLE=64    # RocksDB's defaults (MiB), as the device's
ARGS=(dir="$STORE" "size=$SIZE" "index=$INDEX")
# shellcheck disable=SC2206  # DDARGS: more device arguments, split
ARGS+=(${DDARGS:-})
# The memory the configuration allows: the index, RocksDB's cache and two
# memtables, the record cache (16384 records of 1.3 KiB), the map cache
# (524288 entries of about 170 bytes).
BUDGET=$((INDEX / (1 << 20) + CACHE + 2 * MEMTABLE + 21 + 85))

wait_up() { # PID SOCKET LOG: until the server accepts a client; exit if it dies
    until nbdinfo --can connect "nbd+unix:///?socket=$2" 2>/dev/null; do
        kill -0 "$1" 2>/dev/null || { echo "the server died: $(tail -3 "$3")"; exit 1; }
        sleep 0.05
    done
}

start() { # LOG: start the server; T: the seconds until it accepts a client
    local t0
    rm -f "$SOCK"
    t0=$(date +%s.%N)
    ./usbd-lua -U "$SOCK" devices/dedupdisk.lua "${ARGS[@]}" >"$1" 2>&1 &
    PID=$!
    wait_up $PID "$SOCK" "$1"
    T=$(echo "$(date +%s.%N) - $t0" | bc)
}

write_gib() { # SEED AT_GIB [RW BS QD RUNTIME]: prints the write side's KiB/s and IOPS
    local rw=${3:-write} bs=${4:-1M} qd=${5:-8}
    fio --name=scale --ioengine=nbd --uri="${TARGET:-$URI}" --rw="$rw" --bs="$bs" --iodepth="$qd" \
        --refill_buffers --randseed="$1" --offset=$(($2 * G)) --size=$G ${6:+--runtime=$6 --time_based=1} \
        --output-format=terse --terse-version=3 | awk -F';' 'NF > 40 {print $48, $49}'
}

stat_of() { # NAME: the device statistic from the server's last SIGUSR1 report
    awk -v k="  $1:" 'index($0, k) == 1 {v = $2} END {print v}' "$WORK/server.log"
}

sample() { # GIB PHASE MIB/S
    local rss anon file disk meta ratio
    kill -USR1 $PID
    sleep 0.2
    read -r anon file < <(awk '/^RssAnon/ {a = $2} /^RssFile|^RssShmem/ {f += $2} END {print int(a / 1024), int(f / 1024)}' /proc/$PID/status)
    rss=$((anon + file))
    disk=$(du -sb "$STORE" | awk '{printf "%.2f", $1 / 2^30}')
    meta=$(stat_of dedup_metadata_bytes)
    ratio=$(stat_of dedup_ratio)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$rss" "$anon" "$file" "$disk" \
        "$(awk -v m="$meta" 'BEGIN {printf "%.1f", m / 2^20}')" "$ratio" | tee -a "$WORK/scale.tsv"
}

# The disk's own pace, beside the store's: the same 1 MiB writes into a
# fresh 1 GiB file through the filedisk (then removed), so that a disk
# that changes speed is not read as the store slowing down.
reference() { # GIB
    local ref=$WORK/ref.img sock=$WORK/ref.sock kib pid
    ./usbd-lua -U "$sock" devices/filedisk.lua path="$ref" size=$G >"$WORK/ref.log" 2>&1 &
    pid=$!
    wait_up $pid "$sock" "$WORK/ref.log"
    read -r kib _ < <(TARGET="nbd+unix:///?socket=$sock" write_gib 4242 0)
    kill $pid; wait $pid 2>/dev/null
    rm -f "$ref"
    printf '%s\tfiledisk\t%s\t-\t-\t-\t-\t-\t-\n' "$1" $((kib / 1024)) | tee -a "$WORK/scale.tsv"
}

echo "store: $STORE, $GIB GiB unique + $COPIES GiB of copies, index=$((INDEX >> 20))M; memory the configuration allows: $BUDGET MiB"
start "$WORK/server.log"
printf 'gib\tphase\tMiB/s\trss_MiB\tanon_MiB\tfile_MiB\tstore_GiB\tmetadata_MiB\tdedup_ratio\n' | tee "$WORK/scale.tsv"
written=0 copy=0
for ((i = 0; i < GIB; i++)); do
    ((i % 4 == 0)) && reference $written
    read -r kib _ < <(write_gib $((i + 1)) $i)
    written=$((written + 1))
    sample $written unique $((kib / 1024))
    if (((i + 1) % 4 == 0 && copy < COPIES)); then
        src=$((RANDOM % (i + 1)))
        read -r kib _ < <(write_gib $((src + 1)) $((GIB + copy)))
        copy=$((copy + 1)) written=$((written + 1))
        sample $written "copy-of-$src" $((kib / 1024))
    fi
done
reference $written
read -r _ iops < <(write_gib 7777 0 randwrite 4k 32 20)
echo "4K random unique rewrites, qd32, 20 s: $iops IOPS"
sample $written rand4k-iops "$iops"
echo "where the memory is, after them:$(grep '^  memory:' "$WORK/server.log" | tail -1 | cut -d: -f2-)"

kill $PID; wait $PID 2>/dev/null
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
start "$WORK/clean.log"
echo "reopen after a clean stop: $T s"
write_gib 9999 $((GIB + COPIES)) >/dev/null
kill -9 $PID; wait $PID 2>/dev/null
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
start "$WORK/unclean.log"
echo "reopen after kill -9 (1 GiB unflushed): $T s"
grep -v "^nbd+unix" "$WORK/unclean.log" | sed 's/^/  /'
kill $PID; wait $PID 2>/dev/null

if [ -n "${PLOT:-}" ] && command -v gnuplot >/dev/null; then
    gnuplot <<EOF
set terminal pngcairo size 900,500 font ",10"
set output "$PLOT"
set title "dedupdisk: $GIB GiB of unique 1 MiB writes (a copy after every 4), one store"
set xlabel "GiB written"
set ylabel "MiB/s of that GiB"
set y2label "server RSS, MiB"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key bottom right
set datafile separator "\t"
plot "$WORK/scale.tsv" using 1:(stringcolumn(2) eq "unique" ? \$3 : 1/0) with linespoints title "unique GiB, MiB/s", \
     "" using 1:(stringcolumn(2) ne "unique" && stringcolumn(2) ne "rand4k-iops" && stringcolumn(2) ne "filedisk" ? \$3 : 1/0) with points pt 7 title "copy of a GiB, MiB/s", \
     "" using 1:(stringcolumn(2) eq "filedisk" ? \$3 : 1/0) with linespoints dt 3 pt 6 title "the disk: 1 GiB through a filedisk, MiB/s", \
     "" using 1:(stringcolumn(2) ne "rand4k-iops" ? \$4 : 1/0) axes x1y2 with lines title "RSS (MiB)", \
     $BUDGET axes x1y2 with lines dt 2 title "configured memory (MiB)"
EOF
    echo "plot: $PLOT"
fi
echo "table: $WORK/scale.tsv"
