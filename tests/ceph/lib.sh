# Shared by the Ceph tests: tests/lib.sh, plus a throwaway cluster of this
# test file's own (tests/ceph/cluster.sh) in $SCRATCH/ceph, stopped on exit
# whatever happens. Source it, then: start_cluster [memstore|bluestore].
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CLUSTER="$TOP/tests/ceph/cluster.sh"
CEPH_DIR="$SCRATCH/ceph"
CONF="$CEPH_DIR/ceph.conf"
RBD_ARGS=()
EXTRA_CLEANUP=:

ceph_cleanup() {
    eval "$EXTRA_CLEANUP"
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null
    [ -f "$CONF" ] && "$CLUSTER" stop "$CEPH_DIR"
    cleanup
}
trap ceph_cleanup EXIT
trap "exit 143" TERM
trap "exit 130" INT

# The packages come with make deps: their absence is a failure, not a skip.
need_ceph() {
    local missing=
    for tool in ceph-mon ceph-osd ceph rbd rados; do
        command -v "$tool" >/dev/null || missing="$missing $tool"
    done
    [ -e /usr/include/rbd/librbd.h ] || missing="$missing librbd-dev"
    if [ -n "$missing" ]; then
        not_ok "Ceph is installed (make deps):$missing missing"
        finish; exit 1
    fi
}

start_cluster() {
    need_ceph
    local t0=$SECONDS
    if "$CLUSTER" start "$CEPH_DIR" "${1:-memstore}"; then
        ok "a ${1:-memstore} cluster (one mon, one OSD) takes writes after $((SECONDS - t0)) s"
    else
        not_ok "a ${1:-memstore} cluster starts"
        tail -20 "$CEPH_DIR"/start.log 2>/dev/null | sed 's/^/# /'
        finish; exit 1
    fi
    RBD_ARGS=(conf="$CONF")
}

# rbd and rados against this cluster.
rbd_() { timeout 120 rbd -c "$CONF" "$@"; }
