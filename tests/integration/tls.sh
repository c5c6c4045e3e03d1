#!/usr/bin/env bash
# TLS (NBD_OPT_STARTTLS) with real clients: nbdinfo, nbdcopy and nbdfuse
# (libnbd's nbds:// URIs with tls-psk-file or tls-certificates), qemu-img
# and qemu-io (tls-creds-psk, tls-creds-x509 objects); ext4 and e2fsck over
# TLS. And the refusals: a plaintext client of --tls=require gets no
# export, a wrong key or an untrusted certificate fails the handshake.
# Keys and certificates are made here, with psktool and certtool.
. "$(dirname "$0")/../lib.sh"
need_tools nbdinfo nbdcopy nbdfuse qemu-img qemu-io psktool certtool mkfs.ext4 e2fsck losetup fusermount3 python3

K="$SCRATCH/keys"
mkdir -p "$K/psk" "$K/wrongpsk" "$K/server" "$K/client" "$K/stranger" "$K/noclient"
psktool -u alice -p "$K/psk/keys.psk" >/dev/null
psktool -u alice -p "$K/wrongpsk/keys.psk" >/dev/null   # the same user, another key
# qemu's tls-creds-psk reads keys.psk from its dir: the same file.

# A CA, the server's certificate (localhost, 127.0.0.1), a client's, and a
# client whose certificate another CA signed.
cert() {  # NAME TEMPLATE-LINES... (NAME.key, NAME.pem under $K/pki)
    local name=$1; shift
    mkdir -p "$K/pki"
    printf '%s\n' "$@" >"$K/pki/$name.info"
    certtool --generate-privkey --key-type ecdsa --outfile "$K/pki/$name.key" 2>/dev/null
}
cert ca 'cn = test CA' ca cert_signing_key 'expiration_days = 30'
certtool --generate-self-signed --load-privkey "$K/pki/ca.key" --template "$K/pki/ca.info" \
    --outfile "$K/pki/ca.pem" 2>/dev/null
cert other 'cn = another CA' ca cert_signing_key 'expiration_days = 30'
certtool --generate-self-signed --load-privkey "$K/pki/other.key" --template "$K/pki/other.info" \
    --outfile "$K/pki/other.pem" 2>/dev/null
cert server 'cn = localhost' 'dns_name = localhost' 'ip_address = 127.0.0.1' tls_www_server \
    encryption_key signing_key 'expiration_days = 30'
certtool --generate-certificate --load-privkey "$K/pki/server.key" --load-ca-certificate "$K/pki/ca.pem" \
    --load-ca-privkey "$K/pki/ca.key" --template "$K/pki/server.info" --outfile "$K/pki/server.pem" 2>/dev/null
for c in client stranger; do
    cert "$c" "cn = $c" tls_www_client encryption_key signing_key 'expiration_days = 30'
    ca=ca; [ "$c" = stranger ] && ca=other
    certtool --generate-certificate --load-privkey "$K/pki/$c.key" --load-ca-certificate "$K/pki/$ca.pem" \
        --load-ca-privkey "$K/pki/$ca.key" --template "$K/pki/$c.info" --outfile "$K/pki/$c.pem" 2>/dev/null
done
cp "$K/pki/ca.pem" "$K/server/ca-cert.pem"
cp "$K/pki/server.pem" "$K/server/server-cert.pem"
cp "$K/pki/server.key" "$K/server/server-key.pem"
for c in client stranger; do
    cp "$K/pki/ca.pem" "$K/$c/ca-cert.pem"   # both trust the server's CA
    cp "$K/pki/$c.pem" "$K/$c/client-cert.pem"
    cp "$K/pki/$c.key" "$K/$c/client-key.pem"
done
cp "$K/pki/ca.pem" "$K/noclient/ca-cert.pem"   # trusts the server, shows nothing
check "certtool made the CA, server and client certificates" test -s "$K/client/client-cert.pem" -a -s "$K/server/server-key.pem"

