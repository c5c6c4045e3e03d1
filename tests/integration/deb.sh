#!/usr/bin/env bash
# make deb: a Debian package of the tree, built in a copy under a scratch
# folder (the tree is left as it was), whose files serve once unpacked
# into an empty root; and, as root on a machine without usbd-lua
# installed, installed with dpkg -i and removed again.
. "$(dirname "$0")/../lib.sh"
need_tools dpkg-buildpackage dh dpkg-deb git

# Whatever the build might leave in the tree shows here, ignored files too.
before=$(git -C "$TOP" status --porcelain --ignored)

deb_dir="$SCRATCH/deb"
start=$SECONDS
make -s -C "$TOP" deb DEB_DIR="$deb_dir" >"$SCRATCH/build.log" 2>&1
rc=$?
echo "# make deb took $((SECONDS - start)) s"
check "make deb DEB_DIR=... (exit $rc)" test "$rc" = 0
[ "$rc" = 0 ] || { tail -20 "$SCRATCH/build.log" | sed 's/^/# /'; finish; exit 1; }
check "the tree is as it was" test "$(git -C "$TOP" status --porcelain --ignored)" = "$before"

version=$("$USBD" --version | sed 's/^usbd-lua //')
deb=$(ls "$deb_dir"/usbd-lua_*.deb 2>/dev/null | head -1)
check "the package is usbd-lua_${version}_ARCH.deb: debian/changelog's version is the program's" \
    test "$deb" = "$deb_dir/usbd-lua_${version}_$(dpkg --print-architecture).deb"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libluajit-5.1-2 librocksdb librbd1 librados2 libssl3 liburing2 libxxhash0 liblz4-1 libzstd1; do
    check "it depends on $lib, which the binary links" grep -q "\b$lib" <<<"$depends"
done
check "it depends on luajit, which runs usbd-dedup-fsck" grep -qE '(^|, )luajit(,|$)' <<<"$depends"

files=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
for f in ./usr/bin/usbd-lua ./usr/bin/usbd-dedup-fsck ./usr/lib/usbd-lua/libusbd.so \
         ./usr/share/usbd-lua/lua/usbd/server/main.lua ./usr/share/usbd-lua/lua/usbd/core/cdef.h \
         ./usr/share/usbd-lua/devices/ramdisk.lua ./usr/share/usbd-lua/examples/cryptdisk.lua \
         ./usr/share/man/man1/usbd-lua.1.gz ./usr/share/man/man1/usbd-dedup-fsck.1.gz \
         ./lib/systemd/system/usbd-lua@.service ./usr/share/doc/usbd-lua/copyright; do
    check "the package holds $f" grep -qxF "$f" <<<"$files"
done

# Unpacked into an empty root: the binary finds its runtime from where it
# is (bin/../share/usbd-lua), not from /usr.
root="$SCRATCH/root"
check "dpkg -x into an empty root" dpkg -x "$deb" "$root"
check "the unit starts /usr/bin/usbd-lua" grep -q '^ExecStart=/usr/bin/usbd-lua ' "$root/lib/systemd/system/usbd-lua@.service"
USBD="$root/usr/bin/usbd-lua"
cd "$SCRATCH"
check "the unpacked usbd-lua --help ramdisk finds its ramdisk" \
    bash -c '"$1" --help ramdisk | grep -qx "script: $2/usr/share/usbd-lua/devices/ramdisk.lua"' _ "$USBD" "$root"
start_server unpacked cryptdisk key="$(printf '%0128d' 7)" -- ramdisk size=8M ||
    not_ok "the unpacked usbd-lua serves a stack of its shipped devices"
out=$(qemu-io -f raw "$URI" -c 'write -P 4 0 1M' -c 'read -P 4 0 1M' 2>&1)
check "the unpacked server reads back what it wrote" grep -q '^read 1048576/1048576' <<<"$out"
stop_server
check "it exits 0 on SIGTERM" test "$SERVER_STATUS" = 0
"$root/usr/bin/usbd-dedup-fsck" >/dev/null 2>&1
check "the unpacked usbd-dedup-fsck runs: its usage, exit 2" test $? = 2

# dpkg -i: only as root, and only where it can take nothing of anyone's
# (no usbd-lua package, none of its files there already).
installed=
purge() { [ -n "$installed" ] && dpkg --purge usbd-lua >/dev/null 2>&1; installed=; }
trap 'purge; cleanup' EXIT
clash=
for f in $files; do
    f=${f#.}
    [ -f "$root$f" ] && [ -e "$f" ] && { clash=$f; break; }
done
if [ "$(id -u)" != 0 ]; then
    echo "# not root: dpkg -i not tried"
elif dpkg -s usbd-lua >/dev/null 2>&1 || [ -n "$clash" ]; then
    echo "# usbd-lua is installed here already (${clash:-the package}): dpkg -i not tried"
else
    out=$(dpkg -i "$deb" 2>&1); rc=$?
    [ "$rc" = 0 ] && installed=1
    check "dpkg -i (exit $rc)" test "$rc" = 0 || sed 's/^/# /' <<<"$out"
    check "dpkg -i: usbd-lua --version" bash -c '/usr/bin/usbd-lua --version | grep -qx "usbd-lua $1"' _ "$version"
    check "dpkg -i: man finds usbd-lua(1)" bash -c 'man -w usbd-lua | grep -q "^/usr/share/man/man1/usbd-lua.1"'
    check "dpkg -i: --help dedupdisk reads the installed device" \
        bash -c '/usr/bin/usbd-lua --help dedupdisk | grep -qx "script: /usr/share/usbd-lua/devices/dedupdisk.lua"'
    if command -v systemd-analyze >/dev/null; then
        out=$(systemd-analyze verify /lib/systemd/system/usbd-lua@data.service 2>&1)
        check "dpkg -i: systemd-analyze verify usbd-lua@data.service${out:+: $out}" test -z "$out"
    fi
    out=$(dpkg --purge usbd-lua 2>&1); rc=$?
    [ "$rc" = 0 ] && installed=
    check "dpkg --purge (exit $rc)" test "$rc" = 0 || sed 's/^/# /' <<<"$out"
    check "dpkg --purge: nothing of it is left" bash -c '! [ -e /usr/bin/usbd-lua ] && ! [ -e /usr/share/usbd-lua ] && ! [ -e /lib/systemd/system/usbd-lua@.service ]'
fi

finish
