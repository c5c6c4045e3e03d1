#!/usr/bin/env bash
# make install honours PREFIX and DESTDIR, and what it installs serves.
. "$(dirname "$0")/../lib.sh"

root="$SCRATCH/root"
check "make install DESTDIR=... PREFIX=/usr" make -s -C "$TOP" install DESTDIR="$root" PREFIX=/usr
check "the binary is in PREFIX/bin" test -x "$root/usr/bin/usbd-lua"
check "the Lua runtime is in PREFIX/share/usbd-lua/lua" test -f "$root/usr/share/usbd-lua/lua/usbd/server/main.lua"
check "the devices are in PREFIX/share/usbd-lua/devices" test -f "$root/usr/share/usbd-lua/devices/ramdisk.lua"
check "--version" bash -c '"$1" --version | grep -q "^usbd-lua [0-9]"' _ "$root/usr/bin/usbd-lua"
check "--help DEVICE finds the installed device" bash -c '"$1" --help filedisk | grep -q "^script: $2/usr/share/usbd-lua/devices/filedisk.lua$"' _ "$root/usr/bin/usbd-lua" "$root"
for page in usbd-lua usbd-dedup-fsck; do
    check "man $page finds its page in PREFIX/share/man/man1" \
        bash -c 'MANPATH="$1/usr/share/man" man -w "$2" | grep -q "^$1/usr/share/man/man1/$2.1$"' _ "$root" "$page"
done
check "the systemd unit template is in PREFIX/lib/systemd/system, starting PREFIX/bin/usbd-lua" \
    grep -q '^ExecStart=/usr/bin/usbd-lua ' "$root/usr/lib/systemd/system/usbd-lua@.service"

# Run from a folder with no lua/ beside it: the installed runtime is used.
USBD="$root/usr/bin/usbd-lua"
cd "$SCRATCH"
start_server installed "$root/usr/share/usbd-lua/devices/filedisk.lua" path="$SCRATCH/disk.img" size=4M ||
    not_ok "the installed usbd-lua serves the installed filedisk"
out=$(qemu-io -f raw "$URI" -c 'write -P 3 0 64k' -c 'read -P 3 0 64k' 2>&1)
check "the installed server reads back what it wrote" grep -q '^read 65536/65536' <<<"$out"
stop_server
check "it exits 0" test "$SERVER_STATUS" = 0

# Shipped devices and examples by name, stacked, from anywhere.
check "the examples are in PREFIX/share/usbd-lua/examples" test -f "$root/usr/share/usbd-lua/examples/cryptdisk.lua"
head -c 64 /dev/urandom >"$SCRATCH/k"
start_server named cachedisk size=1M -- cryptdisk keyfile="$SCRATCH/k" -- filedisk path="$SCRATCH/named.img" size=4M ||
    not_ok "the installed usbd-lua serves a stack of shipped devices by name"
out=$(qemu-io -f raw "$URI" -c 'write -P 5 0 64k' -c 'read -P 5 0 64k' 2>&1)
check "the installed stack reads back what it wrote" grep -q '^read 65536/65536' <<<"$out"
stop_server

# The dedupdisk's store check, installed as a command.
check "usbd-dedup-fsck is in PREFIX/bin" test -x "$root/usr/bin/usbd-dedup-fsck"
start_server dedup "$root/usr/share/usbd-lua/devices/dedupdisk.lua" dir="$SCRATCH/dd" size=16M index=1M ||
    not_ok "the installed usbd-lua serves the installed dedupdisk"
qemu-io -f raw "$URI" -c 'write -P 7 0 1M' >/dev/null 2>&1
out=$("$root/usr/bin/usbd-dedup-fsck" "$SCRATCH/dd" 2>&1)
check "usbd-dedup-fsck says when a server holds the store (exit $?: $out)" \
    bash -c '[ "$1" = 2 ] && [[ $2 == *"a server is using this store"* ]]' _ "$?" "$out"
stop_server
out=$("$root/usr/bin/usbd-dedup-fsck" "$SCRATCH/dd" 2>&1)
check "the installed usbd-dedup-fsck checks the store clean ($out)" test $? = 0
out=$("$root/usr/bin/usbd-dedup-fsck" 2>&1)
check "usbd-dedup-fsck without a store: its usage, exit 2" test $? = 2

finish
