#!/usr/bin/env bash
# bench/run.sh: usbd-lua side by side with nbdkit, same fio jobs, same run.
#
#   bench/run.sh                 (what `make bench` runs, from the repo root)
#   BENCH_RUNTIME=10 BENCH_REPEAT=5 BENCH_GROUPS=ram bench/run.sh
#
# Every server of a group is started once and kept up for the whole group.
# A fill pass writes each one's whole disk once (so reads hit real data),
# then each round runs every job against every server back to back (the
# server order rotates from round to round), so machine noise hits all
# servers alike.  The table shows, per job and server, the median MiB/s and
# IOPS over the rounds, their spread ((max-min)/median), and the ratio of the
# group's first server (usbd-lua) to each of the others.
#
# The dedup group runs the dedupdisk beside the filedisk on the same disk
# (the reference), ZFS's deduplication (zfs-fuse: a fresh pool on a file on
# that disk, dedup=on, 4K records, served by nbdkit file) and nbdkit null
# (the ceiling); its ratios are the dedupdisk over each of them.
#
# Environment:
#   BENCH_GROUPS   groups to run, comma separated (default: ram,rbd)   [ram, file, crypt, mirror, stripe, dedup, dedupc, rbd, tls, tlsfile]
#   BENCH_CRYPT_ARGS  more cryptdisk arguments for the crypt group (sector=4096)
#   BENCH_RUNTIME  seconds per timed fio run (default 5)
#   BENCH_RAMP     fio ramp_time seconds before each timed run (default 0)
#   BENCH_REPEAT   rounds; the median is reported (default 3)
#   BENCH_JOBS     only these job ids, comma separated (default: all of the group)
#   BENCH_SERVERS  only these server ids, comma separated (default: all of the group)
#   BENCH_OUT      also write the table to this file
#   BENCH_FILEDIR  where the file group puts its 1 GiB image (default: the temp
#                  dir; must allow O_DIRECT, so not tmpfs)
#   BENCH_KEEP     keep the temp dir (fio JSON, server logs) and print its path
#   BENCH_CEPH_STORE  the rbd group's throwaway cluster: memstore (default) or bluestore
#   BENCH_BASELINE another built checkout: its dedupdisk runs beside this one's in
#                  the dedup and dedupc groups, its cryptdisk in the crypt group,
#                  its mirror and stripe in theirs
#                  (a change's cost, in the same run)
#
# Needs: fio (with the nbd and rbd engines), nbdkit + nbdkit-plugin-lua, nbdinfo
# (libnbd-bin), luajit (or lua) for bench/report.lua.  No jq.  The dedup
# group's ZFS peer needs zfs-fuse and /dev/fuse (and root, to start the
# daemon when none runs; stopped again at the end), else it is skipped.
#
# Adding a server: a srv_ID function that calls `spawn` (or `skip`), and
# LABEL[ID]; ENGINE[ID] replaces fio's nbd engine options for one that is
# not an NBD server (fio's rbd engine).  Adding a job: JOB[ID] (fio options) and JOBDESC[ID]; optionally
# JOBTAIL[ID] (options after the common ones, e.g. --time_based=0) and
# JOBPRE[ID] (a function run with the server's URI before each timed run).  Adding a
# group: a group_ID function setting G_DESC, G_SERVERS (subject first),
# G_JOBS, and optionally G_PREPARE (run once before the servers start) and
# G_FILL (run per server once it accepts connections).  A server that sets
# up more than its process (a daemon, a pool) adds a function to TEARDOWN,
# run once the group's servers have stopped (and at exit).
# shellcheck disable=SC2317  # functions here are called indirectly (srv_$id, group_$id)
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

BENCH_GROUPS=${BENCH_GROUPS:-ram,rbd}
BENCH_RUNTIME=${BENCH_RUNTIME:-5}
BENCH_RAMP=${BENCH_RAMP:-0}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_JOBS=${BENCH_JOBS:-}
BENCH_SERVERS=${BENCH_SERVERS:-}
BENCH_OUT=${BENCH_OUT:-}
BENCH_KEEP=${BENCH_KEEP:-}
START_TIMEOUT=${BENCH_START_TIMEOUT:-30}
SPAWN_SCHEME=nbd   # nbds for a server with --tls=require (SCHEME)

declare -A LABEL JOB JOBDESC ENGINE JOBTAIL JOBPRE SCHEME

###########################################################################
# Servers.  srv_ID SOCKET starts one server listening on SOCKET, with
# `spawn CMD...`, or declines with `skip REASON`.
###########################################################################
LABEL[usbd_ram]="usbd-lua"
srv_usbd_ram() {
	need_usbd devices/ramdisk.lua || return
	spawn ./usbd-lua devices/ramdisk.lua -U "$1" size=1G
}

# nbdkit's defaults: it picks the plugin's thread model (parallel for memory)
# and 16 threads; -f only keeps it in the foreground so we own its pid.
LABEL[nbdkit_memory]="nbdkit-memory"
srv_nbdkit_memory() {
	spawn nbdkit -f --exit-with-parent -U "$1" memory 1G
}

LABEL[nbdkit_lua]="nbdkit-lua"
srv_nbdkit_lua() {
	spawn nbdkit -f --exit-with-parent -U "$1" lua bench/nbdkit-ramdisk.lua size=1G
}

LABEL[usbd_file]="usbd-lua"
srv_usbd_file() {
	need_usbd devices/filedisk.lua || return
	spawn ./usbd-lua devices/filedisk.lua -U "$1" path="$DISK_IMG" direct=true
}

# The same with io_uring turned off: every read goes to a worker thread
# (the design choice in src/services/jobs.c, measured).
LABEL[usbd_file_threads]="usbd-threads"
srv_usbd_file_threads() {
	need_usbd devices/filedisk.lua || return
	USBD_IO_URING=0 spawn ./usbd-lua devices/filedisk.lua -U "$1" path="$DISK_IMG" direct=true
}

# nbdkit has no O_DIRECT; cache=none is its way past the page cache (it
# drops what it read), so both servers go to the disk.
LABEL[nbdkit_file]="nbdkit-file"
srv_nbdkit_file() {
	spawn nbdkit -f --exit-with-parent -U "$1" file "$DISK_IMG" cache=none
}

