#!/usr/bin/env bash
# The man pages: they format without warnings, and the options they list
# are the program's. One source for usbd-lua's options is the table in
# src/cli.c, which --help prints from; the man page, docs/operations.md's usage
# and --help must name every option it has, and no other.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"

for page in docs/usbd-lua.1 docs/usbd-dedup-fsck.1; do
    warnings=$(groff -man -ww -z "$page" 2>&1)
    check "$page formats without warnings${warnings:+: $warnings}" test -z "$warnings"
done

# The options named in a text: --long, and -X where a comma follows (the
# "-U, --unix" of an option list), one a line, sorted.
options() {
    grep -oE -- '(^|[^-[:alnum:]])(--[a-z][a-z-]*[a-z]|-[A-Za-z],)' | sed -E 's/^[^-]*//; s/,$//' | sort -u
}
# A man page's OPTIONS section, as text.
man_options() {
    sed -n '/^\.SH OPTIONS/,/^\.SH /p' "$1" | sed 's/\\-/-/g; s/\\f[BIRP]//g' | options
}
same() {  # DESCRIPTION WANT GOT
    if [ "$2" = "$3" ]; then
        ok "$1"
    else
        not_ok "$1"
        diff <(echo "$2") <(echo "$3") | sed -n 's/^[<>]/#&/p'
    fi
}

# The table: getopt_long's long options and its short letters.
table=$( (sed -n '/longopts\[\] = {/,/{ 0 }/p' src/cli.c | sed -n 's/^ *{ "\([a-z-]*\)".*/--\1/p'
          grep -o 'getopt_long(argc, argv, "[^"]*"' src/cli.c | sed 's/.*"\(.*\)"/\1/' | tr -d ':' | grep -o . | sed 's/^/-/') |
        sort -u)
check "the option table in src/cli.c has options ($(echo $table))" test "$(wc -l <<<"$table")" -gt 20

help=$("$USBD" --help | options)
same "usbd-lua --help lists every option of the table, and no other" "$table" "$help"
same "usbd-lua(1) lists every option of the table, and no other" "$table" "$(man_options docs/usbd-lua.1)"
readme=$(sed -n '/^## The command line/,/^## /p' docs/operations.md | sed -n '/^```/,/^```/p' | options)
same "docs/operations.md's usage lists every option of the table, and no other" "$table" "$readme"

# usbd-dedup-fsck: the options its usage gives.
usage=$(USBD_LIB="$TOP/build/libusbd.so" luajit tools/dedup-fsck.lua 2>&1 >/dev/null)
fsck=$(grep -oE -- '--[a-z][a-z-]*' <<<"$usage" | sort -u)
check "dedup-fsck's usage has options ($(echo $fsck))" test -n "$fsck"
same "usbd-dedup-fsck(1) lists every option of its usage, and no other" "$fsck" "$(man_options docs/usbd-dedup-fsck.1)"
synopsis=$(sed -n '/^\.SH SYNOPSIS/,/^\.SH /p' docs/usbd-dedup-fsck.1 | sed 's/\\-/-/g' | grep -oE -- '--[a-z][a-z-]*' | sort -u)
same "usbd-dedup-fsck(1)'s synopsis has them too" "$fsck" "$synopsis"

finish
