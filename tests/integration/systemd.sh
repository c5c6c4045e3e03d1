#!/usr/bin/env bash
# The systemd unit template, usbd-lua@.service: make install puts it in
# SYSTEMDDIR with the binary's path written in; systemd-analyze verify
# accepts it; and its command line, built from a configuration file as
# systemd builds it, serves, reports itself started, and stops cleanly on
# SIGTERM. (Starting it under systemd itself needs systemd as PID 1.)
. "$(dirname "$0")/../lib.sh"

prefix="$SCRATCH/prefix"
check "make install PREFIX=... SYSTEMDDIR=..." \
    make -s -C "$TOP" install PREFIX="$prefix" SYSTEMDDIR="$prefix/units"
unit="$prefix/units/usbd-lua@.service"
check "the unit is in SYSTEMDDIR" test -f "$unit"
check "the unit starts PREFIX/bin/usbd-lua" grep -q "^ExecStart=$prefix/bin/usbd-lua " "$unit"
check "make install's default SYSTEMDDIR is PREFIX/lib/systemd/system" \
    bash -c '[ "$(make -s -C "$1" -p -n install 2>/dev/null | sed -n "s/^SYSTEMDDIR = //p")" = "\$(PREFIX)/lib/systemd/system" ]' _ "$TOP"

# systemd-analyze verify: the syntax, that the binary is there, and that
# man finds the page the unit's Documentation= names (MANPATH).
if ! command -v systemd-analyze >/dev/null; then
    echo "# systemd-analyze is not installed (apt-get install systemd): not verified"
else
    printf '[Service]\nExecStart=/bin/true\n' >"$SCRATCH/probe.service"
    if ! systemd-analyze verify --man=no "$SCRATCH/probe.service" >"$SCRATCH/probe.log" 2>&1; then
        echo "# systemd-analyze cannot run here ($(head -1 "$SCRATCH/probe.log")): not verified"
    else
        out=$(MANPATH="$prefix/share/man" systemd-analyze verify "$prefix/units/usbd-lua@data.service" 2>&1)
        check "systemd-analyze verify usbd-lua@data.service${out:+: $out}" test -z "$out"
        sed 's|^ExecStart=[^ ]*|ExecStart=/nonexistent/usbd-lua|' "$unit" >"$SCRATCH/broken@.service"
        out=$(MANPATH="$prefix/share/man" systemd-analyze verify "$SCRATCH/broken@data.service" 2>&1)
        check "... which would catch a missing binary" grep -q "not executable" <<<"$out"
    fi
fi

# The unit's lines with the instance (%i) and the runtime folder (%t).
line() {  # KEY
    sed -n "s/^$1=//p" "$unit" | sed "s|%t|$SCRATCH/run|g; s|%i|data|g"
}
# What systemd runs for ExecStart=: "$VAR" as a word of its own is VAR's
# value split at whitespace, zero words if empty or unset.
argv() {
    local word words=()
    for word in $(line ExecStart); do
        if [[ $word =~ ^\$([A-Z_]+)$ ]]; then
            read -ra split <<<"${!BASH_REMATCH[1]:-}"
            words+=("${split[@]}")
        else
            words+=("$word")
        fi
    done
    printf '%s\n' "${words[@]}"
}
# Start the unit's command with conf's variables; ExecStartPost's wait
# ($$ is systemd's escape for $) decides whether it started.
run_unit() {  # CONF
    unset DEVICE NBD ARGS OPTIONS
    set -a; . "$1"; set +a
    mkdir -p "$SCRATCH/run/usbd-lua/data"   # RuntimeDirectory=
    mapfile -t cmd < <(argv)
    "${cmd[@]}" >"$SCRATCH/unit.log" 2>&1 &
    SERVER_PID=$!
    post=$(line ExecStartPost | sed 's/\$\$/$/g')
    MAINPID=$SERVER_PID timeout 20 bash -c "export MAINPID; $post"
}

cat >"$SCRATCH/data.conf" <<EOF
# a comment, as in any environment file
DEVICE=cachedisk
ARGS="size=1M -- ramdisk size=8M"
OPTIONS="-U $SCRATCH/data.sock -v"
EOF
run_unit "$SCRATCH/data.conf"
check "ExecStartPost returns once the server serves" test $? = 0
pidfile="$SCRATCH/run/usbd-lua/data/pid"
check "the pid file is the server's" test "$(cat "$pidfile" 2>/dev/null)" = "$SERVER_PID"
URI="nbd+unix:///?socket=$SCRATCH/data.sock"
out=$(qemu-io -f raw "$URI" -c 'write -P 6 0 64k' -c 'read -P 6 0 64k' 2>&1)
check "the configured stack serves (cachedisk over ramdisk)" grep -q '^read 65536/65536' <<<"$out"
stop_server
check "SIGTERM: exit 0 (so Restart=on-failure leaves it stopped)" test "$SERVER_STATUS" = 0
check "SIGTERM: the pid file is gone" test ! -e "$pidfile"
check "SIGTERM: the statistics are in the log (the journal)" grep -q 'requests' "$SCRATCH/unit.log"

# A device that is not there: the server exits 1 and ExecStartPost fails
# instead of waiting; the unit tries again (RestartSec=).
cat >"$SCRATCH/bad.conf" <<EOF
DEVICE=nosuchdisk
OPTIONS="-U $SCRATCH/bad.sock"
EOF
run_unit "$SCRATCH/bad.conf"
check "a device that is not there: ExecStartPost fails" test $? = 1
wait "$SERVER_PID"; rc=$?; SERVER_PID=
check "... and the server exits 1, which the unit restarts (exit $rc)" test "$rc" = 1
# A mistake on the command line: exit 2, which the unit does not restart.
cat >"$SCRATCH/worse.conf" <<EOF
DEVICE=ramdisk
OPTIONS="--no-such-option"
EOF
run_unit "$SCRATCH/worse.conf"
check "a bad option: ExecStartPost fails" test $? = 1
wait "$SERVER_PID"; rc=$?; SERVER_PID=
check "... and the server exits 2 (exit $rc)" test "$rc" = 2
check "the unit does not restart on exit 2" grep -q '^RestartPreventExitStatus=2$' "$unit"
check "the unit stops with SIGTERM" grep -q '^KillSignal=SIGTERM$' "$unit"

finish