# The rbd group: one image in a throwaway single-node cluster (prepare_rbd),
# served by usbd-lua's rbddisk, by qemu-nbd through qemu's rbd driver, and
# written straight by fio's rbd engine into librbd (no NBD: the ceiling).
# All three share the image, so usbd-lua leaves librbd's exclusive lock to
# pass between them as it does by default (exclusive=false).
LABEL[usbd_rbd]="usbd-lua"
srv_usbd_rbd() {
	need_usbd devices/rbddisk.lua || return
	spawn ./usbd-lua devices/rbddisk.lua -U "$1" conf="$CEPH_CONF" image=bench exclusive=false
}

LABEL[qemu_nbd_rbd]="qemu-nbd"
srv_qemu_nbd_rbd() {
	command -v qemu-nbd >/dev/null || { skip "no qemu-nbd (qemu-utils)"; return; }
	spawn qemu-nbd -t -e 4 -f raw -k "$1" "rbd:rbd/bench:conf=$CEPH_CONF:id=admin"
}

LABEL[fio_rbd]="fio-rbd"
ENGINE[fio_rbd]="--ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench"
srv_fio_rbd() {
	fio --enghelp=rbd >/dev/null 2>&1 || { skip "fio has no rbd engine"; return; }
	SPAWN_CMD="fio ${ENGINE[fio_rbd]} (CEPH_CONF=$CEPH_CONF)" SRV_PID=none
}

# AES-256-XTS (examples/cryptdisk.lua) over the filedisk, beside the plain
# filedisk on the same file, both through the page cache: the cipher is the
# only difference. (The file holds random bytes, so reads decrypt noise.)
LABEL[usbd_crypt]="cryptdisk"
srv_usbd_crypt() {
	need_usbd examples/cryptdisk.lua || return
	spawn ./usbd-lua -U "$1" examples/cryptdisk.lua keyfile="$KEY_FILE" ${BENCH_CRYPT_ARGS:-} -- filedisk path="$DISK_IMG"
}

# The same with the steps of cached reads up to 1 MiB on the Lua thread
# (USBD_SPOT_MAX=1M; the default sends those of 32 KiB or more to a worker).
LABEL[usbd_crypt_spot]="crypt-spot"
srv_usbd_crypt_spot() {
	need_usbd examples/cryptdisk.lua || return
	USBD_SPOT_MAX=1048576 spawn ./usbd-lua -U "$1" examples/cryptdisk.lua keyfile="$KEY_FILE" ${BENCH_CRYPT_ARGS:-} -- filedisk path="$DISK_IMG"
}

# Another checkout's cryptdisk (BENCH_BASELINE), the same way.
LABEL[usbd_crypt_base]="crypt-baseline"
srv_usbd_crypt_base() {
	[[ -x ${BENCH_BASELINE:-}/usbd-lua ]] || { skip "no BENCH_BASELINE"; return; }
	spawn "$BENCH_BASELINE/usbd-lua" -U "$1" "$BENCH_BASELINE/examples/cryptdisk.lua" keyfile="$KEY_FILE" ${BENCH_CRYPT_ARGS:-} -- filedisk path="$DISK_IMG"
}

LABEL[usbd_plain]="filedisk"
srv_usbd_plain() {
	spawn ./usbd-lua -U "$1" devices/filedisk.lua path="$DISK_IMG"
}

# Device trees over filedisks (page cache), beside the plain filedisk on
# the same disk: a mirror of two 1 GiB files, a stripe of two 512 MiB ones.
LABEL[usbd_mirror]="mirror"
srv_usbd_mirror() {
	need_usbd devices/mirror.lua || return
	spawn ./usbd-lua -U "$1" mirror [ filedisk path="$TREE_IMG-a" ] [ filedisk path="$TREE_IMG-b" ]
}

LABEL[usbd_stripe]="stripe"
srv_usbd_stripe() {
	need_usbd devices/stripe.lua || return
	spawn ./usbd-lua -U "$1" stripe [ filedisk path="$TREE_IMG-s1" ] [ filedisk path="$TREE_IMG-s2" ]
}

# Another checkout's mirror and stripe (BENCH_BASELINE), on the same files.
LABEL[usbd_mirror_base]="mirror-baseline"
srv_usbd_mirror_base() {
	[[ -x ${BENCH_BASELINE:-}/usbd-lua ]] || { skip "no BENCH_BASELINE"; return; }
	spawn "$BENCH_BASELINE/usbd-lua" -U "$1" mirror [ filedisk path="$TREE_IMG-a" ] [ filedisk path="$TREE_IMG-b" ]
}

LABEL[usbd_stripe_base]="stripe-baseline"
srv_usbd_stripe_base() {
	[[ -x ${BENCH_BASELINE:-}/usbd-lua ]] || { skip "no BENCH_BASELINE"; return; }
	spawn "$BENCH_BASELINE/usbd-lua" -U "$1" stripe [ filedisk path="$TREE_IMG-s1" ] [ filedisk path="$TREE_IMG-s2" ]
}

# The dedup group: the dedupdisk, the filedisk (page cache) on the same
# disk as the dedupdisk's store (the reference), ZFS's deduplication on
# that disk too (zfs_dedup), and the protocol's ceiling (nbdkit null:
# discards writes, reads zeroes; fio's own costs included).
LABEL[usbd_dedup]="usbd-dedup"
srv_usbd_dedup() {
	need_usbd devices/dedupdisk.lua || return
	spawn ./usbd-lua devices/dedupdisk.lua -U "$1" dir="$DEDUP_DIR" size=1G
}

# The same with compress=lz4 (group dedupc, beside the plain one).
LABEL[usbd_dedup_lz4]="usbd-dedup-lz4"
srv_usbd_dedup_lz4() {
	need_usbd devices/dedupdisk.lua || return
	spawn ./usbd-lua devices/dedupdisk.lua -U "$1" dir="$DEDUP_DIR-lz4" size=1G compress=lz4
}