PSK=(--tls=require --tls-psk "$K/psk/keys.psk")
PSK_Q="&tls-psk-file=$K/psk/keys.psk"

# ---- PSK over a Unix socket: nbdinfo, nbdcopy, qemu-img, qemu-io ----
URI_TLS="alice@|$PSK_Q" start_server psk devices/ramdisk.lua "${PSK[@]}" size=64M ||
    { not_ok "server with --tls=require --tls-psk starts"; finish; exit 1; }
check "the URI printed is nbds+unix://" grep -q "^nbds+unix:///?socket=$SOCK" "$SERVER_LOG"
info=$(nbdinfo "$URI" 2>&1)
check "nbdinfo over TLS (PSK): 'with TLS'" grep -q 'newstyle-fixed with TLS' <<<"$info"
check "nbdinfo over TLS (PSK): size 64M" grep -q 'export-size: 67108864' <<<"$info"
head -c 48M /dev/urandom >"$SCRATCH/in.img"
check "nbdcopy to the export over TLS" nbdcopy "$SCRATCH/in.img" "$URI"
check "nbdcopy back over TLS" nbdcopy "$URI" "$SCRATCH/out.img"
check "the round trip is byte for byte" cmp -n $((48 << 20)) "$SCRATCH/in.img" "$SCRATCH/out.img"
QPSK="tls-creds-psk,id=tls0,endpoint=client,dir=$K/psk,username=alice"
QIMG="driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0"
out=$(qemu-io --object "$QPSK" --image-opts "$QIMG" -c 'write -P 0x5a 1M 3M' -c 'read -P 0x5a 1M 3M' -c 'read -P 0 60M 1M' 2>&1)
check "qemu-io with tls-creds-psk: write, read back, read zeroes" \
    bash -c '[ "$(grep -c "^wrote\|^read" <<<"$1")" = 3 ] && ! grep -qi "fail\|error" <<<"$1"' _ "$out"
out=$(qemu-img info --object "$QPSK" --image-opts "$QIMG" 2>&1)
check "qemu-img info with tls-creds-psk: 64 MiB" grep -q 'virtual size: 64 MiB' <<<"$out"
qemu-img create -q -f raw "$SCRATCH/q.raw" 64M && head -c 5M /dev/urandom | dd of="$SCRATCH/q.raw" bs=1M seek=7 conv=notrunc status=none
check "qemu-img convert to the export over TLS" \
    qemu-img convert -n --object "$QPSK" -f raw "$SCRATCH/q.raw" --target-image-opts "$QIMG"
check "qemu-img compare over TLS: identical" \
    qemu-img compare --object "$QPSK" --image-opts "driver=raw,file.driver=file,file.filename=$SCRATCH/q.raw" "$QIMG"

# The refusals.
plain="nbd+unix:///?socket=$SOCK"
out=$(nbdinfo "$plain" 2>&1); rc=$?
check "--tls=require: a plaintext client gets no export (nbdinfo fails: $(tr '\n' ' ' <<<"$out" | cut -c1-100))" \
    test "$rc" -ne 0 -a -z "$(grep 'export-size' <<<"$out")"
# What the wire says: NBD_OPT_GO in the clear is refused with
# NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME (no error possible) closes.
wire() {  # OPTION: the reply type to it, or "closed"
    python3 - "$SOCK" "$1" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
def rx(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: return None
        b += c
    return b
rx(18); s.sendall(struct.pack(">I", 3))
opt = int(sys.argv[2])
s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, 6) + b"\0" * 6)
h = rx(20)
print("closed" if h is None else hex(struct.unpack(">QIII", h)[2]))
PY
}
check "--tls=require: NBD_OPT_GO in the clear gets NBD_REP_ERR_TLS_REQD" test "$(wire 7)" = 0x80000005
check "--tls=require: NBD_OPT_INFO in the clear gets NBD_REP_ERR_TLS_REQD" test "$(wire 6)" = 0x80000005
check "--tls=require: NBD_OPT_EXPORT_NAME in the clear is closed" test "$(wire 1)" = closed
out=$(nbdinfo "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$K/wrongpsk/keys.psk" 2>&1); rc=$?
check "a wrong key fails the handshake (nbdinfo fails, no export)" \
    test "$rc" -ne 0 -a -z "$(grep 'export-size' <<<"$out")"
