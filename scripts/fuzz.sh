#!/usr/bin/env bash
# libFuzzer targets for the framer, the reply parser, the TLS handler (both roles) and the PROXY header parser.
#
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s each, every target)
#   Builds with -sanitize=fuzzer,address into .build-fuzz, runs each target for SECONDS over its committed
#   corpus in Fuzz/corpus/TARGET (new interesting inputs land in a scratch copy; pass FUZZ_KEEP=1 to add
#   them to the committed corpus), and stops at the first failure, whose input is saved in .build-fuzz/crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(FuzzFramer FuzzReplyParser FuzzTLS FuzzProxyProtocol)

export LENGTH_ECHO_FUZZ=1 SWIFT_BACKTRACE=enable=no
flags=(--scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld)
for target in "${targets[@]}"; do
    swift build "${flags[@]}" --product "$target" 2>&1 | grep -E "error|warning: unre" >&2 || true
done
bin="$(swift build "${flags[@]}" --show-bin-path)"
mkdir -p .build-fuzz/crashes
for target in "${targets[@]}"; do
    corpus="Fuzz/corpus/$target"
    scratch=".build-fuzz/corpus/$target"
    mkdir -p "$corpus" "$scratch"
    echo "fuzz.sh: $target for ${seconds} s" >&2
    # -close_fd_mask=1: the target's own stdout stays quiet; libFuzzer's report goes to stderr.
    "$bin/$target" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=4096 -close_fd_mask=1 \
        -artifact_prefix=.build-fuzz/crashes/"$target"- "$scratch" "$corpus" 2>&1 \
        | grep -E "^#[0-9]+.*(DONE|pulse)|Done [0-9]+ runs|ERROR|SUMMARY|Test unit written|deadly" >&2
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || { echo "fuzz.sh: $target failed (exit $status); input in .build-fuzz/crashes/" >&2; exit 1; }
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        "$bin/$target" -merge=1 "$corpus" "$scratch" >/dev/null 2>&1
    fi
done