# Another checkout's dedupdisk (BENCH_BASELINE), plain and compress=lz4.
LABEL[usbd_dedup_base]="dedup-baseline"
srv_usbd_dedup_base() {
	[[ -x ${BENCH_BASELINE:-}/usbd-lua ]] || { skip "no BENCH_BASELINE"; return; }
	spawn "$BENCH_BASELINE/usbd-lua" "$BENCH_BASELINE/devices/dedupdisk.lua" -U "$1" dir="$DEDUP_DIR-base" size=1G
}
LABEL[usbd_dedup_lz4_base]="dedup-lz4-baseline"
srv_usbd_dedup_lz4_base() {
	[[ -x ${BENCH_BASELINE:-}/usbd-lua ]] || { skip "no BENCH_BASELINE"; return; }
	spawn "$BENCH_BASELINE/usbd-lua" "$BENCH_BASELINE/devices/dedupdisk.lua" -U "$1" dir="$DEDUP_DIR-lz4-base" size=1G compress=lz4
}

LABEL[nbdkit_null]="nbdkit-null"
srv_nbdkit_null() {
	spawn nbdkit -f --exit-with-parent -U "$1" null 1G
}

LABEL[usbd_filedisk]="usbd-filedisk"
srv_usbd_filedisk() {
	need_usbd devices/filedisk.lua || return
	spawn ./usbd-lua devices/filedisk.lua -U "$1" path="$DEDUP_FILE" size=1G
}

# ZFS's deduplication (zfs-fuse, ZFS pool version 23): a fresh pool on a
# sparse file beside the dedupdisk's store (same disk), one 1 GiB file in
# its file system, served by nbdkit file (page cache, as the filedisk).
# The pool: dedup=on (SHA-256; the dedupdisk keys on XXH3-128, both share a
# match without comparing bytes), recordsize=4K (the dedupdisk's block),
# compression=off (the dedupdisk's default). atime=off, since every read
# would otherwise be a metadata write the other servers' files (relatime)
# do not make. Sync: ZFS's default. Pool version 23 has no sync property:
# a flush is an fsync that commits the ZIL, as sync=standard does (fio's
# jobs here send no flushes). cachefile=none keeps the pool out of
# zpool.cache, so a daemon restart never imports it again. zfs-fuse
# cannot punch holes, so nbdkit ignores trims: dd_elsewhere rewrites
# region B over its own copy. When no zfs-fuse daemon is running the bench
# starts one, with /etc/zfs/zfsrc (Debian's: prefetch off) but an ARC of
# 256 MiB, about the dedupdisk's default caches (index, RocksDB's cache
# and memtable, records) instead of Debian's 100 MiB, and stops it at the
# group's end. A daemon already running is used with its own settings.
LABEL[zfs_dedup]="zfs-dedup"
srv_zfs_dedup() {
	need_zfs_fuse || return
	SRV_PID=none
	TEARDOWN+=(teardown_zfs)
	if ! zpool list >/dev/null 2>&1; then
		[[ $EUID == 0 ]] || { skip "no zfs-fuse daemon running, and starting one needs root"; return; }
		zfs-fuse --no-daemon --no-kstat-mount --max-arc-size 256 >"$WORK/zfs-fuse.log" 2>&1 &
		ZFS_DAEMON=$!
		local t
		for ((t = 0; t < START_TIMEOUT * 10; t++)); do
			zpool list >/dev/null 2>&1 && break
			kill -0 "$ZFS_DAEMON" 2>/dev/null || break
			sleep 0.1
		done
		if ! zpool list >/dev/null 2>&1; then
			cp "$WORK/zfs-fuse.log" "$SRVLOG"
			SKIP_REASON="the zfs-fuse daemon did not start"
			return 1
		fi
		note "${LABEL[zfs_dedup]}: zfs-fuse started by the bench (/etc/zfs/zfsrc, --max-arc-size 256)"
	else
		note "${LABEL[zfs_dedup]}: the zfs-fuse daemon already running, with its own settings"
	fi
	ZFS_POOL=usbd-bench-$$
	ZFS_MNT=$WORK/zfs
	local props="dedup=on recordsize=4K compression=off atime=off" p opts=()
	for p in $props; do opts+=(-O "$p"); done
	if ! { truncate -s 4G "$DEDUP_ZFS" &&
		zpool create -o cachefile=none -m "$ZFS_MNT" "${opts[@]}" "$ZFS_POOL" "$DEDUP_ZFS" &&
		truncate -s 1G "$ZFS_MNT/disk.img"; } >"$SRVLOG" 2>&1; then
		SKIP_REASON="cannot make the pool $ZFS_POOL on $DEDUP_ZFS"
		return 1
	fi
	spawn nbdkit -f --exit-with-parent -U "$1" file "$ZFS_MNT/disk.img" || return
	# Its CPU is nbdkit's and the daemon's, which does the deduplication.
	SRV_CPU_PIDS="$SRV_PID $(pgrep -x zfs-fuse | tr '\n' ' ')"
	SPAWN_CMD="pool $ZFS_POOL ($props) on $DEDUP_ZFS; $SPAWN_CMD"
}

# Once nbdkit has stopped: the pool goes (the kernel lets go of the FUSE
# mount's files a moment after nbdkit exits; until then it is busy), its
# file, and the daemon if the bench started it.
teardown_zfs() {
	local i
	if [[ -n ${ZFS_POOL:-} ]] && zpool list "$ZFS_POOL" >/dev/null 2>&1; then
		for ((i = 0; i < 50; i++)); do
			zpool destroy "$ZFS_POOL" 2>/dev/null && break
			sleep 0.1
		done
		((i < 50)) || zpool destroy -f "$ZFS_POOL" || log "could not destroy the ZFS pool $ZFS_POOL"
	fi
	ZFS_POOL=
	rm -f "${DEDUP_ZFS:-}"
	if [[ -n ${ZFS_DAEMON:-} ]]; then
		stop_pid "$ZFS_DAEMON"
		ZFS_DAEMON=
	fi
}

