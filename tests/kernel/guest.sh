#!/bin/sh
# Run a script as root inside a qemu guest (TCG, Debian's stock kernel) whose
# kernel has the nbd driver, for machines whose own kernel has none.
#
#   tests/kernel/guest.sh [-t SECONDS] [-q] GUEST_SCRIPT [ARG...]
#
# The host's root is shared read-only into the guest over 9p; the guest gets
# fresh devtmpfs, proc, sysfs and tmpfs (/tmp, /run) mounts on top of it and
# chroots into it, so GUEST_SCRIPT (a host path) and everything the host has
# built or installed are there as they are on the host. Only /tmp and /run are
# writable in the guest. Modules loaded before the script runs: virtio, 9p,
# nbd (nbds_max=4) and ext4. The script runs in the current directory (if the
# guest can see it), with USBD_IN_GUEST=1 in its environment.
# ARGs must not contain spaces (they travel on the kernel command line).
# The share is mounted with cache=loose (execs over 9p are several times
# faster): a host file changed while the guest runs may look stale in it.
# USBD_GUEST_SMP (default 1: faster than 2 under TCG on a busy 2-core host)
# and USBD_GUEST_MEM (default 1G) size the guest.
#
# Prints the guest's console output (live, unless -q: then only on failure)
# and exits with the script's exit status; 124 if the guest timed out, 125 if
# it died before the script finished.
#
# The kernel package is downloaded once (apt-get download) and cached with
# the initramfs in $USBD_KERNEL_CACHE (default: .cache/kernel in the project).
# KERNEL chooses it: 6.1 (the default: the one linux-image-amd64 depends on
# in Debian 12) or 6.12 (the newest linux-image-6.12.*-amd64-unsigned apt
# offers, from Debian 12's security archive; it has ublk, and loads
# ublk_drv too). Each has its own module list and cache folder.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${USBD_KERNEL_CACHE:-$top/.cache/kernel}
timeout_s=300
quiet=0
while [ $# -gt 0 ]; do
    case $1 in
        -t) timeout_s=$2; shift 2 ;;
        -q) quiet=1; shift ;;
        --) shift; break ;;
        -*) echo "usage: $0 [-t SECONDS] [-q] GUEST_SCRIPT [ARG...]" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ]; then
    echo "usage: $0 [-t SECONDS] [-q] GUEST_SCRIPT [ARG...]" >&2; exit 2
fi
script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
[ -f "$script" ] || { echo "guest.sh: no such script: $script" >&2; exit 2; }

# Modules, in load order (each after what it depends on), paths relative to
# lib/modules/VERSION/kernel.
case ${KERNEL:-6.1} in
6.1)
    MODULES="drivers/virtio/virtio_ring drivers/virtio/virtio
drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
drivers/virtio/virtio_pci net/9p/9pnet net/9p/9pnet_virtio fs/netfs/netfs
fs/fscache/fscache fs/9p/9p drivers/block/nbd crypto/crc32c_generic lib/crc16
fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4"
    kglob=linux-image-6.1.* ;;
6.12)
    # virtio, virtio_ring, virtio_pci and fscache are built in.
    MODULES="fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p
drivers/block/nbd crypto/crc32c_generic lib/crc16 fs/mbcache fs/jbd2/jbd2
fs/ext4/ext4 drivers/block/ublk_drv"
    kglob=linux-image-6.12.*-amd64-unsigned ;;
*) echo "guest.sh: KERNEL=${KERNEL}: want 6.1 or 6.12" >&2; exit 2 ;;
esac

say() { echo "guest.sh: $*" >&2; }

# --- tools -----------------------------------------------------------------
need_pkgs=
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_pkgs="$need_pkgs qemu-system-x86"
if ! dpkg -s busybox-static >/dev/null 2>&1; then need_pkgs="$need_pkgs busybox-static"; fi
if [ -n "$need_pkgs" ]; then
    say "installing$need_pkgs"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $need_pkgs >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends $need_pkgs >/dev/null; } ||
        { say "could not install$need_pkgs"; exit 125; }
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # one builder at a time; readers of a finished cache are quick

# --- kernel ----------------------------------------------------------------
# Reuse the chosen series' kernel if cached; only ask apt when there is none.
# shellcheck disable=SC2086
kdir=$(ls -d "$cache"/$kglob/ 2>/dev/null | sort -V | tail -n 1 || true)
kdir=${kdir%/}
find_pkg() {
    if [ "${KERNEL:-6.1}" = 6.1 ]; then
        apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
    else
        apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$' 2>/dev/null |
            sed 's/ .*//' | sort -V | tail -n 1
    fi
}
if [ -z "$kdir" ] || [ ! -f "$kdir/.complete" ]; then
    pkg=$(find_pkg)
    if [ -z "$pkg" ]; then
        apt-get update >/dev/null 2>&1 || true
        pkg=$(find_pkg)
    fi
    [ -n "$pkg" ] || { say "cannot find a kernel package for KERNEL=${KERNEL:-6.1}"; exit 125; }
    kdir=$cache/$pkg
    rm -rf "$kdir"; mkdir -p "$kdir"
    say "downloading $pkg"
    (cd "$kdir" && apt-get download "$pkg" >/dev/null 2>&1) ||
        { say "apt-get download $pkg failed"; exit 125; }
    deb=$(ls "$kdir"/*.deb | head -n 1)
    # Take only the kernel image and the modules we load (the whole package
    # unpacks to ~400 MB); the .deb stays so a longer list needs no network.
    pats="./boot/vmlinuz-*"
    for m in $MODULES; do pats="$pats ./lib/modules/*/kernel/$m.ko*"; done
    # shellcheck disable=SC2086
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir" --wildcards $pats ||
        { say "unpacking $deb failed"; exit 125; }
    touch "$kdir/.complete"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n 1)
