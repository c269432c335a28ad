#!/usr/bin/env bash
# The whole test suite under a sanitizer: scripts/sanitize.sh address|thread
# Each uses a build folder of its own (.build-asan, .build-tsan), so the normal build is not disturbed.
# A crash under a sanitizer must exit, not hang in the backtracer: SWIFT_BACKTRACE=enable=no.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-address}"
case "$kind" in
    address)
        # Suppressions, each with its reason, in scripts/sanitizers/lsan.supp.
        export LSAN_OPTIONS="suppressions=$PWD/scripts/sanitizers/lsan.supp:print_suppressions=0"
        scratch=.build-asan ;;
    thread)
        export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
        scratch=.build-tsan ;;
    *) echo "usage: scripts/sanitize.sh address|thread" >&2; exit 2 ;;
esac
export SWIFT_BACKTRACE=enable=no
export LENGTH_ECHO_SANITIZER="$kind"  # the attack battery skips itself (see AttackBatteryTests)
swift test --sanitize="$kind" --scratch-path "$scratch"
