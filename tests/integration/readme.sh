#!/usr/bin/env bash
# Every reference in the documentation (README.md, docs/, tests/README.md,
# BENCHMARKS.md, fuzz/README.md) resolves inside the repository: links lead
# to files that exist, and to headings that exist (#anchor, as GitHub
# makes them), and repository paths named in backticks exist. A reader can
# open what the pages name.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"

# The anchors GitHub gives FILE's headings: lower case, punctuation but
# "-" and "_" dropped, spaces as "-" (code blocks' "#" lines skipped).
anchors() {
    awk '/^```/ { code = !code; next } !code && /^#+ / { sub(/^#+ /, ""); print }' "$1" |
        tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 _-]//g; s/ /-/g'
}

for doc in README.md docs/*.md docs/devices/*.md tests/README.md BENCHMARKS.md fuzz/README.md; do
    [ -f "$doc" ] || continue
    dir=$(dirname "$doc")
    # [text](target) links that are not URLs.
    grep -o '\]([^)]*)' "$doc" | sed 's/^](//; s/)$//' | grep -v '^[a-z]*://' | sort -u |
    while read -r link; do
        path=${link%%#*}
        anchor=
        [ "$path" != "$link" ] && anchor=${link#*#}
        if [ -z "$path" ]; then target=$doc; else target=$dir/$path; fi
        if [ ! -e "$target" ]; then
            not_ok "$doc links to $link, which does not exist"
        elif [ -n "$anchor" ] && ! anchors "$target" | grep -qxF -- "$anchor"; then
            not_ok "$doc links to $link: $target has no heading #$anchor"
        else
            ok "$doc links to $link, which exists"
        fi
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
