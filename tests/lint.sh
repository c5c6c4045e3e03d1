#!/usr/bin/env bash
# Lint: luacheck over every Lua file of the repository, with the settings
# of .luacheckrc. Prints one TAP-style line: "ok - luacheck: N files, 0
# warnings", or "not ok - ..." followed by the warnings as "# " lines.
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
if [ "$rc" -eq 0 ]; then
    echo "ok - luacheck: ${files:-?} files, 0 warnings"
    exit 0
fi
echo "not ok - luacheck: ${total#Total: }"
printf '%s\n' "$out" | grep -E '^ +[^ ].*:[0-9]+:[0-9]+: ' | sed 's/^ */# /'
exit 1
