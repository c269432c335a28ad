#!/usr/bin/env bash
# The manual pages of server, client and bench, from swift-argument-parser's generate-manual plugin, named as
# docs/operations.md installs the programs: length-echo-server.1, length-echo-client.1, length-echo-bench.1.
#
# usage: scripts/man-pages.sh DIR [--configuration debug|release]   (default: debug, which the tests build too)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/man-pages.sh DIR [--configuration debug|release]}"
shift
configuration=debug
if [ "${1:-}" = "--configuration" ]; then configuration="${2:?--configuration needs debug or release}"; fi
# The plugin builds the package and runs each executable with --experimental-dump-help; it needs to write
# under .build (its output folder), which the sandbox would forbid.
swift package --disable-sandbox plugin generate-manual --configuration "$configuration" >/dev/null
mkdir -p "$out"
for program in server client bench; do
    page=".build/plugins/GenerateManual/outputs/$program/$program.1"
    [ -f "$page" ] || { echo "man-pages.sh: the plugin wrote no $page" >&2; exit 1; }
    # The page's title and name as installed (the programs call themselves by their package names); no
    # "subcommand" in the synopsis (the only one is ArgumentParser's own `help`, listed further down); a blank
    # line, which mdoc warns about, as the paragraph break it stands for.
    upper="$(echo "$program" | tr '[:lower:]' '[:upper:]')"
    sed -e "s/^\.Dt $upper 1\$/.Dt LENGTH-ECHO-$upper 1/" -e "s/^\.Nm $program\$/.Nm length-echo-$program/" \
        -e '/^\.Sh SYNOPSIS$/,/^\.Sh DESCRIPTION$/{/^\.Ar subcommand$/d}' -e 's/^$/.Pp/' \
        "$page" >"$out/length-echo-$program.1"
    grep -q "^\.Nm length-echo-$program\$" "$out/length-echo-$program.1" \
        || { echo "man-pages.sh: $page has no .Nm $program line to rename" >&2; exit 1; }
done
echo "man-pages.sh: $out/length-echo-server.1, length-echo-client.1, length-echo-bench.1"
