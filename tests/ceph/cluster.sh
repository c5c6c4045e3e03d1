#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for tests: one monitor, one OSD, no
# mgr, cephx on, a pool "rbd"; everything (config, keyring, data, logs, pid
# files, sockets) lives in DIR, and it listens on 127.0.0.1 only, on a port
# block of its own (so two clusters can run at once).
#
#   cluster.sh start DIR [memstore|bluestore]  new cluster, or restart DIR's
#   cluster.sh stop DIR                         both daemons, by pid file
#   cluster.sh stop-osd DIR | start-osd DIR     the OSD alone (fault tests)
#
# start returns once a real object write (rados put) succeeds; DIR/ceph.conf
# is then what clients use (it names DIR/keyring, client.admin). memstore
# (the default) is fast but keeps data only in memory; bluestore (on a
# sparse file) keeps it across a stop. Facts behind the settings:
# /work/shared/notes/ceph-single-node.md.
set -u
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|stop-osd|start-osd DIR [memstore|bluestore]" >&2; exit 2; }
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
# glibc would hand every freed message buffer back to the kernel, and fresh
# pages cost a fault each here: keep them.
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296

die() { echo "cluster.sh: $*" >&2; exit 1; }

# A block of 10 free ports: mon v2 and v1 on the first two, the OSD above.
free_port_block() {
    local used base
    used=$(tail -q -n +2 /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{split($2, a, ":"); print a[2]}' |
        while read -r hex; do echo $((16#$hex)); done)
    for _ in $(seq 200); do
        base=$((20000 + (RANDOM % 4000) * 10))
        local clash=
        for p in $(seq "$base" $((base + 9))); do
            grep -qx "$p" <<<"$used" && { clash=1; break; }
        done
        [ -z "$clash" ] && { echo "$base"; return; }
    done
    die "no free port block"
}

write_conf() {
    local base=$1 store=$2 fsid=$3
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$base,v1:127.0.0.1:$((base + 1))]
public addr = 127.0.0.1
ms bind port min = $((base + 2))
ms bind port max = $((base + 9))
keyring = $dir/keyring
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 1
mon data avail warn = 2
paxos propose interval = 0.05
paxos min wait = 0.01
# A client that died without closing (kill -9) keeps its watch, and so an
# image's lock, this long (default 30 s).
osd client watch timeout = 10
pid file = $dir/\$name.pid
log file = $dir/\$name.log
run dir = $dir
mon cluster log file = $dir/cluster.log
crash dir = $dir/crash
[mon]
admin socket = $dir/\$name.asok
[osd]
admin socket = $dir/\$name.asok
[client]
admin socket =
[mon.a]
mon data = $dir/mon.a
[osd.0]
osd data = $dir/osd.0
osd objectstore = $store
memstore device bytes = 4294967296
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false
EOF
}

# The pid in DIR/NAME.pid, if that process is this cluster's daemon.
daemon_pid() {
    local pidf=$dir/$1.pid pid
    [ -f "$pidf" ] || return 1
    pid=$(cat "$pidf")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$conf" || return 1
    echo "$pid"
}

stop_daemon() {
    local pid
    pid=$(daemon_pid "$1") || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/$1.pid"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$dir/$1.pid"
}

ceph_() { timeout 30 ceph -c "$conf" --connect-timeout 20 "$@"; }

start_osd() {
    daemon_pid osd.0 >/dev/null && return 0
    ceph-osd -c "$conf" -i 0 >>"$dir/start.log" 2>&1 || die "ceph-osd did not start (see $dir/osd.0.log)"
}

# An object written and read back: the cluster takes I/O.
wait_ready() {
    local t0=$SECONDS
    echo ready >"$dir/ready.obj"
    until timeout 10 rados -c "$conf" -p rbd put ready "$dir/ready.obj" 2>/dev/null; do
        [ $((SECONDS - t0)) -lt 60 ] || die "no object write within 60 s (see $dir/*.log)"
        sleep 0.1
    done
}

start() {
    local store=${1:-memstore}
    if [ -f "$conf" ]; then  # an existing cluster: start its daemons again
        daemon_pid mon.a >/dev/null || ceph-mon -c "$conf" -i a >>"$dir/start.log" 2>&1 || die "ceph-mon did not start"
        start_osd
        wait_ready
        return
    fi
    case $store in memstore|bluestore) ;; *) die "store must be memstore or bluestore" ;; esac
    local fsid osd_uuid base
    fsid=$(cat /proc/sys/kernel/random/uuid); osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    base=$(free_port_block)
    mkdir -p "$dir/mon.a" "$dir/osd.0" "$dir/crash"
    write_conf "$base" "$store" "$fsid"
    {
        ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' &&
        ceph-authtool "$dir/keyring" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' &&
        ceph-authtool "$dir/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' \
            --cap osd 'allow *' --cap mgr 'allow profile osd' &&
        monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$base,v1:127.0.0.1:$((base + 1))]" "$dir/monmap" &&
        ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" &&
        ceph-mon -c "$conf" -i a &&
        ceph_ osd new "$osd_uuid" 0 &&
        ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" &&
        start_osd &&
        ceph_ osd pool create rbd 8 8 &&
        ceph_ osd pool application enable rbd rbd
    } >>"$dir/start.log" 2>&1 || die "could not create the cluster (see $dir/start.log)"
    wait_ready
}

case $cmd in
    start) start "${3:-memstore}" ;;
    stop) stop_daemon osd.0; stop_daemon mon.a ;;
    stop-osd) stop_daemon osd.0 ;;
    start-osd) start_osd ;;
    *) die "unknown command $cmd" ;;
esac
