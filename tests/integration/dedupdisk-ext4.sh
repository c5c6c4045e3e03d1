#!/usr/bin/env bash
# ext4 on the dedupdisk (nbdfuse + loop, as ext4.sh): write a tree, copy it
# to a second directory, and the store grows by far less than the copy;
# delete both and fstrim, and the space goes back to the free list; e2fsck
# clean, every checksum right after a remount, the store check clean.
. "$(dirname "$0")/../lib.sh"

need_tools nbdfuse losetup mkfs.ext4 e2fsck fusermount3 fstrim

STORE="$SCRATCH/store"
store_bytes() { du -sb "$STORE" | cut -f1; }

start_server dedup-ext4 "$TOP/devices/dedupdisk.lua" dir="$STORE" size=512M || { not_ok "server starts"; finish; exit 1; }
blockdev_attach
check "losetup makes the dedupdisk a block device ($LOOP)" test -b "$LOOP"
check "mkfs.ext4" mkfs.ext4 -q -F -E nodiscard "$LOOP"
check "mount" mount -t ext4 "$LOOP" "$MNT"

mkdir -p "$MNT/tree/a" "$MNT/tree/b"
for i in $(seq 300); do head -c $((RANDOM * 3 % 30000 + 1)) /dev/urandom >"$MNT/tree/a/f$i"; done
for i in 1 2 3; do head -c $((i * 8))M /dev/urandom >"$MNT/tree/b/big$i"; done
sync
tree_bytes=$(du -sb "$MNT/tree" | cut -f1)
before=$(store_bytes)
cp -a "$MNT/tree" "$MNT/copy"
sync; echo 3 >/proc/sys/vm/drop_caches
after=$(store_bytes)
growth=$((after - before))
check "a copy of a $((tree_bytes >> 20)) MiB tree grows the store by $((growth >> 10)) KiB (< 10% of the copy)" \
    test "$growth" -lt $((tree_bytes / 10))
(cd "$MNT" && find tree copy -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
check "umount" umount "$MNT"
check "e2fsck -fn: clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
check "mount again" mount -t ext4 "$LOOP" "$MNT"
check "every checksum matches after remount ($(wc -l <"$SCRATCH/sums") files)" \
    bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$MNT" "$SCRATCH/sums"
rm -rf "$MNT/tree" "$MNT/copy"
sync
check "fstrim gives the space back" fstrim "$MNT"
check "umount" umount "$MNT"
check "e2fsck -fn still clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
blockdev_detach
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0
out=$(luajit "$TOP/tools/dedup-fsck.lua" "$STORE" 2>&1)
check "the store check is clean ($out)" test $? = 0
free=$(grep -oE '[0-9]+ free' <<<"$out" | cut -d' ' -f1)
check "fstrim put the tree's blocks on the free list ($free free blocks)" test "${free:-0}" -gt $((24 * 256))

finish
