# Helpers for the guest-side kernel tests (sourced, POSIX sh). Runs inside
# the qemu guest of guest.sh: root, nbd driver with nbd0..nbd3, writable
# /tmp only.

T_PASS=${T_PASS:-0}
T_FAIL=${T_FAIL:-0}
T_SKIP=${T_SKIP:-0}

ok()     { T_PASS=$((T_PASS + 1)); echo "ok - $*"; }
not_ok() { T_FAIL=$((T_FAIL + 1)); echo "not ok - $*"; }
skip()   { T_SKIP=$((T_SKIP + 1)); echo "skip - $*"; }
note()   { printf '%s\n' "$*" | sed 's/^/#   /'; }

# check DESC CMD [ARG...]: ok if CMD succeeds; if not, show its output.
check() {
    _d=$1; shift
    if _out=$("$@" 2>&1); then ok "$_d"; else not_ok "$_d"; note "$_out"; fi
}

# wait_until SECONDS CMD [ARG...]: poll CMD every 0.1 s until it succeeds.
# (Deadline by the clock: under TCG each round of forks is slow.)
wait_until() {
    _end=$(($(date +%s) + $1)); shift
    while :; do
        "$@" 2>/dev/null && return 0
        [ "$(date +%s)" -lt $_end ] || return 1
        sleep 0.1
    done
}

# Cheap checks (shell builtins only: they run in polling loops).
attached() { [ -e "/sys/block/${1##*/}/pid" ]; }
detached() {
    [ ! -e "/sys/block/${1##*/}/pid" ] || return 1
    read -r _sz <"/sys/block/${1##*/}/size" && [ "$_sz" = 0 ]
}
nbd_pid() { cat "/sys/block/${1##*/}/pid" 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }

# one_line_error FILE WORDS: FILE holds exactly one line, and it says WORDS.
one_line_error() {
    [ "$(wc -l <"$1")" -eq 1 ] && grep -q -- "$2" "$1"
}

# wait_exit PID SECONDS: wait for a background child to exit; sets
# EXIT_STATUS (or 255 and kills it if it has not exited in time).
wait_exit() {
    _end=$(($(date +%s) + $2))
    while alive "$1" && [ "$(date +%s)" -lt $_end ]; do sleep 0.1; done
    if alive "$1"; then kill -9 "$1" 2>/dev/null; EXIT_STATUS=255; wait "$1" 2>/dev/null; return 1; fi
    wait "$1"; EXIT_STATUS=$?
    return 0
}

# make_tree DIR SUMS: a small tree of files (random data, various sizes,
# nested directories, a sparse-ish big file); checksums go to SUMS.
make_tree() {
    mkdir -p "$1/a/b/c" "$1/empty" "$1/d e"
    _i=0
    for _sz in 0 1 511 512 4095 4096 4097 65536 100000 1048576; do
        head -c "$_sz" /dev/urandom >"$1/a/f$_i" || return 1
        _i=$((_i + 1))
    done
    for _i in 1 2 3 4 5 6 7 8; do
        head -c $((_i * 3000)) /dev/urandom >"$1/a/b/c/g$_i" || return 1
    done
    head -c 8388608 /dev/urandom >"$1/d e/big" || return 1
    echo "hello from usbd-lua" >"$1/hello.txt"
    (cd "$1" && find . -type f | sort | xargs -d '\n' sha256sum) >"$2"
}
verify_tree() { (cd "$1" && sha256sum -c --quiet "$2"); }

# fs_cycle DEV TAG: mkfs.ext4, mount, write a tree, umount, mount again,
# verify, umount, e2fsck -fn. Leaves the checksums in /tmp/TAG.sums and
# the filesystem on DEV (unmounted).
fs_cycle() {
    _dev=$1 _tag=$2 _mnt=/tmp/mnt-$2
    mkdir -p "$_mnt"
    check "$_tag: mkfs.ext4 on $_dev" mkfs.ext4 -q -F "$_dev"
    check "$_tag: mount $_dev" mount -t ext4 "$_dev" "$_mnt"
    check "$_tag: write a tree of files" make_tree "$_mnt" "/tmp/$_tag.sums"
    check "$_tag: umount" umount "$_mnt"
    check "$_tag: mount again" mount -t ext4 "$_dev" "$_mnt"
    check "$_tag: checksums match after remount" verify_tree "$_mnt" "/tmp/$_tag.sums"
    check "$_tag: umount again" umount "$_mnt"
    check "$_tag: e2fsck -fn clean" e2fsck -fn "$_dev"
}

# fs_verify DEV TAG: mount, verify the checksums of fs_cycle, umount, fsck.
fs_verify() {
    _dev=$1 _tag=$2 _mnt=/tmp/mnt-$2
    mkdir -p "$_mnt"
    check "$_tag: mount $_dev" mount -t ext4 "$_dev" "$_mnt"
    check "$_tag: data still there" verify_tree "$_mnt" "/tmp/$_tag.sums"
    check "$_tag: umount" umount "$_mnt"
    check "$_tag: e2fsck -fn clean" e2fsck -fn "$_dev"
}
