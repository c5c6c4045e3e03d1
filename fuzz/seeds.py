#!/usr/bin/env python3
"""Write the seed corpus for the fuzz targets (fuzz/corpus/{handshake,request}).

The seeds are committed; this script says where they came from and can
rewrite them: python3 fuzz/seeds.py. Each seed is a plausible client stream,
good or subtly broken, so the fuzzer starts from the protocol's shape."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
FIXED, NO_ZEROES = 1, 2
OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, STARTTLS=5, INFO=6, GO=7, STRUCTURED_REPLY=8,
           LIST_META_CONTEXT=9, SET_META_CONTEXT=10, EXTENDED_HEADERS=11)
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5, WRITE_ZEROES=6, BLOCK_STATUS=7)


def opt(o, data=b"", length=None):
    return struct.pack(">QII", IHAVEOPT, o, len(data) if length is None else length) + data


def go_data(name=b"", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def flags(f=FIXED | NO_ZEROES):
    return struct.pack(">I", f)


def meta(queries, name=b"", count=None):
    """LIST/SET_META_CONTEXT data: an export name, then queries."""
    return (struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries) if count is None else count)
            + b"".join(struct.pack(">I", len(q)) + q for q in queries))


HANDSHAKE = {
    "go": flags() + opt(OPT["GO"], go_data()),
    "go-zeroes": flags(FIXED) + opt(OPT["GO"], go_data()),
    "export-name": flags() + opt(OPT["EXPORT_NAME"], b"disk"),
    "export-name-zeroes": flags(FIXED) + opt(OPT["EXPORT_NAME"]),
    "structured-go": flags() + opt(OPT["STRUCTURED_REPLY"]) + opt(OPT["GO"], go_data(b"", (3, 1, 0))),
    "libnbd-like": flags() + opt(OPT["STRUCTURED_REPLY"]) + opt(OPT["LIST_META_CONTEXT"],
                   struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation")
                   + opt(OPT["GO"], go_data(b"", (3,))),
    "info-then-go": flags() + opt(OPT["INFO"], go_data(b"x" * 40, (1, 2, 3))) + opt(OPT["GO"], go_data(b"x" * 40)),
    "list": flags() + opt(OPT["LIST"]) + opt(OPT["ABORT"]),
    "abort": flags() + opt(OPT["ABORT"]),
    "unknown-then-go": flags() + opt(99, b"abc") + opt(OPT["STARTTLS"]) + opt(OPT["GO"], go_data()),
    "go-short": flags() + opt(OPT["GO"], b"\0\0\0") + opt(OPT["GO"], go_data()),
    "go-name-overrun": flags() + opt(OPT["GO"], struct.pack(">I", 100) + b"ab\0\0") + opt(OPT["GO"], go_data()),
    "go-nreqs-mismatch": flags() + opt(OPT["GO"], struct.pack(">IH", 0, 5) + b"\0\1") + opt(OPT["GO"], go_data()),
    "too-big": flags() + opt(OPT["INFO"], b"", 0xFFFFFFFF) + b"\0" * 64,
    "bad-magic": flags() + struct.pack(">QII", 0x1122334455667788, OPT["GO"], 0),
    "bad-flags": flags(0xFFFFFFFF),
    "structured-data": flags() + opt(OPT["STRUCTURED_REPLY"], b"x") + opt(OPT["LIST"], b"y") + opt(OPT["GO"], go_data()),
    "truncated": flags() + opt(OPT["GO"], go_data(b"name"))[:-3],
    "meta-set-go": flags() + opt(OPT["STRUCTURED_REPLY"]) + opt(OPT["SET_META_CONTEXT"], meta([b"base:allocation"]))
                   + opt(OPT["GO"], go_data()),
    "meta-list": flags() + opt(OPT["STRUCTURED_REPLY"]) + opt(OPT["LIST_META_CONTEXT"], meta([]))
                 + opt(OPT["LIST_META_CONTEXT"], meta([b"base:", b"qemu:dirty-bitmap:x"])) + opt(OPT["ABORT"]),
    "meta-set-unstructured": flags() + opt(OPT["SET_META_CONTEXT"], meta([b"base:allocation"]))
                             + opt(OPT["LIST_META_CONTEXT"], meta([])) + opt(OPT["GO"], go_data()),
    "meta-set-twice": flags() + opt(OPT["STRUCTURED_REPLY"]) + opt(OPT["SET_META_CONTEXT"], meta([b"base:allocation"]))
                      + opt(OPT["SET_META_CONTEXT"], meta([b"base:", b"x-a:b"])) + opt(OPT["GO"], go_data()),
    "meta-malformed": flags() + opt(OPT["STRUCTURED_REPLY"])
                      + opt(OPT["SET_META_CONTEXT"], meta([b"base:allocation"], count=0xFFFFFFFF))
                      + opt(OPT["SET_META_CONTEXT"], struct.pack(">I", 0xFFFF) + b"ab")
                      + opt(OPT["LIST_META_CONTEXT"], meta([b"base:allocation"]) + b"junk")
                      + opt(OPT["SET_META_CONTEXT"], meta([b"base:allocation"], b"disk"))
                      + opt(OPT["EXPORT_NAME"], b"disk"),
}


def req(t, offset=0, length=0, fl=0, cookie=0):
    return struct.pack(">IHHQQI", REQ_MAGIC, fl, CMD[t] if isinstance(t, str) else t, cookie, offset, length)


def write(offset, data, fl=0):
    return req("WRITE", offset, len(data), fl) + data


MB = 1 << 20
# First three bytes: the harness's setup (see fuzz_request.c). The second
# byte's default 0x0a: --max-inflight 8, --max-inflight-bytes 256 KiB, 1 MiB;
# the third's 0: the server is not stopped.
REQUEST = {
    "read": (0x00, req("READ", 0, 4096) + req("DISC")),
    "read-structured": (0x01, req("READ", 4096, 512) + req("READ", MB - 512, 512) + req("DISC")),
    "write-read": (0x0C, write(512, b"\xab" * 1024) + req("READ", 0, 2048) + req("FLUSH") + req("DISC")),
    "mixed": (0x0D, write(0, bytes(range(256)) * 16) + req("TRIM", 0, 4096) + req("WRITE_ZEROES", 8192, 4096, 2)
              + req("READ", 0, 16384) + req("FLUSH") + write(4096, b"z" * 100, 1) + req("DISC")),
    "past-end": (0x01, req("READ", MB - 512, 1024) + write(MB, b"q" * 512) + req("READ", 1 << 63, 512)
                 + req("TRIM", MB, 1) + req("READ", 0, 0xFFFFFFFF) + req("DISC")),
    "unknown": (0x00, req("CACHE", 0, 512) + req("BLOCK_STATUS", 0, 512) + req(99, 0, 4) + req("READ", 0, 512, 0x8000)),
    "readonly": (0x0A, write(0, b"r" * 512) + req("TRIM", 0, 512) + req("WRITE_ZEROES", 0, 512) + req("READ", 0, 512)),
    "oversize-write": (0x00, req("READ", 0, 512) + req("WRITE", 0, 0xFFFFFFFF) + b"x" * 100),
    "write-cut-short": (0x00, req("READ", 0, 512) + req("WRITE", 0, 65536) + b"x" * 1000),
    "bad-magic": (0x00, req("READ", 0, 512) + b"\xde\xad\xbe\xef" + b"\0" * 24 + req("READ", 0, 512)),
    "half-header": (0x00, req("READ", 0, 512) + req("READ", 0, 512)[:13]),
    "pipeline-limits": (0x60, b"".join(req("READ", i * 65536 % MB, 65536) for i in range(40))),
    "pipeline-lazy": (0xE1, b"".join(req("READ", i * 4096, 4096) for i in range(64)) + req("DISC")),
    "writes-one-per-turn": (0x24, b"".join(write(i * 8192, bytes([i]) * 8192) for i in range(24))),
    "errors-injected": (0x31, b"".join(req("READ", i * 512, 512) for i in range(12))
                        + b"".join(write(i * 512, b"e" * 512) for i in range(6))),
    "zeroes-fast": (0x04, req("WRITE_ZEROES", 0, 4096, 16) + req("WRITE_ZEROES", 0, 4096, 3) + req("DISC")),
    "big-read": (0x41, req("READ", 0, 131072) + req("READ", 0, 131073)),
    "data-after-disc": (0x00, req("DISC") + req("READ", 0, 512)),
    "vanish-slow": ((0x20, 0xCA), b"".join(req("READ", i * 512, 512) for i in range(6)) + req("DISC")),
    "vanish-paused": ((0x00, 0xC4), b"".join(req("READ", i * 4096, 4096) for i in range(20))),
    "inflight-1": ((0x01, 0x00), b"".join(req("READ", i * 4096, 4096) for i in range(8)) + write(0, b"w" * 9000)),
    "size-0": ((0x05, 0x1A), req("READ", 0, 1) + write(0, b"x" * 4) + req("TRIM", 0, 1) + req("FLUSH")),
    "size-odd": ((0x0D, 0x2A), req("READ", MB, 511) + req("READ", MB + 1, 511) + write(MB + 500, b"y" * 12)),
    "write-direct": ((0x0C, 0x0B), write(0, bytes(range(256)) * 400) + req("READ", 0, 102400) + req("DISC")),
    "staging-compaction": ((0x00, 0x0B), b"".join(write(i * 9000, bytes([i]) * 9000) for i in range(20))
                           + b"".join(req("READ", i * 512, 512) for i in range(2500))),
    "vanish-lazy-cut-write": ((0x80, 0x4A), b"".join(req("READ", 0, 4096) for i in range(2))
                              + req("WRITE", 0, 100000) + b"c" * 50000),
    "vanish-replies-stuck": ((0xC0, 0x4F), b"".join(req("READ", i * 65536 % MB, 65536) for i in range(40))),
    "stop-while-paused": ((0x00, 0x08, 0x01 | (3 << 1)), b"".join(req("READ", i * 4096, 4096) for i in range(20))),
    "stop-mid-write": ((0x40, 0x0B, 0x01), req("READ", 0, 512) + write(0, b"s" * 60000)),
    "stop-slow-device": ((0x20, 0x8A, 0x01 | (5 << 1)), b"".join(req("READ", i * 512, 512) for i in range(10))),
    "no-fast-zero": (0x08, req("WRITE_ZEROES", 0, 4096, 16) + req("WRITE_ZEROES", 0, 4096) + req("DISC")),
    "block-status": (0x01, req("BLOCK_STATUS", 0, 4096) + req("BLOCK_STATUS", 512, MB - 512, 8)
                     + req("BLOCK_STATUS", 0, 1, 0) + req("BLOCK_STATUS", MB - 1, 1, 8) + req("DISC")),
    "block-status-bad": (0x01, req("BLOCK_STATUS", MB, 1) + req("BLOCK_STATUS", 0, 0) + req("BLOCK_STATUS", 0, 512, 1)
                         + req("BLOCK_STATUS", 1 << 63, 512) + req("BLOCK_STATUS", 0, 0xFFFFFFFF) + req("DISC")),
    "block-status-no-context": ((0x01, 0x0A, 0x80), req("BLOCK_STATUS", 0, 4096) + req("READ", 0, 512) + req("DISC")),
    "block-status-simple": (0x00, req("BLOCK_STATUS", 0, 4096) + req("DISC")),
    "block-status-errors": (0x31, b"".join(req("BLOCK_STATUS", i * 4096, 65536, (i % 2) * 8) for i in range(18))),
    "block-status-pipeline": ((0x61, 0x0B), b"".join(req("BLOCK_STATUS", i * 512, 1 << 19, 0) for i in range(300))),
    "fua-unadvertised": (0x04, write(0, b"f" * 512, 1) + req("WRITE_ZEROES", 0, 512, 1) + req("TRIM", 0, 512, 1)
                         + req("FLUSH") + req("DISC")),
    "size-huge": ((0x0D, 0x3A), req("READ", (1 << 64) - 1024, 512) + req("READ", (1 << 64) - 512, 512)
                  + write((1 << 63), b"h" * 64) + req("WRITE_ZEROES", (1 << 64) - 4096, 4096)),
}


def main():
    for name, data in HANDSHAKE.items():
        put("handshake", name, data)
    for name, (setup, data) in REQUEST.items():
        setup2, setup3 = 0x0A, 0
        if isinstance(setup, tuple):
            setup, setup2, setup3 = (setup + (0,))[:3]
        put("request", name, bytes([setup, setup2, setup3]) + data)


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
