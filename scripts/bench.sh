#!/usr/bin/env bash
# The benchmark suite: length-echo against what a user would otherwise deploy, side by side in one run.
#
# usage: scripts/bench.sh [--quick] [--write]
#   --quick   shorter cells (2 s), 2,000 idle connections instead of 10,000 and 4,000 held instead of 19,000
#   --write   also write the results to BENCHMARKS.md
#
# Release builds; one server at a time on this machine; each cell is a warm-up run and then a measured run of
# the `bench` load generator (c=50 unless stated). Server CPU per request is read from /proc (utime+stime of
# every server-side process) over the measured run, so the ratios survive a noisy, shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

DURATION=5
WARMUP=1
CONNECTIONS=50
HOLD=10000
SCALE=19000  # open connections in the scale cell: this machine's file limit is 20,000
WRITE=0
for arg in "$@"; do
    case "$arg" in
        --quick) DURATION=2; WARMUP=0.5; HOLD=2000; SCALE=4000 ;;
        --write) WRITE=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

# Tools from Debian's packages; installed when missing and we may.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v gcc >/dev/null || missing+=(gcc)
command -v nginx >/dev/null || missing+=(nginx libnginx-mod-stream)
command -v stunnel >/dev/null || missing+=(stunnel4)
command -v haproxy >/dev/null || missing+=(haproxy)
TCMALLOC="$(ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 / {print $NF; exit}')"
[ -n "$TCMALLOC" ] || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "bench.sh: installing ${missing[*]}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "bench.sh: missing ${missing[*]}; their cells are skipped" >&2
    fi
fi

echo "bench.sh: building release" >&2
swift build -c release >/dev/null
BIN="$(swift build -c release --show-bin-path)"
TCMALLOC="$(ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 / {print $NF; exit}')"
# The swift-nio-ssl peer: its own package (never a dependency of length-echo), built into its own folder.
echo "bench.sh: building the swift-nio-ssl peer (scripts/bench/nio-ssl-peer)" >&2
PEER_ARGS=(-c release --package-path scripts/bench/nio-ssl-peer --scratch-path "$ROOT/.build-nio-ssl-peer")
PEER=""
if swift build "${PEER_ARGS[@]}" >/dev/null 2>&1; then
    PEER="$(swift build "${PEER_ARGS[@]}" --show-bin-path)/nio-ssl-peer"
else
    echo "bench.sh: the swift-nio-ssl peer did not build; its cells are skipped" >&2
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

gcc -O2 -o "$WORK/iterative-server" scripts/bench/iterative-server.c
scripts/gen-certs.sh --out "$WORK/certs" --force >/dev/null
CERT="$WORK/certs/server.pem"
KEY="$WORK/certs/server.key"
CA="$WORK/certs/ca.pem"
HZ="$(getconf CLK_TCK)"

# Ports of this run (loopback only).
OURS=14100; C_SERVER=14101; NGINX=14102; STUNNEL=14103; S_SERVER=14104; OURS_TLS=14105; HAPROXY=14106
PEER_PORT=14107; SCALE_PORT=14108
BACKENDS=14110  # and the next two: the backends behind HAProxy

