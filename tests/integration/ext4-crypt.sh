#!/usr/bin/env bash
# ext4 on AES-XTS: cryptdisk over a filedisk, served over NBD, exposed by
# nbdfuse, made a block device by losetup. mkfs, mount, write, e2fsck clean,
# remount and compare; and the file below holds no plaintext of what was
# written through it.
. "$(dirname "$0")/../lib.sh"

need_tools nbdfuse losetup mkfs.ext4 e2fsck fusermount3

head -c 64 /dev/urandom >"$SCRATCH/disk.key"
IMG="$SCRATCH/cipher.img"
start_server crypt examples/cryptdisk.lua keyfile="$SCRATCH/disk.key" -- filedisk path="$IMG" size=128M ||
    { not_ok "server starts"; finish; exit 1; }
blockdev_attach
check "losetup makes the cipher a block device ($LOOP)" test -b "$LOOP"
check "mkfs.ext4 (with discard: trims pass through the cipher)" mkfs.ext4 -q -F -E discard "$LOOP"
check "mount" mount -t ext4 "$LOOP" "$MNT"

# A distinctive text, many times, and a tree of random files.
MARK="usbd-lua-plaintext-marker-$$-$RANDOM"
for i in $(seq 20000); do echo "$MARK line $i"; done >"$MNT/secret.txt"
mkdir -p "$MNT/tree"
for i in $(seq 100); do head -c $((RANDOM * 3 % 20000 + 1)) /dev/urandom >"$MNT/tree/f$i"; done
head -c 9M /dev/urandom >"$MNT/tree/big"
rm "$MNT/tree/f1"*
fstrim "$MNT" 2>/dev/null || true
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
check "umount" umount "$MNT"
check "e2fsck -fn: clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
check "mount again" mount -t ext4 "$LOOP" "$MNT"
check "every checksum matches after remount" bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$MNT" "$SCRATCH/sums"
check "umount again" umount "$MNT"
blockdev_detach
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0

check "the backing file holds no plaintext of the file written through it" bash -c '! grep -q -a "$1" "$2"' _ "$MARK" "$IMG"
check "... nor ext4's own magic (0xEF53 at 1080): the superblock is ciphertext" \
    bash -c '[ "$(od -An -tx1 -j1080 -N2 "$1" | tr -d " ")" != "53ef" ]' _ "$IMG"
# The same file through the cipher again: the filesystem is there.
start_server again examples/cryptdisk.lua keyfile="$SCRATCH/disk.key" -- filedisk path="$IMG" ||
    { not_ok "server starts again"; finish; exit 1; }
nbdcopy "$URI" "$SCRATCH/plain.img"
stop_server
check "decrypted, the image is a clean ext4 (e2fsck -fn)" e2fsck -fn "$SCRATCH/plain.img" >/dev/null 2>&1
check "... holding the marker" grep -q -a "$MARK" "$SCRATCH/plain.img"

finish
