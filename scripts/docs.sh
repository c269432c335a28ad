#!/usr/bin/env bash
# The documentation that is built rather than written: the library's DocC reference (the LengthEcho catalog and
# the two modules it re-exports, one combined archive) with every warning an error, and the three manual pages,
# each rendered by man with its warnings shown and none allowed. Part of .ci/run.
#
# usage: scripts/docs.sh [OUTPUT_DIR]   (default: .build/docs; the manual pages go to OUTPUT_DIR/man)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.build/docs}"

echo "docs.sh: DocC, warnings as errors"
swift package --disable-sandbox --allow-writing-to-directory "$out" generate-documentation \
    --target LengthEcho --target LengthEchoCore --target LengthEchoTLS --enable-experimental-combined-documentation \
    --warnings-as-errors --output-path "$out" >"$out.log" 2>&1 || {
    grep -E -A6 "^(error|warning):" "$out.log" | head -n 60
    echo "docs.sh: the DocC build failed (all of it: $out.log)" >&2
    exit 1
}
# The pages at the top of each module: its types, and the articles (16 types and getting started at 1.0.0; a
# type the symbol graph leaves out would be missing here, see Sources/LengthEcho/Version.swift).
pages=0
for page in "$out"/data/documentation/lengthecho*/*.json; do pages=$((pages + 1)); done
echo "docs.sh: $out holds $pages top-level pages"

echo "docs.sh: manual pages"
scripts/man-pages.sh "$out/man" 2>"$out/man.log" || { cat "$out/man.log" >&2; exit 1; }
for program in server client bench; do
    page="$out/man/length-echo-$program.1"
    rendered="$(MANWIDTH=100 man --warnings -l "$page" 2>"$out/man-warnings.log")"
    if [ -s "$out/man-warnings.log" ] || ! grep -q "length-echo-$program" <<<"$rendered"; then
        cat "$out/man-warnings.log" >&2
        echo "docs.sh: man -l $page did not render cleanly" >&2
        exit 1
    fi
    echo "docs.sh: man -l $page: $(wc -l <<<"$rendered") lines"
done