out=$(nbdinfo "nbds+unix://mallory@/?socket=$SOCK&tls-psk-file=$K/psk/keys.psk" 2>&1); rc=$?
check "an unknown user fails too" test "$rc" -ne 0 -a -z "$(grep 'export-size' <<<"$out")"
check "after the refusals the server serves" bash -c 'nbdinfo --size "$1" | grep -qx 67108864' _ "$URI"
stop_server
check "exit 0 after serving over TLS" test "$SERVER_STATUS" = 0

# ---- X.509 over TCP, with --tls-verify-peer ----
start_tcp_server x509 devices/ramdisk.lua --tls=require --tls-certificates "$K/server" --tls-verify-peer size=16M ||
    { not_ok "server with --tls-certificates starts"; finish; exit 1; }
cu="nbds://127.0.0.1:$PORT/?tls-certificates=$K/client"
check "nbdinfo with a client certificate the CA signed (tls-certificates)" \
    bash -c 'nbdinfo --size "$1" | grep -qx 16777216' _ "$cu"
head -c 9M /dev/urandom >"$SCRATCH/x.img"
check "nbdcopy over TLS with certificates, there and back" \
    bash -c 'nbdcopy "$1" "$2" && nbdcopy "$2" "$3" && cmp -n 9437184 "$1" "$3"' _ "$SCRATCH/x.img" "$cu" "$SCRATCH/x.out"
QX="tls-creds-x509,id=tls0,endpoint=client,dir=$K/client"
QXIMG="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,tls-creds=tls0"
out=$(qemu-io --object "$QX" --image-opts "$QXIMG" -c 'write -P 0x33 0 2M' -c 'read -P 0x33 0 2M' 2>&1)
check "qemu-io with tls-creds-x509: write and read back" \
    bash -c '[ "$(grep -c "^wrote\|^read" <<<"$1")" = 2 ] && ! grep -qi "fail\|error" <<<"$1"' _ "$out"
check "qemu-img info with tls-creds-x509" bash -c 'qemu-img info --object "$1" --image-opts "$2" | grep -q "virtual size: 16 MiB"' _ "$QX" "$QXIMG"
out=$(nbdinfo "nbds://127.0.0.1:$PORT/?tls-certificates=$K/stranger" 2>&1); rc=$?
check "--tls-verify-peer: a certificate another CA signed fails the handshake" \
    test "$rc" -ne 0 -a -z "$(grep 'export-size' <<<"$out")"
out=$(nbdinfo "nbds://127.0.0.1:$PORT/?tls-certificates=$K/noclient" 2>&1); rc=$?
check "--tls-verify-peer: no client certificate fails the handshake" \
    test "$rc" -ne 0 -a -z "$(grep 'export-size' <<<"$out")"
out=$(qemu-img info --object "tls-creds-x509,id=tls0,endpoint=client,dir=$K/stranger" --image-opts "$QXIMG" 2>&1); rc=$?
check "--tls-verify-peer: qemu with the untrusted certificate fails" test "$rc" -ne 0
check "after the refusals the server serves" bash -c 'nbdinfo --size "$1" | grep -qx 16777216' _ "$cu"
stop_server

# ---- ext4 + e2fsck through nbdfuse over TLS ----
# nbdfuse takes no local files in its URI (no tls-psk-file, no
# tls-certificates), so here the server shows its certificate and asks for
# none; --tls=require means no byte of the disk goes in the clear.
start_tcp_server ext4 devices/ramdisk.lua -v --tls=require --tls-certificates "$K/server" size=128M ||
    { not_ok "server for ext4 over TLS starts"; finish; exit 1; }
