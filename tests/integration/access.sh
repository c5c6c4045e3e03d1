#!/usr/bin/env bash
# Who may connect: --allow and --deny close a TCP client at accept, before
# a byte of the handshake, and log it once per address; --socket-mode and
# --socket-group set the Unix socket's permissions.
. "$(dirname "$0")/../lib.sh"
need_tools nbdinfo python3

# What a client from SRC gets on 127.0.0.1:PORT (or [::1] with SRC ::1)
# before the server hangs up or 2 s pass: the number of bytes, then
# "closed" or "open". 127.0.0.0/8 is all loopback, so SRC can be any of it.
probe() {  # SRC [DST]
    python3 - "$1" "${2:-127.0.0.1}" "$PORT" <<'PY'
import socket, sys, time
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.bind((src, 0))
s.connect((dst, port))
s.settimeout(2)
got, state = 0, "open"
try:
    while True:
        b = s.recv(4096)
        if not b:
            state = "closed"; break
        got += len(b)
except socket.timeout:
    pass
except ConnectionResetError:
    state = "closed"
print(got, state)
PY
}

start_tcp_server allow devices/ramdisk.lua --allow 127.0.0.1,10.0.0.0/8 --handshake-timeout 5 size=1M ||
    { not_ok "server with --allow starts"; finish; exit 1; }
check "--allow: a listed address gets the greeting (18 bytes)" test "$(probe 127.0.0.1)" = "18 open"
check "--allow: a listed address is served (nbdinfo)" \
    bash -c 'nbdinfo --size "nbd://127.0.0.1:$1" | grep -qx 1048576' _ "$PORT"
check "--allow: an address outside it is closed before any byte" test "$(probe 127.0.0.2)" = "0 closed"
for _ in $(seq 50); do probe 127.0.0.3 >/dev/null; done
probe 127.0.0.2 >/dev/null
check "--allow: the refusals are logged once per address (50 from 127.0.0.3: one line)" \
    test "$(grep -c 'refused a client from 127.0.0.3 ' "$SERVER_LOG")" = 1
check "--allow: ... and 127.0.0.2's twice: one line" \
    test "$(grep -c 'refused a client from 127.0.0.2 ' "$SERVER_LOG")" = 1
check "--allow: the server still serves after 52 refusals" \
    bash -c 'nbdinfo --size "nbd://127.0.0.1:$1" | grep -qx 1048576' _ "$PORT"
stop_server

start_tcp_server deny devices/ramdisk.lua --allow 127.0.0.0/8 --deny 127.0.0.1 size=1M ||
    { not_ok "server with --deny starts"; finish; exit 1; }
check "--deny wins over --allow" test "$(probe 127.0.0.1)" = "0 closed"
check "--deny: the rest of --allow is served" test "$(probe 127.0.0.9)" = "18 open"
check "--deny: nbdinfo from a denied address fails" \
    bash -c '! nbdinfo --size "nbd://127.0.0.1:$1" 2>/dev/null' _ "$PORT"
stop_server

# IPv6, and IPv4 clients on a dual-stack socket (::ffff:127.0.0.1).
if python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1",0))' 2>/dev/null; then
    start_tcp_server v6 devices/ramdisk.lua -i :: --allow ::1/128,127.0.0.2 size=1M ||
        { not_ok "server on :: starts"; finish; exit 1; }
    check "IPv6: ::1 is in --allow ::1/128" test "$(probe ::1 ::1)" = "18 open"
    check "IPv6 socket: an IPv4 client matches its IPv4 entry" test "$(probe 127.0.0.2)" = "18 open"
    check "IPv6 socket: an IPv4 client outside it is closed" test "$(probe 127.0.0.1)" = "0 closed"
    stop_server
else
    echo "# no IPv6 loopback here: the IPv6 cases are skipped (the unit tests cover the prefixes)"
fi

# The Unix socket's permissions.
start_server mode devices/ramdisk.lua --socket-mode 0660 --socket-group 4242 size=1M ||
    { not_ok "server with --socket-mode starts"; finish; exit 1; }
check "--socket-mode 0660 --socket-group 4242: the socket is rw-rw---- group 4242 ($(stat -c '%a %g' "$SOCK"))" \
    test "$(stat -c '%a %g' "$SOCK")" = "660 4242"
check "--socket-mode: the socket serves" bash -c 'nbdinfo --size "$1" | grep -qx 1048576' _ "$URI"
stop_server
start_server mode2 devices/ramdisk.lua --socket-mode 600 size=1M ||
    { not_ok "server with --socket-mode 600 starts"; finish; exit 1; }
check "--socket-mode 600: the socket is rw------- ($(stat -c '%a' "$SOCK"))" test "$(stat -c '%a' "$SOCK")" = 600
stop_server
(umask 077 && "$USBD" -U "$SCRATCH/wide.sock" --socket-mode 0666 --run 'stat -c %a "$unixsocket"' devices/ramdisk.lua size=1M) \
    >"$SCRATCH/wide.out" 2>/dev/null
check "--socket-mode 0666 is the mode whatever the umask (077 here: $(cat "$SCRATCH/wide.out"))" \
    test "$(cat "$SCRATCH/wide.out")" = 666
(umask 022 && "$USBD" -U "$SCRATCH/plain.sock" --run 'stat -c %a "$unixsocket"' devices/ramdisk.lua size=1M) \
    >"$SCRATCH/plain.out" 2>/dev/null
check "without --socket-mode the umask decides, as before (022: $(cat "$SCRATCH/plain.out"))" \
    test "$(cat "$SCRATCH/plain.out")" = 755

# Mistakes: one line each.
one_line_error() {  # DESCRIPTION PATTERN ARGS...
    local what=$1 pat=$2; shift 2
    local err rc
    err=$(timeout 10 "$USBD" "$@" 2>&1 >/dev/null); rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && grep -q -- "$pat" <<<"$err"; then
        ok "$what"
    else
        not_ok "$what (exit $rc: $err)"
    fi
}
one_line_error "a bad prefix is one line" "prefix must be a number from 0 to 32" -p 1 --allow 10.0.0.0/40 ramdisk
one_line_error "a name instead of an address is one line" "not an address" -p 1 --deny example.com ramdisk
one_line_error "--allow without -p is one line" "serve with -p" -U "$SCRATCH/x.sock" --allow 127.0.0.1 ramdisk
one_line_error "a bad --socket-mode is one line" "want an octal mode" -U "$SCRATCH/x.sock" --socket-mode rw ramdisk
one_line_error "an unknown --socket-group is one line" "no such group" -U "$SCRATCH/x.sock" --socket-group no-such-group ramdisk
one_line_error "--socket-mode without -U is one line" "give -U PATH" -p 1 --socket-mode 0600 ramdisk
finish
