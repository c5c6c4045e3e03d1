#!/usr/bin/env bash
# build/cutfs's self-test, with real system calls (Python's os.pwrite,
# os.fsync, os.fdatasync, mmap): what was made durable survives a cut, what
# was not is lost (P=0) or kept (P=1), page by page with P=0.5 and the same
# seed the same way twice; a partial page write merges with the page's old
# bytes; a rename keeps pending state; msync is durable; after a cut every
# operation fails with EIO. Each round mounts cutfs on the same backing
# directory again, as a rebooted machine would.
. "$(dirname "$0")/../lib.sh"

PY=/usr/bin/python3      # Debian's: starts fast
need_tools "$PY" fusermount3
make -C "$TOP" -s build/cutfs >"$SCRATCH/make.log" 2>&1 ||
    { sed 's/^/# /' "$SCRATCH/make.log"; not_ok "build/cutfs builds"; finish; exit 1; }

CUTFS=$TOP/build/cutfs
BACK=$SCRATCH/backing
CMNT=$SCRATCH/cutfs
CUTFS_PID=
mkdir -p "$BACK" "$CMNT"

# Mounted? (From /proc/mounts: after a cut, stat of the mount point fails.)
mounted() { awk -v m="$CMNT" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }
mount_cutfs() {
    "$CUTFS" "$BACK" "$CMNT" -f >/dev/null 2>>"$SCRATCH/cutfs.log" &
    CUTFS_PID=$!
    for _ in $(seq 100); do
        mounted && return 0
        kill -0 "$CUTFS_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "# cutfs did not mount: $(cat "$SCRATCH/cutfs.log")"
    return 1
}
umount_cutfs() {
    if mounted; then
        fusermount3 -u "$CMNT" 2>/dev/null || umount -l "$CMNT"
    fi
    [ -n "$CUTFS_PID" ] || return 0
    # A dead or stuck cutfs must not hang the test.
    for _ in $(seq 100); do kill -0 "$CUTFS_PID" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$CUTFS_PID" 2>/dev/null
    wait "$CUTFS_PID" 2>/dev/null
    CUTFS_PID=
}
remount() { umount_cutfs && mount_cutfs; }
trap 'umount_cutfs; cleanup' EXIT

# ctl COMMAND: write it to .cutfs.
ctl() { printf '%s\n' "$1" >"$CMNT/.cutfs"; }
# cut SEED P, then the machine comes back: unmount, mount again.
cut_remount() { ctl "cut $1 $2" && remount; }

cat >"$SCRATCH/io.py" <<'PY'
import errno, mmap, os, sys
op, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
P = 4096
if op == "write":       # write PATH OFF LEN BYTE [fsync|fdatasync]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    off, n, b = int(args[0]), int(args[1]), int(args[2])
    os.pwrite(fd, bytes([b]) * n, off)
    if len(args) > 3:
        getattr(os, args[3])(fd)
    os.close(fd)
elif op == "pagewise":  # pagewise PATH N BYTE: pages 0..N-1, one write each
    fd = os.open(path, os.O_RDWR)
    for i in range(int(args[0])):
        os.pwrite(fd, bytes([int(args[1])]) * P, i * P)
    os.close(fd)
elif op == "pages":     # pages PATH: its size, and per page its byte or "mixed"
    data = open(path, "rb").read()
    out = [str(len(data))]
    for i in range(0, len(data), P):
        pg = data[i:i + P]
        out.append(str(pg[0]) if pg.count(pg[0]) == len(pg) else "mixed")
    print(" ".join(out))
elif op == "mmap":      # mmap PATH BYTE [msync]: fill the whole file through a shared mapping
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[:] = bytes([int(args[0])]) * len(m)
    if args[1:] == ["msync"]:
        m.flush()       # msync(MS_SYNC)
    m.close()
    os.close(fd)
elif op == "errno":     # errno PATH stat|open|create|write: the error's name, or "none"
    try:
        if args[0] == "stat":
            os.stat(path)
        elif args[0] == "open":
            os.close(os.open(path, os.O_RDONLY))
        elif args[0] == "create":
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        elif args[0] == "write":
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"cut 1 1\n")
            os.close(fd)
        print("none")
    except OSError as e:
        print(errno.errorcode[e.errno])
PY
io() { "$PY" "$SCRATCH/io.py" "$@"; }
pw() { io write "$@"; }
pages() { io pages "$1" 2>&1; }
# expect WHAT GOT: prints what differs, for the log.
same() { [ "$1" = "$2" ] || { echo "# expected: $1"; echo "# got:      $2"; return 1; }; }

mount_cutfs || { not_ok "cutfs mounts"; finish; exit 1; }
check "a fresh mount has no pending state" \
    same "pending_files 0 pending_pages 0 cuts 0 applied_pages 0 dropped_pages 0" "$(cat "$CMNT/.cutfs")"

# ---- (1) fdatasync makes data durable ------------------------------------------
pw "$CMNT/one" 0 12288 65 fdatasync
pw "$CMNT/other" 0 8192 66          # something for the cut to drop
cut_remount 1 0 || { not_ok "cut and mount again"; finish; exit 1; }
check "(1) written and fdatasynced: survives a cut with P=0" same "12288 65 65 65" "$(pages "$CMNT/one")"
check "(1) written without fdatasync: its size is lost too" same "0" "$(pages "$CMNT/other")"

# ---- (2) unsynced writes: gone with P=0, all there with P=1 --------------------
pw "$CMNT/two" 0 16384 66 fsync
pw "$CMNT/two" 0 16384 67
check "(2) unsynced writes read back before the cut" same "16384 67 67 67 67" "$(pages "$CMNT/two")"
check "(2) .cutfs counts them as pending" \
    same "pending_files 1 pending_pages 4" "$(cut -d' ' -f1-4 "$CMNT/.cutfs")"
