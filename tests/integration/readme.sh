#!/usr/bin/env bash
# Every reference in the README (links, and repository paths in backticks)
# resolves inside the repository: a reader can open what it names.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"

for doc in README.md docs/*.md; do
    [ -f "$doc" ] || continue
    dir=$(dirname "$doc")
    # [text](target) links that are not URLs or in-page anchors.
    grep -o '\]([^)#][^)]*)' "$doc" | sed 's/^](//; s/)$//; s/#.*//' | grep -v '^[a-z]*://' | sort -u |
    while read -r target; do
        if [ -e "$dir/$target" ]; then ok "$doc links to $target, which exists"
        else not_ok "$doc links to $target, which does not exist"; fi
    done
    # `path` mentions of the repository's own folders.
    grep -o '`\(src\|lua\|devices\|examples\|tests\|spec\|bench\|fuzz\|docs\|tools\)/[^` ]*`' "$doc" | tr -d '`' | sort -u |
    while read -r path; do
        if [ -e "$path" ]; then ok "$doc names $path, which exists"
        else not_ok "$doc names $path, which does not exist"; fi
    done
done > "$SCRATCH/results"
cat "$SCRATCH/results"
PASSED=$(grep -c '^ok ' "$SCRATCH/results")
FAILED=$(grep -c '^not ok ' "$SCRATCH/results")
finish