URI="nbds://127.0.0.1:$PORT/"
blockdev_attach
check "nbdfuse over TLS exposes a 128M file" test "$(stat -c %s "$FUSE_DIR/disk" 2>/dev/null)" = $((128 << 20))
check "mkfs.ext4 over TLS" mkfs.ext4 -q -F "$LOOP"
check "mount" mount -t ext4 "$LOOP" "$MNT"
mkdir -p "$MNT/t"
for i in $(seq 60); do head -c $((RANDOM % 50000 + 1)) /dev/urandom >"$MNT/t/f$i"; done
head -c 20M /dev/urandom >"$MNT/t/big"
(cd "$MNT" && find t -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
check "wrote 61 files" test "$(wc -l <"$SCRATCH/sums")" = 61
check "umount" umount "$MNT"
check "e2fsck -fn over TLS: clean" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
check "mount again" mount -t ext4 "$LOOP" "$MNT"
check "every checksum matches" bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$MNT" "$SCRATCH/sums"
blockdev_detach
check "nbdfuse was served over TLS" grep -q 'client connected (TLS)' "$SERVER_LOG"
stop_server
check "exit 0 after ext4 over TLS" test "$SERVER_STATUS" = 0

# ---- --tls=on: TLS offered, plaintext still served ----
start_tcp_server on devices/ramdisk.lua --tls=on --tls-psk "$K/psk/keys.psk" size=1M ||
    { not_ok "server with --tls=on starts"; finish; exit 1; }
check "--tls=on: the URI printed is nbd:// (plaintext works)" grep -q "^nbd://127.0.0.1:$PORT/" "$SERVER_LOG"
check "--tls=on: a plaintext client is served" bash -c 'nbdinfo --size "nbd://127.0.0.1:$1" | grep -qx 1048576' _ "$PORT"
check "--tls=on: a TLS client is served with TLS" \
    bash -c 'nbdinfo "nbds://alice@127.0.0.1:$1/?tls-psk-file=$2" | grep -q "with TLS"' _ "$PORT" "$K/psk/keys.psk"
stop_server

# ---- start-up mistakes: one line each ----
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
S=(-U "$SCRATCH/e.sock")
one_line_error "a missing certificates folder" "no such file or directory\|No such file" "${S[@]}" --tls=on --tls-certificates "$SCRATCH/none" ramdisk
mkdir -p "$SCRATCH/empty"
one_line_error "a folder without server-cert.pem" "cannot read server-cert.pem" "${S[@]}" --tls=on --tls-certificates "$SCRATCH/empty" ramdisk
one_line_error "an unreadable PSK file" "cannot read it" "${S[@]}" --tls=on --tls-psk "$SCRATCH/none.psk" ramdisk
printf 'alice:xyz\n' >"$SCRATCH/bad.psk"
one_line_error "a PSK file with a bad line" "line 1 is not username:hexkey" "${S[@]}" --tls=on --tls-psk "$SCRATCH/bad.psk" ramdisk
one_line_error "--tls=require without credentials" "needs credentials" "${S[@]}" --tls=require ramdisk
one_line_error "--tls with a bad value" "want off, on or require" "${S[@]}" --tls=maybe ramdisk
one_line_error "--tls-psk without --tls" "without --tls" "${S[@]}" --tls-psk "$K/psk/keys.psk" ramdisk
one_line_error "--tls-verify-peer with a PSK" "give --tls-certificates" "${S[@]}" --tls=on --tls-psk "$K/psk/keys.psk" --tls-verify-peer ramdisk
one_line_error "--tls on /dev/nbdN" "kernel" --tls=on --tls-psk "$K/psk/keys.psk" ramdisk /dev/nbd0
finish
