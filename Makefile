# usbd-lua: a Lua-scriptable block device host.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR   = $(PREFIX)/bin
DATADIR  = $(PREFIX)/share/usbd-lua
LIBDIR   = $(PREFIX)/lib/usbd-lua
MANDIR   = $(PREFIX)/share/man
# systemd reads units from /usr/local/lib/systemd/system too; Debian's own
# are in /lib/systemd/system (debian/rules says so).
SYSTEMDDIR = $(PREFIX)/lib/systemd/system

CC      ?= cc
LUAJIT  ?= luajit
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread -fPIC \
           $(shell pkg-config --cflags luajit) -Isrc \
           -DUSBD_DATADIR='"$(DATADIR)"'
LDFLAGS += -pthread -Wl,-E
LDLIBS  += $(shell pkg-config --libs luajit) -lxxhash -ldl -lm -luring -lrados -lrbd -lcrypto -lrocksdb -llz4 -lzstd -lgnutls

# The C core in layers: src/services/ (what devices use: jobs, files, RocksDB,
# compression, ...), src/server/ above them (NBD, the event loop, the
# process), and in src/ the program's entry, its command line and usbd.h,
# the C API Lua sees. Files include across folders from src/ ("server/x.h").
# Every C file but main.c forms the core; the executable, the shared library
# the Lua specs load, and the unit tests all link the same objects (one
# folder, build/: a C file's name is unique across the layers).
SRC_DIRS   := src src/services src/server
CORE_SRCS  := $(filter-out src/main.c,$(foreach d,$(SRC_DIRS),$(wildcard $(d)/*.c)))
CORE_NAMES := $(notdir $(CORE_SRCS:.c=))
CORE_OBJS  := $(CORE_NAMES:%=build/%.o)
HEADERS    := $(foreach d,$(SRC_DIRS),$(wildcard $(d)/*.h))
vpath %.c $(SRC_DIRS)

all: usbd-lua build/libusbd.so build/cdef.h

# The libraries the core links with, for tests/unit/run.sh (one list, here).
print-ldlibs:
	@echo $(LDLIBS)

build/%.o: %.c $(HEADERS) | build
	$(CC) $(CFLAGS) -c -o $@ $<

build:
	mkdir -p build

usbd-lua: build/main.o $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

build/libusbd.so: $(CORE_OBJS)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The FFI's declarations, made from the public headers (src/usbd.h and what
# it includes) so that the C API has one source: lua/usbd/core/cdef.lua loads
# them from here, or from cdef.h beside it where installed.
build/cdef.h: tools/gen-cdef.lua $(HEADERS) | build
	$(LUAJIT) tools/gen-cdef.lua src/usbd.h > $@.tmp
	mv $@.tmp $@

# The power-cut file system for tests (tests/powercut); built on demand.
build/cutfs: tests/powercut/cutfs.c | build
	$(CC) -O2 -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread \
		$(shell pkg-config --cflags fuse3) -o $@ $< $(shell pkg-config --libs fuse3)

# Debian packages for building, testing and benchmarking; for make deb
# (debhelper, dpkg-dev), for checking the man pages and the systemd unit
# (groff-base, man-db, systemd), ZFS for the dedup benchmark's peer
# (zfs-fuse), lz4 and openssl for the benchmarks' ceilings (LZ4's and
# AES-XTS's own speed) and gnuplot for make bench-scale's plot.
DEPS = build-essential pkg-config libluajit-5.1-dev luajit librocksdb-dev libxxhash-dev liburing-dev liblz4-dev libzstd-dev \
       lua-busted lua-check check libnbd-bin qemu-utils fio nbdkit nbdkit-plugin-lua \
       e2fsprogs fuse3 util-linux qemu-system-x86 busybox-static clang \
       libclang-rt-14-dev valgrind libnbd-dev python3-libnbd \
       ceph-mon ceph-osd ceph-common librados-dev librbd-dev qemu-block-extra libssl-dev \
       libfuse3-dev debhelper dpkg-dev groff-base man-db systemd nbd-client xz-utils \
       libgnutls28-dev gnutls-bin gnuplot-nox zfs-fuse lz4 openssl
deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEPS)

test: all
	tests/run-all.sh

# Only the kernel path: Debian's kernel under qemu with its nbd driver
# (and ublk with KERNEL=6.12: make test-kernel KERNEL=6.12).
KERNEL ?= 6.1
test-kernel: all
	KERNEL=$(KERNEL) tests/kernel/run.sh

# The kernel's doors side by side in one qemu guest (ublk with KERNEL=6.12).
bench-kernel: all
	KERNEL=$(KERNEL) bench/kernel.sh

# The main job: a 1G ramdisk as /dev/nbdN where the kernel has the nbd
# driver, otherwise on a Unix socket whose NBD URI is printed.
RUN_SOCKET ?= /tmp/usbd-ramdisk.sock
run: all
	@if [ -e /sys/block/nbd0 ]; then \
		echo "serving devices/ramdisk.lua as the first free /dev/nbdN (Ctrl-C stops)"; \
		exec ./usbd-lua devices/ramdisk.lua size=1G; \
	else \
		echo "no nbd driver in this kernel: serving on a Unix socket instead (Ctrl-C stops)"; \
		exec ./usbd-lua -U $(RUN_SOCKET) devices/ramdisk.lua size=1G; \
	fi

bench: all
	bench/run.sh

# One dedupdisk store grown to SCALE_GIB GiB (bench/dedup-scale.sh), its
# figures per GiB plotted to docs/dedup-scale.png. Not part of make bench.
SCALE_GIB ?= 32
bench-scale: all
	PLOT=docs/dedup-scale.png bench/dedup-scale.sh $(SCALE_GIB)

# The runtime's parts below lua/usbd (docs/internals.md says what each is).
LUA_DIRS = core server dedup

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/devices $(DESTDIR)$(DATADIR)/examples \
		$(foreach d,$(LUA_DIRS),$(DESTDIR)$(DATADIR)/lua/usbd/$(d))
	install -m 755 usbd-lua $(DESTDIR)$(BINDIR)/usbd-lua
	install -m 644 lua/usbd/*.lua $(DESTDIR)$(DATADIR)/lua/usbd/
	$(foreach d,$(LUA_DIRS),install -m 644 lua/usbd/$(d)/*.lua $(DESTDIR)$(DATADIR)/lua/usbd/$(d)/;)
	install -m 644 build/cdef.h $(DESTDIR)$(DATADIR)/lua/usbd/core/
	install -m 644 devices/*.lua $(DESTDIR)$(DATADIR)/devices/
	install -m 644 examples/*.lua $(DESTDIR)$(DATADIR)/examples/
	# The dedupdisk's store check: plain luajit, with the core as a library.
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DATADIR)/tools
	install -m 755 build/libusbd.so $(DESTDIR)$(LIBDIR)/libusbd.so
	install -m 644 tools/dedup-fsck.lua $(DESTDIR)$(DATADIR)/tools/
	printf '%s\n' '#!/bin/sh' 'here=$$(dirname "$$(readlink -f "$$0")")/..' \
		'USBD_LIB="$${USBD_LIB:-$$here/lib/usbd-lua/libusbd.so}" exec luajit "$$here/share/usbd-lua/tools/dedup-fsck.lua" "$$@"' \
		>$(DESTDIR)$(BINDIR)/usbd-dedup-fsck
	chmod 755 $(DESTDIR)$(BINDIR)/usbd-dedup-fsck
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SYSTEMDDIR)
	install -m 644 docs/usbd-lua.1 docs/usbd-dedup-fsck.1 $(DESTDIR)$(MANDIR)/man1/
	# The unit template (docs/systemd.md), with the binary's path written in.
	sed 's|@BINDIR@|$(BINDIR)|g' systemd/usbd-lua@.service.in >$(DESTDIR)$(SYSTEMDDIR)/usbd-lua@.service
	chmod 644 $(DESTDIR)$(SYSTEMDDIR)/usbd-lua@.service

# A Debian package (debian/) of the tree as git sees it, changes not yet
# committed included, built in a copy under DEB_DIR so that the tree is
# left as it was: DEB_DIR/usbd-lua_VERSION_ARCH.deb.
DEB_DIR ?= build-deb
deb:
	rm -rf $(DEB_DIR)/src $(DEB_DIR)/usbd-lua_* $(DEB_DIR)/usbd-lua-dbgsym_*
	mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard | \
		tar --null --ignore-failed-read -T - -cf - | tar -x -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && dpkg-buildpackage -us -uc -b
	@ls $(DEB_DIR)/usbd-lua_*.deb

clean:
	rm -rf build usbd-lua build-deb

.PHONY: print-ldlibs all deps test test-kernel run bench bench-kernel bench-scale install deb clean

# ---------------------------------------------------------------------------
# Robustness (issue 5): fuzzing, sanitizer builds, valgrind, data soak.
# Each build lives in a directory of its own, so none of this touches build/
# or ./usbd-lua. Needs clang and libclang-rt-14-dev (fuzz, test-asan),
# valgrind (test-valgrind), libnbd-dev (soak).

SAN_CC     ?= clang
SAN_FLAGS   = -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_CFLAGS  = -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread -fPIC \
              $(shell pkg-config --cflags luajit) -Isrc -DUSBD_DATADIR='"$(DATADIR)"'

# libFuzzer targets: the real handshake() and the real transmission code.
FUZZ_SECONDS ?= 60
FUZZ_OBJS_handshake = handshake request log cli access tls
FUZZ_OBJS_request   = transmission request buffer sockets log cli reqlog stats borrow access tls

build-fuzz/%.o: %.c $(HEADERS)
	@mkdir -p build-fuzz
	$(SAN_CC) $(SAN_FLAGS) -fsanitize=fuzzer-no-link $(SAN_CFLAGS) -c -o $@ $<

build-fuzz/fuzz_handshake: fuzz/fuzz_handshake.c $(FUZZ_OBJS_handshake:%=build-fuzz/%.o)
	$(SAN_CC) $(SAN_FLAGS) -fsanitize=fuzzer $(SAN_CFLAGS) -o $@ $^ -lgnutls

build-fuzz/fuzz_request: fuzz/fuzz_request.c $(FUZZ_OBJS_request:%=build-fuzz/%.o)
	$(SAN_CC) $(SAN_FLAGS) -fsanitize=fuzzer $(SAN_CFLAGS) -o $@ $^ -lgnutls

fuzz-build: build-fuzz/fuzz_handshake build-fuzz/fuzz_request

# Each target for FUZZ_SECONDS, from the committed corpus (fuzz/corpus/).
fuzz: fuzz-build
	fuzz/run.sh fuzz $(FUZZ_SECONDS)

# Every committed corpus and regression input, once (what make test can run).
fuzz-replay: fuzz-build
	fuzz/run.sh replay

# usbd-lua with AddressSanitizer and UBSan, as build-asan/usbd-lua, then the
# tests against it. It finds lua/ through the build-asan/lua link, and the
# shipped devices by name (filedisk) beside lua/: build-asan/devices and
# build-asan/examples link to them too.
SAN_LINKS = build-asan/lua build-asan/devices build-asan/examples

build-asan/%.o: %.c $(HEADERS)
	@mkdir -p build-asan
	$(SAN_CC) $(SAN_FLAGS) $(SAN_CFLAGS) -c -o $@ $<

build-asan/usbd-lua: build-asan/main.o $(CORE_NAMES:%=build-asan/%.o) | $(SAN_LINKS)
	$(SAN_CC) $(SAN_FLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(SAN_LINKS):
	@mkdir -p build-asan
	ln -sfn ../$(notdir $@) $@

# The same objects as a library for the busted specs: a stock luajit loads
# it (USBD_LIB) with the ASan runtime preloaded (tests/hostile/sanitizers.sh).
build-asan/libusbd.so: $(CORE_NAMES:%=build-asan/%.o)
	$(SAN_CC) $(SAN_FLAGS) -shared-libasan -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

# usbd-lua, the unit tests (tests/unit/run.sh, BUILD=build-asan) and the
# specs (build-asan/libusbd.so) with ASan+UBSan, then the hostile, soak and
# integration tests against it.
test-asan: build-asan/usbd-lua build-asan/libusbd.so build/cdef.h
	LINK_LIBS='$(LDLIBS)' tests/hostile/sanitizers.sh asan

# The C unit tests under valgrind (memcheck, leaks included).
test-valgrind: all
	LINK_LIBS='$(LDLIBS)' tests/hostile/sanitizers.sh valgrind

# Random I/O from several connections against a reference model, and fio
# with verification, on every shipped device (SOAK_SECONDS each).
SOAK_SECONDS ?= 20
build/soak: tests/soak/soak.c | build
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $< $(shell pkg-config --cflags --libs libnbd)

soak: all build/soak
	SOAK_SECONDS=$(SOAK_SECONDS) tests/soak/run.sh

clean-robustness:
	rm -rf build-fuzz build-asan

.PHONY: fuzz fuzz-build fuzz-replay test-asan test-valgrind soak clean-robustness
