#!/usr/bin/env bash
# usbd-lua --help DEVICE: every shipped device and example says what it is
# and lists, sorted and described, exactly the keys the server accepts for
# it; a name that finds no device is one line on stderr and exit status 2,
# as any other mistake on the command line.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"

# The keys the server itself accepts for NAME: the list its refusal of an
# unknown key gives ("... for NAME (it takes a, b, c)"), one a line.
accepted() {  # NAME [transform|several]
    local below=()
    [ "${2:-}" = transform ] && below=(-- ramdisk size=1M)
    [ "${2:-}" = several ] && below=("[" ramdisk size=1M "]" "[" ramdisk size=1M "]")
    timeout 20 "$USBD" -U "$SCRATCH/never.sock" "$1" zz_not_a_key=1 "${below[@]}" 2>&1 >/dev/null |
        sed -n 's/.*(it takes \(.*\))$/\1/p' | tr -d ' ' | tr , '\n'
}
# The keys a --help text lists, in its order.
listed() { sed -n '/^KEY=VALUE pairs:$/,$p' | sed -n 's/^  \([A-Za-z0-9_][A-Za-z0-9_]*\)\( .*\)\{0,1\}$/\1/p'; }

for script in devices/*.lua examples/*.lua; do
    name=$(basename "$script" .lua)
    out=$("$USBD" --help "$name" 2>"$SCRATCH/err"); rc=$?
    check "--help $name: exit 0, nothing on stderr" test "$rc" = 0 -a ! -s "$SCRATCH/err"
    # The header's first line, without "name.lua: ", up to the end of a
    # sentence, begins the text.
    first=$(sed -n '1s/^-- *[^ ]*\.lua: *//p' "$script" | sed 's/\. .*/./')
    check "--help $name begins with its header's first line" \
        bash -c '[[ $(head -c ${#2} <<<"$1") == "$2" ]]' _ "$out" "$name: $first"
    kind=
    grep -q '^usage: .* -- DEVICE' <<<"$out" && kind=transform
    grep -q '^usage: .* \[ DEVICE \[KEY=VALUE ...\] \] ...$' <<<"$out" && kind=several
    if grep -q 'transform = true' "$script"; then
        check "--help $name says it is a transform" test "$kind" = transform
    elif grep -q '^ *bases = ' "$script"; then
        check "--help $name says it stands on several devices" \
            bash -c '[ "$2" = several ] && grep -q "^$3 stands on .* devices, each named in a \[ \] group" <<<"$1"' \
            _ "$out" "$kind" "$name"
    else
        check "--help $name gives its usage" grep -q "^usage: usbd-lua \[OPTIONS\] $name \[/dev/nbdN\] \[KEY=VALUE ...\]$" <<<"$out"
    fi
    keys=$(listed <<<"$out")
    want=$(accepted "$name" "$kind" | sort)
    if grep -q '^It takes no KEY=VALUE pairs\.$' <<<"$out"; then
        check "--help $name says it takes no keys, and the server accepts none" \
            bash -c '"$1" -U "$2/never.sock" "$3" zz=1 [ ramdisk size=1M ] 2>&1 | grep -q "unknown parameter .zz. for $3 (it takes no parameters)"' \
            _ "$USBD" "$SCRATCH" "$name"
        continue
    fi
    check "--help $name lists the keys the server accepts ($(echo $want))" \
        test -n "$keys" -a "$keys" = "$want"
    check "--help $name lists them sorted" test "$keys" = "$(sort <<<"$keys")"
    described=$(sed -n '/^KEY=VALUE pairs:$/,$p' <<<"$out" | grep -c '^  [A-Za-z0-9_][A-Za-z0-9_]*  *[^ ]')
    check "--help $name describes every key" test "$described" = "$(grep -c . <<<"$keys")"
done