cpu_ticks() {  # total utime+stime of the given PIDs, in clock ticks
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

wait_port() {
    local i
    for i in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.025
    done
    echo "bench.sh: nothing listens on port $1" >&2
    return 1
}

start() {  # start NAME CMD...: runs CMD in the background; its PID lands in LAST_PID
    "${@:2}" >"$WORK/$1.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

json_field() { grep -o "\"$2\":[-0-9.e+]*" <<<"$1" | head -1 | cut -d: -f2; }

ROWS=()
add_row() { [ -z "${NO_ROW:-}" ] || return 0; ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 |"); echo "  $1 | $2 | $3 req/s | $4 µs CPU/req | p50 $5 µs | errors $6 | $7" >&2; }

# measure CELL SERVER "PIDS" NOTE BENCH-ARGS...   (FRONT_PIDS, if set, are also reported on their own)
measure() {
    local cell="$1" server="$2" pids="$3" note="$4"
    shift 4
    "$BIN/bench" "$@" --duration "$WARMUP" --warmup 0 >/dev/null
    local before after result front_before front_after
    before="$(cpu_ticks $pids)"
    front_before="$( [ -n "${FRONT_PIDS:-}" ] && cpu_ticks $FRONT_PIDS || echo 0)"
    result="$("$BIN/bench" "$@" --duration "$DURATION" --warmup 0 --json)"
    after="$(cpu_ticks $pids)"
    front_after="$( [ -n "${FRONT_PIDS:-}" ] && cpu_ticks $FRONT_PIDS || echo 0)"
    local requests rps p50 errors cpu
    requests="$(json_field "$result" requests)"
    rps="$(json_field "$result" requests_per_second)"
    p50="$(json_field "$result" p50)"
    errors="$(grep -o '"errors":{[^}]*}' <<<"$result" | sed 's/"errors"://; s/[{}"]//g')"
    [ -n "$errors" ] || errors="0"
    cpu="$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$requests" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')"
    if [ -n "${FRONT_PIDS:-}" ]; then
        LAST_FRONT_CPU="$(awk -v t=$((front_after - front_before)) -v hz="$HZ" -v n="$requests" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')"
        note="${note:+$note; }$LAST_FRONT_CPU µs of it in the front"
    fi
    if [ -n "${CELL_FLOOR_US:-}" ] && [ "$cpu" != "n/a" ]; then
        note="crypto floor $CELL_FLOOR_US µs = $(awk -v f="$CELL_FLOOR_US" -v c="$cpu" 'BEGIN { printf "%.0f", 100 * f / c }')% of the server CPU${note:+; $note}"
    fi
    local benchcpu
    benchcpu="$(json_field "$result" bench_cpu_seconds)"
    note="${note:+$note; }bench CPU $(awk -v b="$benchcpu" -v n="$requests" 'BEGIN { printf "%.1f", b * 1e6 / n }') µs/req"
    add_row "$cell" "$server" "$(printf '%.0f' "$rps")" "$cpu" "$p50" "$errors" "$note"
    LAST_RPS="$rps"
    LAST_CPU="$cpu"
}

# alternate A B: runs the functions A and B (each one measurement, with no row of its own) as A, B, B, A, since
# cells minutes apart drift more than a few percent; leaves the mean server CPU per request of each in ALT_A_CPU
# and ALT_B_CPU, and B's mean requests/s in ALT_B_RPS.
alternate() {
    local a_sum=0 b_sum=0 b_rps=0 side
    for side in "$1" "$2" "$2" "$1"; do
        NO_ROW=1 "$side"
        if [ "$side" = "$1" ]; then
            a_sum="$(awk -v a="$a_sum" -v b="$LAST_CPU" 'BEGIN { print a + b }')"
        else
            b_sum="$(awk -v a="$b_sum" -v b="$LAST_CPU" 'BEGIN { print a + b }')"
            b_rps="$(awk -v a="$b_rps" -v b="$LAST_RPS" 'BEGIN { print a + b }')"
        fi
    done
    ALT_A_CPU="$(awk -v t="$a_sum" 'BEGIN { printf "%.1f", t / 2 }')"
    ALT_B_CPU="$(awk -v t="$b_sum" 'BEGIN { printf "%.1f", t / 2 }')"
    ALT_B_RPS="$(awk -v t="$b_rps" 'BEGIN { printf "%.0f", t / 2 }')"
}

echo "bench.sh: crypto floor (openssl speed)" >&2
SIGN_PER_S="$(openssl speed -seconds 2 ecdsap256 2>/dev/null | awk '/ecdsa \(nistp256\)/ {print $(NF-1)}')"
X25519_PER_S="$(openssl speed -seconds 2 ecdhx25519 2>/dev/null | awk '/X25519/ {print $NF}')"
GCM_KBS="$(openssl speed -seconds 2 -evp aes-128-gcm 2>/dev/null | awk '/^(AES-128-GCM|aes-128-gcm)/ {print $NF}' | tr -d k)"
# A full ECDHE-ECDSA handshake costs the server at least one P-256 signature and two X25519 operations (its key
# share and the shared secret); a TLS 1.3 resumption at least the two X25519 operations.
FLOOR_US="$(awk -v s="$SIGN_PER_S" -v x="$X25519_PER_S" 'BEGIN { printf "%.1f", 1e6 / s + 2e6 / x }')"
RESUMED_FLOOR_US="$(awk -v x="$X25519_PER_S" 'BEGIN { printf "%.1f", 2e6 / x }')"
aes_floor() { awk -v n="$1" -v m="$GCM_MBS" 'BEGIN { printf "%.2f", 2 * n / (m * 1e6) * 1e6 }'; }  # decrypt + encrypt n bytes
GCM_MBS="$(awk -v k="$GCM_KBS" 'BEGIN { printf "%.0f", k * 1000 / 1e6 }')"

echo "bench.sh: plaintext" >&2
start ours "$BIN/server" --quiet --log-level error --host 127.0.0.1 --port "$OURS" --max-connections 100000
OURS_PID=$LAST_PID
wait_port "$OURS"
measure "plaintext, connection per request, 11 B" "length-echo" "$OURS_PID" "" --port "$OURS" -c "$CONNECTIONS" --mode per-request
OURS_PER_REQ=$LAST_RPS
OURS_PER_REQ_CPU=$LAST_CPU
measure "plaintext, persistent, 11 B" "length-echo" "$OURS_PID" "" --port "$OURS" -c "$CONNECTIONS" --mode persistent
OURS_PLAIN_PERSISTENT=$LAST_RPS
OURS_PERSISTENT_CPU=$LAST_CPU
stop "$OURS_PID"

start c-server "$WORK/iterative-server" "$C_SERVER"
C_PID=$LAST_PID
wait_port "$C_SERVER"
measure "plaintext, connection per request, 11 B" "iterative C server" "$C_PID" "" --port "$C_SERVER" -c "$CONNECTIONS" --mode per-request
C_PER_REQ=$LAST_RPS
stop "$C_PID"

if command -v haproxy >/dev/null; then
    # The scale-out deployment: HAProxy in TCP mode, PROXY v2 to three backends (one event loop each, so the
    # four processes share the machine's two cores), beside length-echo alone above.
    echo "bench.sh: HAProxy → 3 length-echo backends (PROXY v2)" >&2
    BACKEND_PIDS=""
    for i in 0 1 2; do
        start "backend$i" "$BIN/server" --quiet --log-level error --host 127.0.0.1 --port $((BACKENDS + i)) --threads 1 \
            --max-connections 100000 --proxy-protocol --proxy-from 127.0.0.1
        BACKEND_PIDS="$BACKEND_PIDS $LAST_PID"
        wait_port $((BACKENDS + i))
    done
    cat >"$WORK/haproxy.cfg" <<HAPROXY
global
    nbthread 2
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$HAPROXY
    default_backend be
backend be
    balance roundrobin
    option tcp-check
    tcp-check send-binary 636865636b00
    tcp-check expect binary 35203a20636865636b00
    default-server send-proxy-v2 check check-send-proxy inter 2s
    server b0 127.0.0.1:$BACKENDS
    server b1 127.0.0.1:$((BACKENDS + 1))
    server b2 127.0.0.1:$((BACKENDS + 2))
HAPROXY
    start haproxy haproxy -f "$WORK/haproxy.cfg" -db
    HAPROXY_PID=$LAST_PID
    wait_port "$HAPROXY"
    FRONT_PIDS="$HAPROXY_PID"
    measure "plaintext, connection per request, 11 B" "HAProxy (2 threads) → 3 length-echo" "$HAPROXY_PID $BACKEND_PIDS" "CPU of HAProxy and the backends" --port "$HAPROXY" -c "$CONNECTIONS" --mode per-request
    HAPROXY_PER_REQ_CPU=$LAST_CPU
    measure "plaintext, persistent, 11 B" "HAProxy (2 threads) → 3 length-echo" "$HAPROXY_PID $BACKEND_PIDS" "CPU of HAProxy and the backends" --port "$HAPROXY" -c "$CONNECTIONS" --mode persistent
    HAPROXY_PERSISTENT_CPU=$LAST_CPU
    FRONT_PIDS=""
    stop "$HAPROXY_PID" $BACKEND_PIDS
fi

echo "bench.sh: TLS" >&2
start ours-tls "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000
OURS_TLS_PID=$LAST_PID
wait_port "$OURS_TLS"
TLSARGS=(--tls --ca "$CA" --server-name localhost)
# tls13_cells SERVER PID PORT PREFIX: the TLS 1.3 cells every TLS server here is compared on (full and resumed
# handshakes per request, persistent 11 B and 64 KiB); sets PREFIX_FULL_CPU, PREFIX_RESUMED_CPU,
# PREFIX_TLS_PERSISTENT(_CPU) and PREFIX_64K_RPS/_CPU.
tls13_cells() {
    local server="$1" pid="$2" port="$3" prefix="$4"
    CELL_FLOOR_US="$FLOOR_US" measure "TLS 1.3 full handshake per request" "$server" "$pid" "" --port "$port" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume
    printf -v "${prefix}_FULL_CPU" '%s' "$LAST_CPU"
    CELL_FLOOR_US="$RESUMED_FLOOR_US" measure "TLS 1.3 resumed handshake per request" "$server" "$pid" "" --port "$port" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --resume
    printf -v "${prefix}_RESUMED_CPU" '%s' "$LAST_CPU"
    CELL_FLOOR_US="$(aes_floor 11)" measure "TLS 1.3 persistent, 11 B" "$server" "$pid" "" --port "$port" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent
    printf -v "${prefix}_TLS_PERSISTENT" '%s' "$LAST_RPS"
    printf -v "${prefix}_TLS_PERSISTENT_CPU" '%s' "$LAST_CPU"
    CELL_FLOOR_US="$(aes_floor 65536)" measure "TLS 1.3 persistent, 64 KiB" "$server" "$pid" "" --port "$port" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent --size 65536
    printf -v "${prefix}_64K_RPS" '%s' "$LAST_RPS"
    printf -v "${prefix}_64K_CPU" '%s' "$LAST_CPU"
}
tls13_cells "length-echo" "$OURS_TLS_PID" "$OURS_TLS" OURS
CELL_FLOOR_US="$FLOOR_US" measure "TLS 1.2 full handshake per request" "length-echo" "$OURS_TLS_PID" "" --port "$OURS_TLS" "${TLSARGS[@]}" --tls-max 1.2 -c "$CONNECTIONS" --mode per-request --no-resume
OURS_FULL12_CPU=$LAST_CPU
measure "TLS 1.2 resumed handshake per request" "length-echo" "$OURS_TLS_PID" "" --port "$OURS_TLS" "${TLSARGS[@]}" --tls-max 1.2 -c "$CONNECTIONS" --mode per-request --resume
OURS_RESUMED12_CPU=$LAST_CPU
stop "$OURS_TLS_PID"  # one server at a time: the TLS fronts below have only the plaintext backend behind them

# The optional settings, each against the default, alternating.
full_handshakes_of_new_server() {  # [PREFIX...] [-- FLAGS...]: one measurement of a TLS server started for it
    local prefix=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    start ours-tls-variant "${prefix[@]}" "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000 "$@"
    local pid=$LAST_PID
    wait_port "$OURS_TLS"
    measure "" "" "$pid" "" --port "$OURS_TLS" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume
    stop "$pid"
}
by_default() { full_handshakes_of_new_server; }
# optional_cell SERVER NOTE B: full handshakes with a setting (the function B) against the default, alternating; adds
# B's row (SERVER, NOTE, the default's figure) and leaves the default's and B's figures in ALT_A_CPU and ALT_B_CPU.
optional_cell() {
    echo "bench.sh: $1 against the default, alternating" >&2
    alternate by_default "$3"
    add_row "TLS 1.3 full handshake per request" "$1" "$ALT_B_RPS" "$ALT_B_CPU" "n/a" "0" \
        "${2:+$2; }two runs each, alternating with the default: $ALT_A_CPU µs without"
}
# --cpu-affinity: loops pinned to CPUs, each connection taken by the loop on the CPU that received it.
with_affinity() { full_handshakes_of_new_server -- --cpu-affinity; }
optional_cell "length-echo --cpu-affinity (optional)" "" with_affinity
UNPINNED_FULL_CPU=$ALT_A_CPU
AFFINITY_FULL_CPU=$ALT_B_CPU
if [ -n "$TCMALLOC" ]; then
    # Debian's tcmalloc under the whole process (LD_PRELOAD; see the README), against glibc's malloc.
    with_tcmalloc() { full_handshakes_of_new_server env LD_PRELOAD="$TCMALLOC"; }
    optional_cell "length-echo + tcmalloc (optional)" "LD_PRELOAD=$TCMALLOC" with_tcmalloc
    GLIBC_FULL_CPU=$ALT_A_CPU
    TC_FULL_CPU=$ALT_B_CPU
fi

if [ -n "$PEER" ]; then
    # The same protocol on SwiftNIO with swift-nio-ssl (BoringSSL): the best Swift TLS stack, same event loops.
    echo "bench.sh: the swift-nio-ssl peer" >&2
    PEER_NAME="swift-nio-ssl peer (BoringSSL)"
    start peer-plain "$PEER" "$PEER_PORT"
    PEER_PID=$LAST_PID
    wait_port "$PEER_PORT"
    measure "plaintext, persistent, 11 B" "$PEER_NAME" "$PEER_PID" "" --port "$PEER_PORT" -c "$CONNECTIONS" --mode persistent
    PEER_PLAIN_PERSISTENT=$LAST_RPS
    PEER_PLAIN_CPU=$LAST_CPU
    stop "$PEER_PID"
    start peer-tls "$PEER" "$PEER_PORT" "$CERT" "$KEY"
    PEER_PID=$LAST_PID
    wait_port "$PEER_PORT"
    tls13_cells "$PEER_NAME" "$PEER_PID" "$PEER_PORT" PEER
    stop "$PEER_PID"
fi

# Our plaintext server again, now as the backend behind the TLS fronts.
start ours-backend "$BIN/server" --quiet --log-level error --host 127.0.0.1 --port "$OURS" --max-connections 100000
OURS_PID=$LAST_PID
wait_port "$OURS"

if command -v nginx >/dev/null; then
    echo "bench.sh: nginx stream TLS termination in front of length-echo" >&2
    MODULE="$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true)"
    cat >"$WORK/nginx.conf" <<NGINX
${MODULE:+load_module $MODULE;}
worker_processes 2;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log error;
events { worker_connections 100000; }
stream {
    server {
        listen 127.0.0.1:$NGINX ssl;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        proxy_pass 127.0.0.1:$OURS;
    }
}
NGINX
    start nginx nginx -c "$WORK/nginx.conf" -p "$WORK"
    NGINX_MASTER=$LAST_PID
    wait_port "$NGINX"
    NGINX_PIDS="$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"
    FRONT_PIDS="$NGINX_PIDS"
    CELL_FLOOR_US="$FLOOR_US" measure "TLS 1.3 full handshake per request" "nginx stream (2 workers) → length-echo" "$NGINX_PIDS $OURS_PID" "CPU of nginx and the backend" --port "$NGINX" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume
    NGINX_FULL_CPU=$LAST_CPU
    NGINX_ONLY_FULL_CPU=$LAST_FRONT_CPU
    CELL_FLOOR_US="$RESUMED_FLOOR_US" measure "TLS 1.3 resumed handshake per request" "nginx stream (2 workers) → length-echo" "$NGINX_PIDS $OURS_PID" "CPU of nginx and the backend" --port "$NGINX" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --resume
    CELL_FLOOR_US="$(aes_floor 11)" measure "TLS 1.3 persistent, 11 B" "nginx stream (2 workers) → length-echo" "$NGINX_PIDS $OURS_PID" "CPU of nginx and the backend" --port "$NGINX" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent
    CELL_FLOOR_US="$(aes_floor 65536)" measure "TLS 1.3 persistent, 64 KiB" "nginx stream (2 workers) → length-echo" "$NGINX_PIDS $OURS_PID" "CPU of nginx and the backend" --port "$NGINX" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent --size 65536
    FRONT_PIDS=""
    # The headline ratio side by side: length-echo's TLS server against nginx's front alone, alternating (ours,
    # nginx, nginx, ours; the other one idle), since cells minutes apart drift more than the difference.
    echo "bench.sh: full handshakes, length-echo and nginx's front alternating" >&2
    start ours-tls-duel "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000
    DUEL_PID=$LAST_PID
    wait_port "$OURS_TLS"
    ours_full() { measure "" "" "$DUEL_PID" "" --port "$OURS_TLS" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume; }
    nginx_full() { measure "" "" "$NGINX_PIDS" "" --port "$NGINX" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume; }
    alternate ours_full nginx_full
    stop "$DUEL_PID"
    DUEL_OURS_CPU=$ALT_A_CPU
    DUEL_NGINX_CPU=$ALT_B_CPU
    add_row "TLS 1.3 full handshake per request, side by side" "length-echo, alternating with nginx's front" "n/a" \
        "$DUEL_OURS_CPU" "n/a" "0" "two runs each, alternating: nginx's front alone $DUEL_NGINX_CPU µs"
    # And with both optional settings (--cpu-affinity, and tcmalloc where Debian's is installed).
    start ours-tls-tuned ${TCMALLOC:+env LD_PRELOAD="$TCMALLOC"} "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000 --cpu-affinity
    DUEL_PID=$LAST_PID
    wait_port "$OURS_TLS"
    alternate ours_full nginx_full
    stop "$DUEL_PID"
    TUNED_OURS_CPU=$ALT_A_CPU
    TUNED_NGINX_CPU=$ALT_B_CPU
    TUNED_NAME="--cpu-affinity${TCMALLOC:+ and tcmalloc}"
    add_row "TLS 1.3 full handshake per request, side by side" "length-echo $TUNED_NAME (optional), alternating with nginx's front" "n/a" \
        "$TUNED_OURS_CPU" "n/a" "0" "two runs each, alternating: nginx's front alone $TUNED_NGINX_CPU µs"
    stop $NGINX_PIDS
fi

if command -v stunnel >/dev/null; then
    echo "bench.sh: stunnel in front of length-echo" >&2
    cat >"$WORK/stunnel.conf" <<STUNNEL
foreground = yes
pid =
debug = 3
[length-echo]
accept = 127.0.0.1:$STUNNEL
connect = 127.0.0.1:$OURS
cert = $CERT
key = $KEY
sslVersionMin = TLSv1.2
STUNNEL
    start stunnel stunnel "$WORK/stunnel.conf"
    STUNNEL_PID=$LAST_PID
    FRONT_PIDS="$STUNNEL_PID"
    wait_port "$STUNNEL"
    CELL_FLOOR_US="$FLOOR_US" measure "TLS 1.3 full handshake per request" "stunnel → length-echo" "$STUNNEL_PID $OURS_PID" "CPU of stunnel and the backend" --port "$STUNNEL" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --no-resume
    CELL_FLOOR_US="$RESUMED_FLOOR_US" measure "TLS 1.3 resumed handshake per request" "stunnel → length-echo" "$STUNNEL_PID $OURS_PID" "CPU of stunnel and the backend" --port "$STUNNEL" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode per-request --resume
    CELL_FLOOR_US="$(aes_floor 65536)" measure "TLS 1.3 persistent, 64 KiB" "stunnel → length-echo" "$STUNNEL_PID $OURS_PID" "CPU of stunnel and the backend" --port "$STUNNEL" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent --size 65536
    CELL_FLOOR_US="$(aes_floor 11)" measure "TLS 1.3 persistent, 11 B" "stunnel → length-echo" "$STUNNEL_PID $OURS_PID" "CPU of stunnel and the backend" --port "$STUNNEL" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent
    FRONT_PIDS=""
    stop "$STUNNEL_PID"
fi

stop "$OURS_PID"
echo "bench.sh: openssl s_server and length-echo under openssl s_time (one connection at a time)" >&2
s_time_cell() {  # s_time_cell SERVER PIDS PORT FLAGS
    local before after out count seconds
    openssl s_time -connect "127.0.0.1:$3" -CAfile "$CA" $4 -time 1 >/dev/null 2>&1 || true
    before="$(cpu_ticks $2)"
    out="$(openssl s_time -connect "127.0.0.1:$3" -CAfile "$CA" $4 -time "$DURATION" 2>/dev/null || true)"
    after="$(cpu_ticks $2)"
    count="$(grep -o '^[0-9]* connections in [0-9]* real' <<<"$out" | head -1 | awk '{print $1}')"
    seconds="$(grep -o '^[0-9]* connections in [0-9]* real' <<<"$out" | head -1 | awk '{print $4}')"
    if [ -z "$count" ] || [ "$count" = 0 ]; then
        add_row "s_time $4" "$1" "n/a" "n/a" "n/a" "s_time failed" ""
        return
    fi
    add_row "TLS 1.3 handshakes, s_time $4 (c=1)" "$1" "$(awk -v c="$count" -v s="$seconds" 'BEGIN { printf "%.0f", c / s }')" \
        "$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$count" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')" "n/a" "0" "handshakes/s; CPU per handshake"
}
start s-server openssl s_server -accept "127.0.0.1:$S_SERVER" -cert "$CERT" -key "$KEY" -quiet
S_PID=$LAST_PID
wait_port "$S_SERVER"
s_time_cell "openssl s_server" "$S_PID" "$S_SERVER" "-new"
s_time_cell "openssl s_server" "$S_PID" "$S_SERVER" "-reuse"
stop "$S_PID"
start ours-tls-s-time "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000
OURS_TLS_PID=$LAST_PID
wait_port "$OURS_TLS"
s_time_cell "length-echo" "$OURS_TLS_PID" "$OURS_TLS" "-new"
s_time_cell "length-echo" "$OURS_TLS_PID" "$OURS_TLS" "-reuse"

echo "bench.sh: memory with $HOLD idle connections" >&2
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hold_start() {  # hold_start PORT N BENCH-ARGS...: N idle connections, held by a bench process until hold_stop
    local port="$1" count="$2"
    shift 2
    mkfifo "$WORK/hold.in"
    "$BIN/bench" --port "$port" --hold "$count" "$@" <"$WORK/hold.in" >"$WORK/hold.out" 2>&1 &
    HOLDER=$!
    exec 7>"$WORK/hold.in"
    while ! grep -q holding "$WORK/hold.out" 2>/dev/null; do
        if ! kill -0 "$HOLDER" 2>/dev/null; then echo "bench.sh: --hold failed: $(cat "$WORK/hold.out")" >&2; break; fi
        sleep 0.1
    done
}
hold_stop() {
    exec 7>&-
    wait "$HOLDER" 2>/dev/null || true
    rm -f "$WORK/hold.in"
}
per_connection_kib() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (a - b) / n }'; }
hold_cell() {  # hold_cell LABEL PID PORT BENCH-ARGS...
    local label="$1" pid="$2" port="$3" before after
    shift 3
    before="$(rss_kb "$pid")"
    hold_start "$port" "$HOLD" "$@"
    after="$(rss_kb "$pid")"
    hold_stop
    MEM_LAST="$(per_connection_kib "$after" "$before" "$HOLD")"
    add_row "memory, $HOLD idle connections" "$label" "n/a" "n/a" "n/a" "0" \
        "RSS +$(( (after - before) / 1024 )) MiB: $MEM_LAST KiB per connection"
}
stop "$OURS_PID" "$OURS_TLS_PID"
start ours-mem "$BIN/server" --quiet --log-level error --host 127.0.0.1 --port "$OURS" --max-connections 100000 --idle-timeout 600
wait_port "$OURS"
hold_cell "length-echo, plaintext" "$LAST_PID" "$OURS"
MEM_PLAIN=$MEM_LAST
stop "$LAST_PID"
start ours-mem-tls "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$OURS_TLS" --max-connections 100000 --idle-timeout 600
wait_port "$OURS_TLS"
hold_cell "length-echo, TLS" "$LAST_PID" "$OURS_TLS" --tls --ca "$CA" --server-name localhost
MEM_TLS=$MEM_LAST
stop "$LAST_PID"

echo "bench.sh: $SCALE open TLS connections while c=$CONNECTIONS clients measure latency" >&2
latency_cell() {  # latency_cell LABEL NOTE: the active clients, once, against the scale server
    local result errors
    result="$("$BIN/bench" --port "$SCALE_PORT" "${TLSARGS[@]}" -c "$CONNECTIONS" --mode persistent --duration "$DURATION" --warmup "$WARMUP" --json)"
    LAT_P99="$(json_field "$result" p99)"
    errors="$(grep -o '"errors":{[^}]*}' <<<"$result" | sed 's/"errors"://; s/[{}"]//g')"
    add_row "$1" "length-echo" "$(printf '%.0f' "$(json_field "$result" requests_per_second)")" "n/a" \
        "$(json_field "$result" p50)" "${errors:-0}" "p99 $LAT_P99 µs, p99.9 $(json_field "$result" p99.9) µs${2:+; $2}"
}
start ours-scale "$BIN/server" --quiet --log-level error --tls --cert "$CERT" --key "$KEY" --host 127.0.0.1 --port "$SCALE_PORT" --max-connections $((SCALE + 500)) --idle-timeout 600
SCALE_PID=$LAST_PID
wait_port "$SCALE_PORT"
latency_cell "TLS 1.3 persistent, 11 B, nothing else open" ""
UNLOADED_P99=$LAT_P99
before="$(rss_kb "$SCALE_PID")"
hold_start "$SCALE_PORT" "$SCALE" "${TLSARGS[@]}" --source 127.0.0.2 --source 127.0.0.3 --source 127.0.0.4 --source 127.0.0.5
after="$(rss_kb "$SCALE_PID")"
MEM_SCALE="$(per_connection_kib "$after" "$before" "$SCALE")"
latency_cell "TLS 1.3 persistent, 11 B, $SCALE idle TLS connections open" "held from 127.0.0.2-5: RSS +$(( (after - before) / 1024 )) MiB, $MEM_SCALE KiB per connection"
LOADED_P99=$LAT_P99
hold_stop
stop "$SCALE_PID"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
SUMMARY=(
    "- Plaintext, connection per request: length-echo / iterative C server = **$(ratio "$OURS_PER_REQ" "$C_PER_REQ")×** requests/s."
    "- TLS 1.3 full handshake, server CPU: length-echo $OURS_FULL_CPU µs vs nginx+backend ${NGINX_FULL_CPU:-n/a} µs (nginx alone ${NGINX_ONLY_FULL_CPU:-n/a} µs) per handshake: **$(ratio "$OURS_FULL_CPU" "${NGINX_ONLY_FULL_CPU:-0}")×** nginx's own; crypto floor (1 ECDSA P-256 sign + 2 X25519) $FLOOR_US µs, so length-echo spends **$(ratio "$OURS_FULL_CPU" "$FLOOR_US")×** the floor."
    "- The same, side by side (two runs each, alternating): length-echo ${DUEL_OURS_CPU:-n/a} µs vs nginx's front ${DUEL_NGINX_CPU:-n/a} µs = **$(ratio "${DUEL_OURS_CPU:-0}" "${DUEL_NGINX_CPU:-0}")×**."
    "- Behind HAProxy (PROXY v2, 3 backends), server-side CPU per request against length-echo alone: **$(ratio "${HAPROXY_PER_REQ_CPU:-0}" "$OURS_PER_REQ_CPU")×** connection per request (${HAPROXY_PER_REQ_CPU:-n/a} µs vs $OURS_PER_REQ_CPU µs), **$(ratio "${HAPROXY_PERSISTENT_CPU:-0}" "$OURS_PERSISTENT_CPU")×** persistent (${HAPROXY_PERSISTENT_CPU:-n/a} µs vs $OURS_PERSISTENT_CPU µs): the balancer's cost."
    "- Resumption: full / resumed server CPU = **$(ratio "$OURS_FULL_CPU" "$OURS_RESUMED_CPU")×** on TLS 1.3, **$(ratio "$OURS_FULL12_CPU" "$OURS_RESUMED12_CPU")×** on TLS 1.2."
    "- Persistent 11 B: TLS / plaintext = **$(ratio "$OURS_TLS_PERSISTENT" "$OURS_PLAIN_PERSISTENT")×** requests/s."
    "- Persistent 64 KiB over TLS: $(awk -v r="$OURS_64K_RPS" 'BEGIN { printf "%.0f", r * 65536 * 2 / 1e6 }') MB/s of messages and replies vs the AES-128-GCM floor of $GCM_MBS MB/s (one core) = **$(ratio "$(awk -v r="$OURS_64K_RPS" 'BEGIN { print r * 65536 * 2 / 1e6 }')" "$GCM_MBS")×**."
    "- Memory per idle connection: **$MEM_PLAIN KiB** plaintext, **$MEM_TLS KiB** TLS ($HOLD held); **$MEM_SCALE KiB** per TLS connection with $SCALE held."
    "- $SCALE idle TLS connections open: the active clients' p99 $LOADED_P99 µs against $UNLOADED_P99 µs with nothing else open = **$(ratio "$LOADED_P99" "$UNLOADED_P99")×**."
)
SUMMARY+=("- With --cpu-affinity (optional): TLS 1.3 full handshake $AFFINITY_FULL_CPU µs against $UNPINNED_FULL_CPU µs without, alternating = **$(ratio "$AFFINITY_FULL_CPU" "$UNPINNED_FULL_CPU")×**.")
if [ -n "${TUNED_OURS_CPU:-}" ]; then
    SUMMARY+=("- With ${TUNED_NAME} (optional), side by side with nginx's front (two runs each, alternating): $TUNED_OURS_CPU µs vs $TUNED_NGINX_CPU µs = **$(ratio "$TUNED_OURS_CPU" "$TUNED_NGINX_CPU")×**.")
