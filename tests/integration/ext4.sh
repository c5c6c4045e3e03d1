#!/usr/bin/env bash
# A real ext4 on a real block device: the ramdisk served over NBD, exposed
# as a file by nbdfuse, made a block device by losetup; mkfs, mount, write a
# tree, unmount, e2fsck, remount, and every checksum must match.
. "$(dirname "$0")/../lib.sh"

need_tools nbdfuse losetup mkfs.ext4 e2fsck fusermount3

start_server ext4 devices/ramdisk.lua size=256M || { not_ok "server starts"; finish; exit 1; }
blockdev_attach
check "nbdfuse exposes the export as a 256M file" test "$(stat -c %s "$FUSE_DIR/disk" 2>/dev/null)" = $((256 << 20))
check "losetup makes it a block device ($LOOP)" test -b "$LOOP"
check "mkfs.ext4" mkfs.ext4 -q -F "$LOOP"
check "mount" mount -t ext4 "$LOOP" "$MNT"

# A tree of files: many small ones, some large, some holes, some renames.
mkdir -p "$MNT/tree/a/b/c" "$MNT/tree/d"
for i in $(seq 200); do head -c $((RANDOM * 3 % 20000 + 1)) /dev/urandom >"$MNT/tree/a/f$i"; done
for i in 1 2 3; do head -c $((i * 7))M /dev/urandom >"$MNT/tree/d/big$i"; done
truncate -s 30M "$MNT/tree/sparse"; echo tail >>"$MNT/tree/sparse"
cp -r "$MNT/tree/a" "$MNT/tree/d/copy"
mv "$MNT/tree/d/big1" "$MNT/tree/a/b/moved"
rm "$MNT/tree/a/f1"*
(cd "$MNT" && find tree -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
nfiles=$(wc -l <"$SCRATCH/sums")
check "wrote a tree of $nfiles files" test "$nfiles" -gt 250
check "umount" umount "$MNT"
check "e2fsck -fn: clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
check "mount again" mount -t ext4 "$LOOP" "$MNT"
check "every checksum matches after remount" bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$MNT" "$SCRATCH/sums"
check "umount again" umount "$MNT"
check "e2fsck -fn still clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
blockdev_detach
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0

finish
