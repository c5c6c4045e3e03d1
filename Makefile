# usbd-lua: a Lua-scriptable block device host.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR   = $(PREFIX)/bin
DATADIR  = $(PREFIX)/share/usbd-lua

CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread -fPIC \
           $(shell pkg-config --cflags luajit) \
           -DUSBD_DATADIR='"$(DATADIR)"'
LDFLAGS += -pthread -Wl,-E
LDLIBS  += $(shell pkg-config --libs luajit) -lxxhash -ldl -lm -luring

# Every C file but main.c forms the core; the executable, the shared library
# the Lua specs load, and the unit tests all link the same objects.
CORE_SRCS := $(filter-out src/main.c,$(wildcard src/*.c))
CORE_OBJS := $(CORE_SRCS:src/%.c=build/%.o)

all: usbd-lua build/libusbd.so

build/%.o: src/%.c $(wildcard src/*.h) | build
	$(CC) $(CFLAGS) -c -o $@ $<

build:
	mkdir -p build

usbd-lua: build/main.o $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

build/libusbd.so: $(CORE_OBJS)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Debian packages for building, testing and benchmarking.
DEPS = build-essential pkg-config libluajit-5.1-dev luajit librocksdb-dev libxxhash-dev liburing-dev \
       lua-busted check libnbd-bin qemu-utils fio nbdkit nbdkit-plugin-lua \
       e2fsprogs fuse3 util-linux qemu-system-x86 busybox-static clang \
       libclang-rt-14-dev valgrind
deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEPS)

test: all
	tests/run-all.sh

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

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/lua/usbd $(DESTDIR)$(DATADIR)/devices
	install -m 755 usbd-lua $(DESTDIR)$(BINDIR)/usbd-lua
	install -m 644 lua/usbd/*.lua $(DESTDIR)$(DATADIR)/lua/usbd/
	install -m 644 devices/*.lua $(DESTDIR)$(DATADIR)/devices/

clean:
	rm -rf build usbd-lua

.PHONY: all deps test run bench install clean