kver=${vmlinuz##*/vmlinuz-}
mods=$kdir/lib/modules/$kver/kernel

# --- initramfs -------------------------------------------------------------
initrd=$cache/initramfs-$kver.cpio.gz
if [ ! -s "$initrd" ] || [ "$0" -nt "$initrd" ] || [ /bin/busybox -nt "$initrd" ]; then
    say "building $initrd"
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/sbin" "$root/proc" "$root/sys" "$root/dev" \
             "$root/host" "$root/modules" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    n=10
    for m in $MODULES; do
        # numbered: load order; 6.12's are .ko.xz (unpacked here: faster to load)
        if [ -f "$mods/$m.ko" ]; then cp "$mods/$m.ko" "$root/modules/$n-${m##*/}.ko"
        elif [ -f "$mods/$m.ko.xz" ]; then xz -dc "$mods/$m.ko.xz" >"$root/modules/$n-${m##*/}.ko"
        else say "missing module $m.ko in $kdir"; rm -rf "$root"; exit 125; fi
        n=$((n + 1))
    done
    cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# usbd-lua test guest: load drivers, share the host root, run the script.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "@@usbd-guest: setup failed: $*"; poweroff -f; }
for ko in /modules/*.ko; do
    name=${ko##*/[0-9][0-9]-}; name=${name%.ko}
    case $name in nbd) opts=nbds_max=4 ;; *) opts= ;; esac
    insmod "$ko" $opts || fail "insmod $name"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host || fail "mount 9p"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /dev"
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t proc proc /host/proc || fail "mount /proc"
mount -t sysfs sysfs /host/sys || fail "mount /sys"
# The kernel hands us the words after "--" on its command line (the script
# and its arguments) as "$@", and USBD_CWD=... as an environment variable.
cwd=$USBD_CWD
# The guest's own /tmp and /run cover the host's; a checkout that lives in
# one of them (CI may clone anywhere) is shown through again from a bind
# of the host's folder taken before it was covered.
mkdir -p /orig/tmp /orig/run
mount -o bind /host/tmp /orig/tmp && mount -o bind /host/run /orig/run || fail "bind the host's /tmp"
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "mount /tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || fail "mount /run"
case $cwd in
/tmp/?* | /run/?*)
    mkdir -p "/host$cwd" && mount -o bind "/orig$cwd" "/host$cwd" || fail "show $cwd in the guest" ;;
esac
ip link set lo up 2>/dev/null
hostname usbd-guest
echo; echo "@@usbd-guest: running $*"
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TERM=dumb LANG=C.UTF-8 USBD_IN_GUEST=1 \
    /bin/sh -c 'cd "$1" 2>/dev/null || cd /tmp; shift; exec "$@" </dev/null' sh "$cwd" "$@"
rc=$?
sync
echo "@@usbd-guest: exit $rc"
poweroff -f
EOF
    chmod 755 "$root/init"
    (cd "$root" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 >"$initrd.tmp") ||
        { say "cpio failed"; rm -rf "$root"; exit 125; }
    mv "$initrd.tmp" "$initrd"
    rm -rf "$root"
fi
flock -u 9

# --- boot ------------------------------------------------------------------
log=$(mktemp /tmp/usbd-guest.XXXXXX)
trap 'rm -f "$log"' EXIT
cwd=$(pwd)
case $cwd in *" "*) cwd=/ ;; esac
append="console=ttyS0 quiet loglevel=3 panic=-1 USBD_CWD=$cwd -- $script $*"
[ "${#append}" -lt 2000 ] || { say "arguments too long for the kernel command line"; exit 2; }

# Console output without carriage returns and the firmware's terminal escapes.
esc=$(printf '\033')
clean() { sed -u "s/\r//g; s/${esc}\[[0-9;?]*[A-Za-z]//g; s/${esc}c//g"; }

boot() {
    timeout -k 5 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -smp "${USBD_GUEST_SMP:-1}" \
        -m "${USBD_GUEST_MEM:-2G}" -nographic -no-reboot -nic none \
        -kernel "$vmlinuz" -initrd "$initrd" -append "$append" \
        -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
        </dev/null 2>&1
    echo "@@qemu-rc $?"
}
# Live: from the guest's first marker line to its exit line.
live() { awk '/^@@qemu-rc /{next} /^@@usbd-guest: /{on=1} on{print; fflush()} /^@@usbd-guest: exit /{on=0}'; }
set +e
if [ $quiet = 1 ]; then
    boot | clean >"$log"
else
    boot | clean | tee "$log" | live
fi
qrc=$(sed -n 's/^@@qemu-rc //p' "$log")
set -e

rc=$(sed -n 's/^@@usbd-guest: exit \([0-9][0-9]*\)$/\1/p' "$log" | tail -n 1)
if [ -z "$rc" ]; then
    if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        say "guest timed out after ${timeout_s}s"; rc=124
    else
        say "guest died before the script finished (qemu exit $qrc)"; rc=125
    fi
fi
# Live output starts at the guest's first marker; if the guest failed before
# it (or -q hid everything), show the whole console.
if [ "$rc" != 0 ] && { [ $quiet = 1 ] || ! grep -q '@@usbd-guest: running' "$log"; }; then
    say "guest console output:"
    grep -v '^@@qemu-rc ' "$log" >&2
fi
[ "$rc" = 0 ] || say "$script failed in the guest (status $rc)"
exit "$rc"