# TLS (groups tls and tlsfile): every server with --tls=require and the
# same X.509 certificates (prepare_tls), reached as nbds+unix:// (SCHEME).
# Not a PSK: fio's nbd engine gives its URI to libnbd, which refuses the
# local file tls-psk-file names unless the program allows it, and fio
# does not. The plain usbd-lua beside them is what TLS costs.
LABEL[usbd_tls_ram]="usbd-lua-tls"; SCHEME[usbd_tls_ram]=nbds
srv_usbd_tls_ram() {
	need_usbd devices/ramdisk.lua || return
	spawn ./usbd-lua devices/ramdisk.lua -U "$1" --tls=require --tls-certificates "$TLS_DIR" size=1G
}
LABEL[nbdkit_tls_memory]="nbdkit-memory-tls"; SCHEME[nbdkit_tls_memory]=nbds
srv_nbdkit_tls_memory() {
	spawn nbdkit -f --exit-with-parent -U "$1" --tls=require --tls-certificates="$TLS_DIR" memory 1G
}
LABEL[usbd_plain_ram]="usbd-lua-plain"
srv_usbd_plain_ram() { srv_usbd_ram "$@"; }
# The file through the page cache (filedisk's default: cached reads are
# sent from the mapped page cache, over TLS encrypted from there).
LABEL[usbd_tls_file]="usbd-lua-tls"; SCHEME[usbd_tls_file]=nbds
srv_usbd_tls_file() {
	need_usbd devices/filedisk.lua || return
	spawn ./usbd-lua devices/filedisk.lua -U "$1" --tls=require --tls-certificates "$TLS_DIR" path="$DISK_IMG"
}
LABEL[nbdkit_tls_file]="nbdkit-file-tls"; SCHEME[nbdkit_tls_file]=nbds
srv_nbdkit_tls_file() {
	spawn nbdkit -f --exit-with-parent -U "$1" --tls=require --tls-certificates="$TLS_DIR" file "$DISK_IMG"
}
LABEL[usbd_plain_file]="usbd-lua-plain"
srv_usbd_plain_file() {
	need_usbd devices/filedisk.lua || return
	spawn ./usbd-lua devices/filedisk.lua -U "$1" path="$DISK_IMG"
}

###########################################################################
# Jobs: fio options on top of the common ones (see run_fio).
###########################################################################
JOB[seqread]="--rw=read --bs=256k --iodepth=16";          JOBDESC[seqread]="seq read 256k qd16"
JOB[seqwrite]="--rw=write --bs=256k --iodepth=16";        JOBDESC[seqwrite]="seq write 256k qd16"
JOB[randread]="--rw=randread --bs=4k --iodepth=32";       JOBDESC[randread]="rand read 4k qd32"
JOB[randwrite]="--rw=randwrite --bs=4k --iodepth=32";     JOBDESC[randwrite]="rand write 4k qd32"
JOB[randread_qd1]="--rw=randread --bs=4k --iodepth=1";    JOBDESC[randread_qd1]="rand read 4k qd1"
JOB[randread_qd16]="--rw=randread --bs=4k --iodepth=16";  JOBDESC[randread_qd16]="rand read 4k qd16"
JOB[seqread_1m]="--rw=read --bs=1M --iodepth=16";         JOBDESC[seqread_1m]="seq read 1M qd16"
JOB[seqwrite_1m]="--rw=write --bs=1M --iodepth=16";       JOBDESC[seqwrite_1m]="seq write 1M qd16"
JOB[randwrite_qd16]="--rw=randwrite --bs=4k --iodepth=16"; JOBDESC[randwrite_qd16]="rand write 4k qd16"

# Dedup jobs, 1 MiB requests with fresh random buffers (--refill_buffers).
# Region A [0, 256M) holds the stream of seed 42 (fill_dedup); the same
# stream again is a duplicate. Region B [512M, 768M) is trimmed before each
# run, so a copy there stays a copy. Unique data (random seeds) goes to
# [768M, 1G).
DEDUP_A="--offset=0 --size=256M"
JOB[dd_unique]="--rw=write --bs=1M --iodepth=8 --refill_buffers --randrepeat=0 --offset=768M --size=256M"
JOBDESC[dd_unique]="unique write 1M qd8"
JOB[dd_inplace]="--rw=write --bs=1M --iodepth=8 --refill_buffers --randseed=42 $DEDUP_A"
JOBTAIL[dd_inplace]="--time_based=0"
JOBDESC[dd_inplace]="dup write in place 1M qd8"
JOB[dd_elsewhere]="--rw=write --bs=1M --iodepth=8 --refill_buffers --randseed=42 --offset=512M --size=256M"
JOBTAIL[dd_elsewhere]="--time_based=0"
JOBPRE[dd_elsewhere]=trim_region_b
JOBDESC[dd_elsewhere]="dup write elsewhere 1M qd8"
JOB[dd_read]="--rw=read --bs=1M --iodepth=8 $DEDUP_A";    JOBDESC[dd_read]="seq read 1M qd8"
JOB[dd_rand4k]="--rw=randwrite --bs=4k --iodepth=32 --refill_buffers --randrepeat=0 --offset=768M --size=256M"
JOBDESC[dd_rand4k]="unique rand write 4k qd32"

# Compressible data (fio: each 512-byte chunk 45% random, the rest zeroes),
# otherwise as the dedup jobs. A 4 KiB block of it compresses to 1915
# bytes with LZ4, two to a packed block: a store of half the bytes. (At
# 50% a block compresses to 2115 bytes, just over half: one to a block,
# and the store keeps those raw.)
DC="--refill_buffers --buffer_compress_percentage=55"
JOB[dc_unique]="--rw=write --bs=1M --iodepth=8 $DC --randrepeat=0 --offset=768M --size=256M"
JOBDESC[dc_unique]="compressible unique write 1M qd8"
JOB[dc_inplace]="--rw=write --bs=1M --iodepth=8 $DC --randseed=42 $DEDUP_A"
JOBTAIL[dc_inplace]="--time_based=0"
JOBDESC[dc_inplace]="compressible dup write in place 1M qd8"
JOB[dc_read]="--rw=read --bs=1M --iodepth=8 $DEDUP_A";    JOBDESC[dc_read]="compressed seq read 1M qd8"

###########################################################################
# Groups.
###########################################################################
group_ram() {
	G_DESC="1 GiB RAM disk, filled once with 1 MiB writes before timing"
	G_SERVERS="usbd_ram nbdkit_memory nbdkit_lua"
	G_JOBS="seqread seqwrite randread randwrite"
	G_PREPARE=
	G_FILL=fill_nbd
}

