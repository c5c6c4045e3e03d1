#!/usr/bin/env bash
# Lint: luacheck over every Lua file of the repository, with the settings
# of .luacheckrc. Prints one TAP-style line: "ok - luacheck: N files, 0
# warnings", or "not ok - ..." followed by the warnings as "# " lines;
# then one line for the layers: a device script requires "usbd" and its
# own modules, never the runtime's core or the server (docs/internals.md).
set -u
cd "$(dirname "$0")/.."
DIRS=(lua devices examples tools spec bench)

if ! command -v luacheck >/dev/null; then
    echo "not ok - luacheck is installed (Debian: lua-check; make deps)"
    exit 1
fi
out=$(luacheck --no-color --codes "${DIRS[@]}" 2>&1)
rc=$?
# "Total: W warnings / E errors in N files"
total=$(printf '%s\n' "$out" | grep '^Total:' | tail -1)
files=$(printf '%s\n' "$total" | sed -n 's/.* in \([0-9]*\) files\?$/\1/p')
status=0
if [ "$rc" -eq 0 ]; then
    echo "ok - luacheck: ${files:-?} files, 0 warnings"
else
    echo "not ok - luacheck: ${total#Total: }"
    printf '%s\n' "$out" | grep -E '^ +[^ ].*:[0-9]+:[0-9]+: ' | sed 's/^ */# /'
    status=1
fi

# "usbd.core...", "usbd.server..." or an API part ("usbd.buf") required
# by name: a device goes through require "usbd".
api_parts=$(cd lua/usbd && ls ./*.lua | sed 's|^\./||; s|\.lua$||' | grep -vx init | paste -sd'|')
bad=$(grep -nE "require[ (]*[\"']usbd\.(core|server|$api_parts)([.\"'])" devices/*.lua examples/*.lua)
if [ -z "$bad" ]; then
    echo "ok - device scripts require only \"usbd\" and their own modules"
else
    echo "not ok - device scripts require only \"usbd\" and their own modules"
    printf '%s\n' "$bad" | sed 's/^/# /'
    status=1
fi
exit $status