fi
if [ -n "${TC_FULL_CPU:-}" ]; then
    SUMMARY+=("- With tcmalloc (optional, LD_PRELOAD): TLS 1.3 full handshake $TC_FULL_CPU µs against $GLIBC_FULL_CPU µs with glibc's malloc, alternating = **$(ratio "$TC_FULL_CPU" "$GLIBC_FULL_CPU")×**; **$(ratio "$TC_FULL_CPU" "${NGINX_ONLY_FULL_CPU:-0}")×** nginx's own.")
fi
if [ -n "$PEER" ]; then
    SUMMARY+=(
        "- Against the swift-nio-ssl peer (SwiftNIO + BoringSSL), requests/s ours/peer and server CPU per request peer/ours (above 1 is ours ahead): plaintext persistent 11 B **$(ratio "$OURS_PLAIN_PERSISTENT" "$PEER_PLAIN_PERSISTENT")×** and **$(ratio "$PEER_PLAIN_CPU" "$OURS_PERSISTENT_CPU")×**; TLS persistent 11 B **$(ratio "$OURS_TLS_PERSISTENT" "$PEER_TLS_PERSISTENT")×** and **$(ratio "$PEER_TLS_PERSISTENT_CPU" "$OURS_TLS_PERSISTENT_CPU")×**; TLS 64 KiB MB/s **$(ratio "$OURS_64K_RPS" "$PEER_64K_RPS")×** and **$(ratio "$PEER_64K_CPU" "$OURS_64K_CPU")×**; TLS 1.3 full handshake CPU **$(ratio "$PEER_FULL_CPU" "$OURS_FULL_CPU")×** (BoringSSL's handshake is cheaper than OpenSSL 3.0's)."
    )
