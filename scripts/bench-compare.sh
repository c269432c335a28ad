#!/usr/bin/env bash
# Two builds of the server side by side in one run: server CPU per request for each of length-echo's own cells,
# and the ratio after/before. For a change's before/after note ("no cell loses more than N%").
#
# usage: [ONLY=TEXT] [DURATION=S] scripts/bench-compare.sh BEFORE_BIN_DIR AFTER_BIN_DIR [ROUNDS]
#   each BIN_DIR holds a release `server`; the load comes from AFTER_BIN_DIR's `bench` for both.
#   ONLY keeps the cells whose name contains TEXT. LOG_LEVEL (default error) is the servers' --log-level; info
#   logs a line per connection, written to LOG_FILE (default /dev/null), to measure what that costs.
#   AFTER_FLAGS are extra server flags for the AFTER side only: the same build with a feature on against off,
#   say AFTER_FLAGS="--status 0" scripts/bench-compare.sh .build/release .build/release. Rounds alternate the order (before, after / after, before) so drift on a shared machine cancels out.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE="$1"; AFTER="$2"; ROUNDS="${3:-2}"
DURATION="${DURATION:-3}"
LOG_LEVEL="${LOG_LEVEL:-error}"
LOG_FILE="${LOG_FILE:-/dev/null}"
AFTER_FLAGS="${AFTER_FLAGS:-}"
BENCH="$AFTER/bench"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
scripts/gen-certs.sh --out "$WORK/certs" --force >/dev/null
HZ="$(getconf CLK_TCK)"
PORT=14200

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.025; done; return 1; }

# cell_cpu BIN_DIR SERVER-ARGS -- BENCH-ARGS: prints µs of server CPU per request
cell_cpu() {
    local bin="$1"; shift
    local server_args=() bench_args=()
    while [ "$1" != "--" ]; do server_args+=("$1"); shift; done; shift
    bench_args=("$@")
    PORT=$((PORT + 1))
    "$bin/server" --quiet --log-level "$LOG_LEVEL" --host 127.0.0.1 --port "$PORT" --max-connections 100000 "${server_args[@]}" 2>>"$LOG_FILE" &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT"
    "$BENCH" --port "$PORT" "${bench_args[@]}" --duration 1 --warmup 0 >/dev/null
    local before after result requests
    before="$(cpu_ticks "$pid")"
    result="$("$BENCH" --port "$PORT" "${bench_args[@]}" --duration "$DURATION" --warmup 0 --json)"
    after="$(cpu_ticks "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    requests="$(grep -o '"requests":[0-9]*' <<<"$result" | head -1 | cut -d: -f2)"
    awk -v t=$((after - before)) -v hz="$HZ" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }'
}

TLS_SERVER=(--tls --cert "$WORK/certs/server.pem" --key "$WORK/certs/server.key")
TLS_BENCH=(--tls --ca "$WORK/certs/ca.pem" --server-name localhost)
CELLS=(
    "plaintext, connection per request, 11 B|-- -c 50 --mode per-request"
    "plaintext, persistent, 11 B|-- -c 50 --mode persistent"
    "TLS 1.3 full handshake per request|TLS -- TLS -c 50 --mode per-request --no-resume"
    "TLS 1.3 resumed handshake per request|TLS -- TLS -c 50 --mode per-request --resume"
    "TLS 1.3 persistent, 11 B|TLS -- TLS -c 50 --mode persistent"
    "TLS 1.3 persistent, 64 KiB|TLS -- TLS -c 50 --mode persistent --size 65536"
)
expand() {  # the words of a cell's argument string, with TLS standing for the TLS flags of that side
    local side="server" word
    for word in $1; do
        if [ "$word" = "--" ]; then side="bench"; echo "--"; continue; fi
        if [ "$word" = "TLS" ]; then
            if [ "$side" = "server" ]; then printf '%s\n' "${TLS_SERVER[@]}"; else printf '%s\n' "${TLS_BENCH[@]}"; fi
        else echo "$word"; fi
    done
}

printf '| cell | before µs/req | after µs/req | after/before |\n|---|---|---|---|\n'
for cell in "${CELLS[@]}"; do
    name="${cell%%|*}"
    [[ "$name" == *"${ONLY:-}"* ]] || continue
    mapfile -t args < <(expand "${cell#*|}")
    b_total=0; a_total=0
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then
            b="$(cell_cpu "$BEFORE" "${args[@]}")"; a="$(cell_cpu "$AFTER" $AFTER_FLAGS "${args[@]}")"
        else
            a="$(cell_cpu "$AFTER" $AFTER_FLAGS "${args[@]}")"; b="$(cell_cpu "$BEFORE" "${args[@]}")"
        fi
        b_total="$(awk -v x="$b_total" -v y="$b" 'BEGIN { print x + y }')"
        a_total="$(awk -v x="$a_total" -v y="$a" 'BEGIN { print x + y }')"
    done
    awk -v n="$name" -v b="$b_total" -v a="$a_total" -v r="$ROUNDS" \
        'BEGIN { printf "| %s | %.2f | %.2f | %.3f |\n", n, b / r, a / r, a / b }'
done