out=$("$USBD" --help ramdisk)
check "--help ramdisk: size and its description from params" grep -q "^  size  the disk's size (default 1G)$" <<<"$out"
out=$("$USBD" --help cryptdisk)
check "--help cryptdisk: a long summary wraps within 79 columns" \
    bash -c '! grep -q ".\{80\}" <<<"$(grep -v ^usage: <<<"$1")" && grep -q "^(usbd.cipher).$" <<<"$1"' _ "$out"

# Stacks: each device named is described; KEY=VALUE pairs and /dev/nbdN are
# passed over; options may come on either side.
out=$("$USBD" -U "$SCRATCH/x.sock" cryptdisk /dev/nbd7 keyfile=k --help -- filedisk path=x)
check "--help on a stack describes each layer" \
    bash -c 'grep -q "^cryptdisk: " <<<"$1" && grep -q "^filedisk: " <<<"$1"' _ "$out"

# Scripts by path: params as a list of names, none, or empty.
cat >"$SCRATCH/listed.lua" <<'LUA'
-- listed.lua: keys without descriptions. More words.
return { params = { "zeta", "alpha" }, open = function() end }
LUA
printf 'return { open = function() end }\n' >"$SCRATCH/bare.lua"
printf 'return { params = {}, open = function() end }\n' >"$SCRATCH/none.lua"
out=$("$USBD" --help "$SCRATCH/listed.lua")
check "--help SCRIPT: its header's first sentence" grep -q '^listed: keys without descriptions\.$' <<<"$out"
check "--help SCRIPT: params as a list of names, sorted" test "$(listed <<<"$out" | tr '\n' ' ')" = "alpha zeta "
out=$("$USBD" --help "$SCRATCH/bare.lua")
check "--help SCRIPT without params: says every key reaches open" grep -q 'declares no params' <<<"$out"
out=$("$USBD" --help "$SCRATCH/none.lua")
check "--help SCRIPT with params = {}: takes no keys" grep -q 'takes no KEY=VALUE' <<<"$out"

# Mistakes: one line on stderr, nothing on stdout, exit 2.
bad() {  # DESCRIPTION PATTERN ARGS...
    local what=$1 pat=$2; shift 2
    local out err rc
    out=$("$USBD" "$@" 2>"$SCRATCH/err"); rc=$?
    err=$(cat "$SCRATCH/err")
    if [ "$rc" = 2 ] && [ -z "$out" ] && [ "$(wc -l <"$SCRATCH/err")" = 1 ] && grep -q -- "$pat" <<<"$err"; then
        ok "$what"
    else
        not_ok "$what (exit $rc: $err)"
    fi
}
bad "--help on an unknown device: one line, exit 2" "no device 'nosuchdisk'" --help nosuchdisk
bad "--help on a missing script: one line, exit 2" "no device" --help "$SCRATCH/missing.lua"
bad "--help on a stack with an unknown device below: one line, exit 2" "no device 'nosuchdisk'" --help cryptdisk -- nosuchdisk
printf 'return {' >"$SCRATCH/syntax.lua"
out=$("$USBD" --help "$SCRATCH/syntax.lua" 2>&1); rc=$?
check "--help on a script that does not load: one line, exit 1 (exit $rc)" \
    bash -c '[ "$1" = 1 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q "cannot load device script" <<<"$2"' _ "$rc" "$out"

# Without a device, --help is the usage, as it always was.
out=$("$USBD" --help); rc=$?
check "--help alone: the usage, exit 0" bash -c '[ "$1" = 0 ] && grep -q "^usage: usbd-lua \[OPTIONS\] DEVICE" <<<"$2"' _ "$rc" "$out"
check "--help says --help DEVICE" grep -q -- '--help \[DEVICE\]' <<<"$out"
out=$("$USBD" -h --bogus); rc=$?
check "--help then a bad option: still the usage, exit 0" bash -c '[ "$1" = 0 ] && grep -q "^usage:" <<<"$2"' _ "$rc" "$out"

finish