fi

TABLE="| cell | server | requests/s | server CPU µs/request | p50 µs | errors | notes |
|---|---|---:|---:|---:|---|---|
$(printf '%s\n' "${ROWS[@]}")"

HEADER="Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r); $(openssl version | cut -d' ' -f1-2); $(swift --version 2>/dev/null | head -1 | sed 's/ (.*//').
Run: \`scripts/bench.sh $*\` on $(date -u '+%Y-%m-%d %H:%M UTC'); cells of ${DURATION} s after ${WARMUP} s of warm-up, c=$CONNECTIONS, loopback, client and server on the same machine.
Crypto floor (\`openssl speed\`, one core): ECDSA P-256 sign $SIGN_PER_S/s, X25519 $X25519_PER_S/s, AES-128-GCM $GCM_MBS MB/s (16 KiB blocks)."

echo
echo "$HEADER"
echo
echo "$TABLE"
echo
printf '%s\n' "${SUMMARY[@]}"

if [ "$WRITE" -eq 1 ]; then
    python3 - "$ROOT/BENCHMARKS.md" "$HEADER" "$TABLE" "$(printf '%s\n' "${SUMMARY[@]}")" <<'PY'
import sys, re
path, header, table, summary = sys.argv[1:5]
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n\n<!-- results -->\n<!-- end results -->\n"
block = "<!-- results -->\n" + header + "\n\n" + table + "\n\n" + summary + "\n<!-- end results -->"
text = re.sub(r"<!-- results -->.*?<!-- end results -->", lambda m: block, text, flags=re.S)
open(path, "w").write(text)
PY
    echo "bench.sh: wrote BENCHMARKS.md" >&2
fi