# One 1 GiB file of random data, served by each server in turn (read-only
# jobs, so sharing is fine), written past the page cache so that no server
# starts with it cached: usbd-lua reads it with O_DIRECT, nbdkit with
# cache=none. The goal (issue 4): qd16 at least 3x qd1, and at least nbdkit.
group_file() {
	G_DESC="1 GiB file of random data, uncached (usbd-lua direct=true, with io_uring and threads only; nbdkit file cache=none)"
	G_SERVERS="usbd_file usbd_file_threads nbdkit_file"
	G_JOBS="randread_qd1 randread_qd16"
	G_PREPARE=prepare_file
	G_FILL=
}

# The cipher's cost: sequential 256k reads and writes, cryptdisk over the
# filedisk against the plain filedisk. Goal (issue 10): at least 70%; the
# per-core limit is `openssl speed -evp aes-256-xts`, printed as a note.
group_crypt() {
	G_DESC="1 GiB file through the page cache: cryptdisk (AES-256-XTS${BENCH_CRYPT_ARGS:+, $BENCH_CRYPT_ARGS}) over filedisk vs filedisk"
	G_SERVERS="usbd_crypt usbd_plain usbd_crypt_spot${BENCH_BASELINE:+ usbd_crypt_base}"
	G_JOBS="seqread seqwrite"
	G_PREPARE=prepare_crypt
	G_FILL=
}

prepare_crypt() {
	prepare_file
	KEY_FILE=$WORK/disk.key
	head -c 64 /dev/urandom >"$KEY_FILE"
	local speed
	speed=$(openssl speed -evp aes-256-xts -seconds 2 2>/dev/null | grep -i '^aes-256-xts' | awk '{print $NF}')
	[[ -z $speed ]] && return
	note "openssl speed -evp aes-256-xts, 16384-byte blocks, one core: $speed (1000s of bytes/s)"
	# The cryptdisk's ceiling: the filedisk's time per byte plus the
	# cipher's (a transform should cost its work and little more).
	local mibs job
	mibs=$(awk -v k="${speed%k}" 'BEGIN { printf "%.0f", k * 1000 / 1048576 }')
	for job in seqread seqwrite; do
		rec cost "$GROUP" "$job" usbd_crypt usbd_plain "AES-256-XTS (one core)" "$mibs"
	done
}

# Goals: a mirror of two filedisks writes at 0.8x a filedisk and reads at
# 1.0x; a stripe of two at 1.0x.
group_mirror() {
	G_DESC="filedisks through the page cache: a mirror of two 1 GiB files vs one 1 GiB file, same disk"
	G_SERVERS="usbd_mirror usbd_plain${BENCH_BASELINE:+ usbd_mirror_base}"
	G_JOBS="seqread seqwrite randread randwrite"
	G_PREPARE=prepare_tree
	G_FILL=
}

group_stripe() {
	G_DESC="filedisks through the page cache: a stripe (chunk 512K) of two 512 MiB files vs one 1 GiB file, same disk"
	G_SERVERS="usbd_stripe usbd_plain${BENCH_BASELINE:+ usbd_stripe_base}"
	G_JOBS="seqread seqwrite randread randwrite"
	G_PREPARE=prepare_tree
	G_FILL=
}

prepare_tree() {
	prepare_file
	TREE_IMG=${BENCH_FILEDIR:-$WORK}/usbd-bench-tree
	log "writing the trees' images beside it"
	cp "$DISK_IMG" "$TREE_IMG-a" && cp "$DISK_IMG" "$TREE_IMG-b" &&
		head -c 512M "$DISK_IMG" >"$TREE_IMG-s1" && tail -c 512M "$DISK_IMG" >"$TREE_IMG-s2" ||
		die "cannot write the trees' images beside $DISK_IMG"
	TO_REMOVE+=("$TREE_IMG-a" "$TREE_IMG-b" "$TREE_IMG-s1" "$TREE_IMG-s2")
}

# The filedisk on the same disk is the reference (the ratio's first
# column), then ZFS's deduplication, then the ceiling.
group_dedup() {
	G_DESC="1 GiB dedupdisk (fresh store) / filedisk (page cache) / ZFS dedup (zfs-fuse, fresh pool, nbdkit file) / nbdkit null (the ceiling), same disk; 1 MiB requests, fresh random buffers"
	G_SERVERS="usbd_dedup usbd_filedisk zfs_dedup nbdkit_null${BENCH_BASELINE:+ usbd_dedup_base}"
	G_JOBS="dd_unique dd_inplace dd_elsewhere dd_read dd_rand4k"
	G_PREPARE=prepare_dedup
	G_FILL=fill_dedup
}

group_dedupc() {
	G_DESC="1 GiB dedupdisk, compress=lz4 and plain (fresh stores), same disk; 1 MiB requests of fresh compressible buffers (fio buffer_compress_percentage=55)"
	G_SERVERS="usbd_dedup usbd_dedup_lz4${BENCH_BASELINE:+ usbd_dedup_lz4_base}"
	G_JOBS="dc_unique dc_inplace dc_read"
	G_PREPARE=prepare_dedupc
	G_FILL=fill_dedupc
}

prepare_dedupc() {
	prepare_dedup
	rm -rf "$DEDUP_DIR-lz4" "$DEDUP_DIR-lz4-base"
	TO_REMOVE_DIRS+=("$DEDUP_DIR-lz4" "$DEDUP_DIR-lz4-base")
	# The compressed store's ceiling: the plain store's time per byte plus
	# LZ4's own on the same kind of data, 4 KiB blocks, one core (lz4 -b).
	command -v lz4 >/dev/null || return 0
	local sample=$WORK/lz4-sample speeds
	fio --name=sample --ioengine=sync --filename="$sample" --rw=write --bs=1M --size=64M $DC \
		--output=/dev/null >/dev/null 2>&1 || return 0
	speeds=$(lz4 -b1 -B4096 "$sample" 2>&1 | tr '\r' '\n' | grep -oE '[0-9.]+ MB/s ,[0-9.]+ MB/s' | tail -1)
	rm -f "$sample"
	[[ -n $speeds ]] || return 0
	note "lz4 -b1 -B4096 on 64 MiB of the jobs' data, one core: compression, decompression $speeds"
	local c d
	read -r c d < <(awk '{ gsub(/[^0-9. ]/, " "); split($0, v, " "); printf "%.0f %.0f", v[1] * 1e6 / 1048576, v[2] * 1e6 / 1048576 }' <<<"$speeds")
	rec cost "$GROUP" dc_unique usbd_dedup_lz4 usbd_dedup "LZ4 compression (one core)" "$c"
	rec cost "$GROUP" dc_read usbd_dedup_lz4 usbd_dedup "LZ4 decompression (one core)" "$d"
}