cut_remount 5 0
check "(2) cut 5 0: the writes after the last fsync are gone" same "16384 66 66 66 66" "$(pages "$CMNT/two")"
pw "$CMNT/two" 0 16384 67
cut_remount 5 1
check "(2) cut 5 1: they are all there" same "16384 67 67 67 67" "$(pages "$CMNT/two")"
check "(2) the cut's line on stderr" \
    grep -q '^cutfs: cut seed 5 p 1: 4 pages applied, 0 dropped' "$SCRATCH/cutfs.log"

# ---- (3) a file grown without fsync keeps its durable size ---------------------
pw "$CMNT/three" 0 4096 68 fsync
pw "$CMNT/three" 8192 4096 69
truncate -s 1M "$CMNT/grown"
check "(3) before the cut: the grown sizes" \
    same "12288 1048576" "$(stat -c %s "$CMNT/three" "$CMNT/grown" | paste -sd' ')"
cut_remount 9 0
check "(3) cut 9 0: a write past the end leaves the durable size" same "4096 68" "$(pages "$CMNT/three")"
check "(3) cut 9 0: a truncate that grew is undone" same "0" "$(stat -c %s "$CMNT/grown")"

# ---- (4) a partial page write merges with the page's old bytes -----------------
pw "$CMNT/four" 0 8192 70 fsync
pw "$CMNT/four" 1000 100 71
pw "$CMNT/four" 4096 8 72
"$PY" -c '
import sys
p = bytearray(b"F" * 8192); p[1000:1100] = b"G" * 100; p[4096:4104] = b"H" * 8
open(sys.argv[1], "wb").write(p)' "$SCRATCH/four.ref"
check "(4) before the cut: the old page with the new bytes in it" cmp "$SCRATCH/four.ref" "$CMNT/four"
cut_remount 11 1
check "(4) after cut 11 1: the same" cmp "$SCRATCH/four.ref" "$CMNT/four"

# ---- (5) P=0.5: some pages survive, the same ones for the same seed ------------
# survivors FILE: 64 durable pages of 1s, each overwritten with 2s, a cut;
# the pages after it (in $SURVIVORS: not in a subshell, which would keep the
# cutfs it mounts).
survivors() {
    pw "$CMNT/$1" 0 $((64 * 4096)) 1 fsync
    io pagewise "$CMNT/$1" 64 2
    cut_remount 42 0.5
    SURVIVORS=$(pages "$CMNT/$1")
}
survivors five-a
first=$SURVIVORS
survivors five-b
second=$SURVIVORS
check "(5) the same writes and seed leave the same pages twice" same "$first" "$second"
new=$(tr ' ' '\n' <<<"${first#* }" | grep -c '^2$')
between() { [ "$1" -gt "$2" ] && [ "$1" -lt "$3" ]; }
check "(5) some but not all pages survive ($new of 64)" between "$new" 0 64

# ---- (6) a rename keeps pending state ------------------------------------------
pw "$CMNT/six" 0 8192 73 fsync
pw "$CMNT/six" 0 8192 74
mv "$CMNT/six" "$CMNT/six-renamed"
cut_remount 13 1
check "(6) write, rename, cut 13 1: the data under the new name" \
    same "8192 74 74" "$(pages "$CMNT/six-renamed")"
check "(6) and the old name is gone" [ ! -e "$CMNT/six" ]
pw "$CMNT/seven" 0 8192 75 fsync
pw "$CMNT/seven" 0 8192 76
mv "$CMNT/seven" "$CMNT/seven-renamed"
cut_remount 13 0
check "(6) write, rename, cut 13 0: the durable old data under the new name" \
    same "8192 75 75" "$(pages "$CMNT/seven-renamed")"

# ---- (7) mmap(MAP_SHARED) and msync ---------------------------------------------
pw "$CMNT/map" 0 16384 77 fsync
io mmap "$CMNT/map" 78 msync
pw "$CMNT/map-nosync" 0 16384 77 fsync
io mmap "$CMNT/map-nosync" 78
cut_remount 17 0
check "(7) a write through a shared mapping, msync(MS_SYNC): durable" \
    same "16384 78 78 78 78" "$(pages "$CMNT/map")"
check "(7) the same without msync: lost in a cut with P=0" \
    same "16384 77 77 77 77" "$(pages "$CMNT/map-nosync")"

# ---- "sync" on .cutfs ------------------------------------------------------------
pw "$CMNT/synced" 0 8192 79
ctl sync
check "sync: nothing is pending after it" \
    same "pending_files 0 pending_pages 0" "$(cut -d' ' -f1-4 "$CMNT/.cutfs")"
cut_remount 19 0
check "sync: what was pending survives a cut with P=0" same "8192 79 79" "$(pages "$CMNT/synced")"

# ---- (8) after a cut, the machine is dead ----------------------------------------
pw "$CMNT/dead" 0 4096 80
ctl "cut 23 0"
check "(8) after a cut: stat fails with EIO" same EIO "$(io errno "$CMNT/one" stat)"
check "(8) open fails with EIO" same EIO "$(io errno "$CMNT/two" open)"
check "(8) creating a file fails with EIO" same EIO "$(io errno "$CMNT/new" create)"
check "(8) another cut fails with EIO" same EIO "$(io errno "$CMNT/.cutfs" write)"
check "(8) .cutfs still reads, and counts the cut" \
    same "pending_files 0 pending_pages 0 cuts 1 applied_pages 0 dropped_pages 1" "$(cat "$CMNT/.cutfs")"
remount
check "(8) mounted again, it works" same "4096 68" "$(pages "$CMNT/three")"

umount_cutfs
finish