fill_dedupc() { # ID SOCKET
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$2" --rw=write --bs=1M --iodepth=8 \
		$DC --randseed=42 $DEDUP_A --output=/dev/null >"$WORK/fill-$1.err" 2>&1 ||
		{ cat "$WORK/fill-$1.err" >&2; return 1; }
	# What the store made of it: the server prints its statistics on SIGUSR1.
	[[ $1 == usbd_dedup_lz4* ]] || return 0
	local i r=
	kill -USR1 "$SRV_PID" 2>/dev/null || return 0
	for ((i = 0; i < 30; i++)); do
		sleep 0.1
		r=$(awk '/dedup_compression_ratio:/ { v = $2 } END { print v }' "$SRVLOG")
		[[ -z $r ]] || break
	done
	[[ -z $r ]] || note "${LABEL[$1]}: compression ratio $r after the fill (unique bytes over the bytes stored)"
}

prepare_dedup() {
	local dir=${BENCH_FILEDIR:-$WORK}
	DEDUP_DIR=$dir/usbd-bench-dedup
	DEDUP_FILE=$dir/usbd-bench-filedisk.img
	DEDUP_ZFS=$dir/usbd-bench-zfs.img
	rm -rf "$DEDUP_DIR" "$DEDUP_DIR-base" "$DEDUP_FILE" "$DEDUP_ZFS"
	TO_REMOVE+=("$DEDUP_FILE" "$DEDUP_ZFS")
	TO_REMOVE_DIRS+=("$DEDUP_DIR" "$DEDUP_DIR-base")
}

# Region A gets the stream of seed 42 once, before timing.
fill_dedup() { # ID SOCKET
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$2" --rw=write --bs=1M --iodepth=8 \
		--refill_buffers --randseed=42 $DEDUP_A --output=/dev/null >"$WORK/fill-$1.err" 2>&1 ||
		{ cat "$WORK/fill-$1.err" >&2; return 1; }
}

trim_region_b() { # URI
	fio --name=trim --ioengine=nbd --uri="$1" --rw=trim --bs=32M --offset=512M --size=256M \
		--output=/dev/null >/dev/null 2>&1
}

prepare_file() {
	DISK_IMG=${BENCH_FILEDIR:-$WORK}/usbd-bench-disk.img
	log "writing 1 GiB of random data to $DISK_IMG"
	head -c 1G /dev/urandom | dd of="$DISK_IMG" bs=1M iflag=fullblock oflag=direct status=none ||
		die "cannot write $DISK_IMG with O_DIRECT (tmpfs? set BENCH_FILEDIR)"
	TO_REMOVE+=("$DISK_IMG")
}

# TLS against nbdkit with the same settings, and against plain usbd-lua.
# Goal: at least 1.0x nbdkit on every job.
group_tls() {
	G_DESC="1 GiB RAM disk over TLS (X.509, --tls=require, both servers), filled once; usbd-lua plain beside"
	G_SERVERS="usbd_tls_ram nbdkit_tls_memory usbd_plain_ram"
	G_JOBS="seqread seqwrite randread randwrite"
	G_PREPARE=prepare_tls
	G_FILL=fill_nbd
}
group_tlsfile() {
	G_DESC="1 GiB file of random data through the page cache, over TLS (X.509, --tls=require); usbd-lua plain beside"
	G_SERVERS="usbd_tls_file nbdkit_tls_file usbd_plain_file"
	G_JOBS="seqread seqwrite randread randwrite"
	G_PREPARE="prepare_tls_file"
	G_FILL=
}
# A CA and the server's certificate, made with certtool (gnutls-bin).
prepare_tls() {
	command -v certtool >/dev/null || die "the tls groups need certtool (make deps: gnutls-bin)"
	TLS_DIR=$WORK/pki
	mkdir -p "$TLS_DIR"
	certtool --generate-privkey --key-type ecdsa --outfile "$TLS_DIR/ca-key.pem" 2>/dev/null
	printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$TLS_DIR/ca.info"
	certtool --generate-self-signed --load-privkey "$TLS_DIR/ca-key.pem" --template "$TLS_DIR/ca.info" \
		--outfile "$TLS_DIR/ca-cert.pem" 2>/dev/null
	certtool --generate-privkey --key-type ecdsa --outfile "$TLS_DIR/server-key.pem" 2>/dev/null
	printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nsigning_key\nexpiration_days = 2\n' >"$TLS_DIR/server.info"
	certtool --generate-certificate --load-privkey "$TLS_DIR/server-key.pem" --load-ca-certificate "$TLS_DIR/ca-cert.pem" \
		--load-ca-privkey "$TLS_DIR/ca-key.pem" --template "$TLS_DIR/server.info" \
		--outfile "$TLS_DIR/server-cert.pem" 2>/dev/null || die "certtool failed"
}
prepare_tls_file() { prepare_tls; prepare_file; }

# Goal (issue 11): usbd-lua at least 1.5x qemu-nbd and 0.8x fio-rbd on every job.
group_rbd() {
	G_DESC="1 GiB RBD image, one-mon one-OSD ${BENCH_CEPH_STORE:-memstore} cluster on this machine, filled once through usbd-lua"
	G_SERVERS="usbd_rbd qemu_nbd_rbd fio_rbd"
	G_JOBS="seqread_1m seqwrite_1m randread_qd16 randwrite_qd16"
	G_PREPARE=prepare_rbd
	G_FILL=fill_rbd
}

prepare_rbd() {
	CEPH_DIR=$WORK/ceph
	log "starting a ${BENCH_CEPH_STORE:-memstore} Ceph cluster in $CEPH_DIR"
	tests/ceph/cluster.sh start "$CEPH_DIR" "${BENCH_CEPH_STORE:-memstore}" || die "the Ceph cluster did not start"
	export CEPH_CONF=$CEPH_DIR/ceph.conf
	# The same librbd cache for all three: writeback from the start (by
	# default it stays writethrough until a client's first flush, which fio's
	# rbd engine never sends).
	printf '[client]\nrbd cache writethrough until flush = false\n' >>"$CEPH_CONF"
	rbd create --size 1G bench || die "rbd create failed"
}

fill_rbd() { # ID SOCKET: the image is shared; fill it once
	[[ $1 == usbd_rbd ]] && fill_nbd "$@"
	return 0
}

# Write the whole disk once, so reads return real data and storage is allocated.
fill_nbd() { # ID SOCKET
	local t0=$SECONDS
	fio --name=fill --ioengine=nbd --uri="${SCHEME[$1]:-nbd}+unix:///?socket=$2" \
		--rw=write --bs=1M --iodepth=8 \
		--output-format=json --output="$WORK/fill-$1.json" >"$WORK/fill-$1.err" 2>&1 ||
		{ cat "$WORK/fill-$1.err" >&2; return 1; }
	local r
	r=$(lua_run fio "$WORK/fill-$1.json") || return 1
	note "fill ${LABEL[$1]}: $((SECONDS - t0)) s, ${r%% *} MiB/s"
}

###########################################################################
# Machinery.
###########################################################################
log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
rec() { local IFS=$'\t'; printf '%s\n' "$*" >>"$LOG"; } # one record for report.lua
note() { rec note "$GROUP" "$*"; }

if command -v luajit >/dev/null; then LUA=luajit
elif command -v lua >/dev/null; then LUA=lua
else die "needs luajit (or lua) to read fio's JSON"; fi
lua_run() { "$LUA" "$ROOT/bench/report.lua" "$@"; }

for tool in fio nbdkit nbdinfo; do
	command -v $tool >/dev/null || die "needs $tool (make deps)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/usbd-bench.XXXXXX") || die "mktemp failed"
LOG=$WORK/results.log
: >"$LOG"
PIDS=()         # servers running now
TEARDOWN=()     # functions to run once they have stopped (a group's end, exit)
TO_REMOVE=()    # files outside $WORK to remove at exit
TO_REMOVE_DIRS=()
FAILED=0

stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
	PIDS=()
}

# Each function once, the last added first.
run_teardown() {
	local i f done=" "
	for ((i = ${#TEARDOWN[@]} - 1; i >= 0; i--)); do
		f=${TEARDOWN[i]}
		[[ $done == *" $f "* ]] && continue
		done+="$f "
		"$f"
	done
	TEARDOWN=()
}

cleanup() {
	stop_all
	run_teardown
	[[ -z ${CEPH_DIR:-} ]] || tests/ceph/cluster.sh stop "$CEPH_DIR"
	rm -f "${TO_REMOVE[@]}"
	[[ ${#TO_REMOVE_DIRS[@]} == 0 ]] || rm -rf "${TO_REMOVE_DIRS[@]}"
	if [[ -n $BENCH_KEEP ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# skip REASON: decline to start (status 2).
skip() { SKIP_REASON=$*; return 2; }

need_usbd() { # SCRIPT
	[[ -x ./usbd-lua ]] || { skip "./usbd-lua not built (run make)"; return; }
	[[ -f $1 ]] || { skip "$1 missing"; return; }
}

need_zfs_fuse() {
	{ command -v zfs-fuse && command -v zpool; } >/dev/null || { skip "no zfs-fuse (make deps: zfs-fuse)"; return; }
	[[ -c /dev/fuse && -r /dev/fuse && -w /dev/fuse ]] || { skip "no /dev/fuse"; return; }
}

# spawn CMD...: start a server in the background on $SOCK and wait until it
# accepts NBD connections.  Status 1 (with its log shown) if it never does.
spawn() {
	SPAWN_CMD=$*
	"$@" >"$SRVLOG" 2>&1 &
	local pid=$! t
	PIDS+=("$pid")
	SRV_PID=$pid SRV_CPU_PIDS=$pid
	for ((t = 0; t < START_TIMEOUT * 10; t++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid"; SKIP_REASON="exited with status $? before accepting connections"
			return 1
		fi
		if [[ -S $SOCK ]] && nbdinfo --can connect "$SPAWN_SCHEME+unix:///?socket=$SOCK" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	SKIP_REASON="not accepting connections after ${START_TIMEOUT}s"
	return 1
}

in_list() { # WORD COMMA-OR-SPACE-LIST
	[[ ,${2// /,}, == *,$1,* ]]
}

# cpu_ticks PID...: the processes' CPU time so far (user + system, every
# thread, in clock ticks), or - if one is unknown or gone.
cpu_ticks() {
	local p sum=0 t
	[[ $# -gt 0 ]] || { echo -; return; }
	for p in "$@"; do
		# (the fields after the command's name, which may hold spaces)
		t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=
		[[ $t =~ ^[0-9]+$ ]] || { echo -; return; }
		sum=$((sum + t))
	done
	echo "$sum"
}

# lua_ticks SERVER: a usbd-lua server's Lua thread's CPU time so far (its
# main thread), or - for another server.
lua_ticks() {
	local p=${SPIDS[$1]:-}
	[[ $1 == usbd* && -n $p ]] || { echo -; return; }
	p=${p%% *}
	cpu_ticks "$p/task/$p"
}

# seconds TICKS0 TICKS1: the CPU seconds between two readings, or -.
seconds() {
	if [[ $1 == - || $2 == - ]]; then echo -; return; fi
	awk -v d=$(($2 - $1)) -v hz="$CLK_TCK" 'BEGIN { print d / hz }'
}

# run_fio SERVER JOB ROUND: one timed run; records the result, the
# server's CPU seconds over it and its Lua thread's.
run_fio() {
	local s=$1 j=$2 round=$3 out="$WORK/$GROUP-$2-$1-$3" r c0 c1 l0 l1 cpu lua
	local uri="${SCHEME[$s]:-nbd}+unix:///?socket=${SOCKS[$s]}"
	local engine="--ioengine=nbd --uri=$uri"
	[[ -z ${ENGINE[$s]:-} ]] || engine=${ENGINE[$s]}
	[[ -z ${JOBPRE[$j]:-} ]] || "${JOBPRE[$j]}" "$uri"
	# (after the job's preparation: its work is not the job's)
	# shellcheck disable=SC2086  # a list of PIDs
	c0=$(cpu_ticks ${SPIDS[$s]:-}) l0=$(lua_ticks "$s")
	# shellcheck disable=SC2086  # JOB[] and engine hold several options
	if fio --name="$j" $engine \
		${JOB[$j]} --norandommap --runtime="$BENCH_RUNTIME" --time_based \
		--ramp_time="$BENCH_RAMP" ${JOBTAIL[$j]:-} \
		--output-format=json --output="$out.json" >"$out.err" 2>&1 &&
		r=$(lua_run fio "$out.json" 2>>"$out.err"); then
		# shellcheck disable=SC2086
		c1=$(cpu_ticks ${SPIDS[$s]:-}) l1=$(lua_ticks "$s")
		cpu=$(seconds "$c0" "$c1") lua=$(seconds "$l0" "$l1")
		# shellcheck disable=SC2086  # MIBS IOPS IOS SECONDS
		set -- $r
		rec result "$GROUP" "$j" "$s" "$round" "$1" "$2" "$3" "$cpu" "$lua" "$4"
		log "round $round/$BENCH_REPEAT  ${JOBDESC[$j]}  ${LABEL[$s]}: $1 MiB/s, $2 IOPS, server CPU ${cpu} s, Lua thread ${lua} s"
		return 0
	fi
	rec result "$GROUP" "$j" "$s" "$round" FAIL FAIL
	log "round $round  ${JOBDESC[$j]}  ${LABEL[$s]}: FIO FAILED"
	sed 's/^/  | /' "$out.err" >&2
	FAILED=1
	return 1
}

CLK_TCK=$(getconf CLK_TCK)
HOST_NOTE="$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
rec header "usbd-lua bench  $(date '+%Y-%m-%d %H:%M')  commit $COMMIT  $(fio --version)  $(nbdkit --version)  $HOST_NOTE"
rec header "fio --ioengine=nbd, one job, ${BENCH_RUNTIME}s time-based runs$([[ $BENCH_RAMP == 0 ]] || echo " after ${BENCH_RAMP}s ramp"), $BENCH_REPEAT rounds with servers interleaved; medians shown, spread = (max-min)/median"
rec header "CPU/req: the server process's CPU (user + system, all its threads) per request over the run, in microseconds; work done outside it (the kernel's writeback, zfs-fuse's daemon, Ceph's OSDs) is not counted. Lua: the share of the run a usbd-lua server's Lua thread was busy (near 100%: it bounds the job)"

for GROUP in ${BENCH_GROUPS//,/ }; do
	declare -F "group_$GROUP" >/dev/null || die "unknown group '$GROUP'"
	"group_$GROUP"
	rec group "$GROUP" "$G_DESC"
	log "== group $GROUP: $G_DESC"

	jobs=()
	for j in $G_JOBS; do
		[[ -z $BENCH_JOBS ]] || in_list "$j" "$BENCH_JOBS" || continue
		[[ -n ${JOB[$j]:-} ]] || die "group $GROUP: no JOB[$j]"
		jobs+=("$j")
		rec job "$GROUP" "$j" "${JOBDESC[$j]}"
	done
	[[ -z $G_PREPARE ]] || "$G_PREPARE"

	declare -A SOCKS=() SPIDS=()
	live=()
	for s in $G_SERVERS; do
		[[ -z $BENCH_SERVERS ]] || in_list "$s" "$BENCH_SERVERS" || continue
		SOCK=$WORK/$GROUP-$s.sock SRVLOG=$WORK/$GROUP-$s.log SKIP_REASON='' SPAWN_CMD=''
		SPAWN_SCHEME=${SCHEME[$s]:-nbd}
		"srv_$s" "$SOCK"
		case $? in
		0)
			log "${LABEL[$s]} up (pid $SRV_PID): $SPAWN_CMD"
			if [[ -n $G_FILL ]] && ! "$G_FILL" "$s" "$SOCK"; then
				rec server "$GROUP" "$s" "${LABEL[$s]}" fail "fill failed: $SPAWN_CMD"
				log "${LABEL[$s]}: fill failed"; FAILED=1
				stop_pid "$SRV_PID"
				continue
			fi
			rec server "$GROUP" "$s" "${LABEL[$s]}" ok "$SPAWN_CMD"
			SOCKS[$s]=$SOCK
			[[ $SRV_PID == none ]] || SPIDS[$s]=$SRV_CPU_PIDS
			live+=("$s")
			;;
		2)
			rec server "$GROUP" "$s" "${LABEL[$s]}" skip "$SKIP_REASON"
			log "${LABEL[$s]} SKIPPED: $SKIP_REASON"
			;;
		*)
			rec server "$GROUP" "$s" "${LABEL[$s]}" fail "$SKIP_REASON: $SPAWN_CMD"
			log "${LABEL[$s]} FAILED to start: $SKIP_REASON; its log:"
			tail -n 20 "$SRVLOG" | sed 's/^/  | /' >&2
			stop_pid "$SRV_PID"
			FAILED=1
			;;
		esac
	done

	n=${#live[@]}
	for ((round = 1; round <= BENCH_REPEAT; round++)); do
		for j in "${jobs[@]}"; do
			for ((k = 0; k < n; k++)); do
				s=${live[(k + round - 1) % n]}
				[[ -n ${SOCKS[$s]:-} ]] || continue
				if ! run_fio "$s" "$j" "$round" && ! nbdinfo --can connect "${SCHEME[$s]:-nbd}+unix:///?socket=${SOCKS[$s]}" 2>/dev/null; then
					log "${LABEL[$s]} no longer accepts connections; dropping it"
					unset "SOCKS[$s]"
				fi
			done
		done
	done
	stop_all
	run_teardown
	unset SOCKS SPIDS
done

if [[ -n $BENCH_OUT ]]; then
	lua_run table "$LOG" | tee "$BENCH_OUT"
else
	lua_run table "$LOG"
fi
exit $FAILED
