#!/usr/bin/env bash
# bench/run.sh — side-by-side benchmark of sidemesh against HAProxy and nginx
# on loopback: HTTP/1.1 (100-byte responses), HTTP/2 without TLS (h2load)
# and gRPC (grpc-go unary and streaming). Method and how to read the
# numbers: bench/README.md. Prints the markdown tables and writes them to
# bench/results/latest.md, with every result in bench/results/latest.json
# and a chart of the latency percentiles in bench/results/latest.svg.
#
# Knobs (environment):
#   BENCH_ROUNDS=2      rounds over all setups; the table shows each setup's best round
#   BENCH_DURATION=5s   measured window per closed-loop and per open-loop run
#   BENCH_WARMUP=1s     unmeasured warm-up before each window
#   BENCH_CONNS=32      connections of the closed loop (throughput)
#   BENCH_RATE=2000     requests per second of the open loop (latency)
#   BENCH_OPEN_CONNS=32 connections of the open loop (= max in flight)
#   BENCH_H2_CONNS=8    h2c (h2load): connections
#   BENCH_H2_STREAMS=16 h2c (h2load): concurrent streams per connection
#   BENCH_GRPC_CONNS=8  gRPC unary: connections
#   BENCH_GRPC_STREAMS=16 gRPC unary: calls in flight per connection
#   BENCH_STREAMS=1     gRPC streaming: server-streaming calls (on one connection)
#   BENCH_STREAM_CHUNK=65536 gRPC streaming: bytes per message
#   BENCH_ONLY="direct sidemesh haproxy nginx sidemesh-tcp haproxy-tcp
#               h2c-direct h2c-sidemesh h2c-sidemesh-grpc h2c-haproxy
#               grpc-direct grpc-sidemesh grpc-haproxy"
#   BENCH_NO_INSTALL=1  do not apt-get install missing peers (skip them)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-2}
DUR=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
CONNS=${BENCH_CONNS:-32}
RATE=${BENCH_RATE:-2000}
OPEN_CONNS=${BENCH_OPEN_CONNS:-32}
H2_CONNS=${BENCH_H2_CONNS:-8}
H2_STREAMS=${BENCH_H2_STREAMS:-16}
GRPC_CONNS=${BENCH_GRPC_CONNS:-8}
GRPC_STREAMS=${BENCH_GRPC_STREAMS:-16}
STREAMS=${BENCH_STREAMS:-1}
STREAM_CHUNK=${BENCH_STREAM_CHUNK:-65536}
ALL_SETUPS="direct sidemesh haproxy nginx sidemesh-tcp haproxy-tcp h2c-direct h2c-sidemesh h2c-sidemesh-grpc h2c-haproxy grpc-direct grpc-sidemesh grpc-haproxy"
ONLY=${BENCH_ONLY:-$ALL_SETUPS}
STARTED=$(date -u '+%Y-%m-%dT%H:%M:%SZ')
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sidemesh-bench.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
declare -A SKIP=() PROXY_PIDS=() PORT=()

# ---- tools under test ----------------------------------------------------

if [ ! -x bin/sidemesh ]; then
	log "bench: bin/sidemesh missing; running make build"
	make build >&2
fi
log "bench: building bench/loadgen, bench/backend, bench/grpcbench and bench/report"
go build -o "$TMP/loadgen" ./bench/loadgen
go build -o "$TMP/backend" ./bench/backend
go build -o "$TMP/grpcbench" ./bench/grpcbench
go build -o "$TMP/report" ./bench/report
LOADGEN=$TMP/loadgen
GRPCBENCH=$TMP/grpcbench
want() { [[ " $ONLY " == *" $1 "* ]]; }
want_prefix() { [[ " $ONLY " == *" $1"* ]]; }

install_peers() {
	local missing=()
	command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
	command -v nginx >/dev/null 2>&1 || missing+=(nginx)
	if want_prefix h2c- && ! command -v h2load >/dev/null 2>&1; then
		missing+=(nghttp2-client)
	fi
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ -n "${BENCH_NO_INSTALL:-}" ]; then
		log "bench: ${missing[*]} missing and BENCH_NO_INSTALL set"
		return 0
	fi
	if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
		log "bench: ${missing[*]} missing; cannot apt-get install (not root or no apt-get)"
		return 0
	fi
	log "bench: apt-get install -y ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >"$TMP/apt.log" 2>&1; then
		log "bench: apt-get install failed; trying apt-get update first"
		DEBIAN_FRONTEND=noninteractive apt-get update >>"$TMP/apt.log" 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$TMP/apt.log" 2>&1 ||
			log "bench: apt-get install failed: $(tail -n 1 "$TMP/apt.log")"
	fi
}
install_peers
HAPROXY=$(command -v haproxy || true)
NGINX=$(command -v nginx || true)
[ -z "$HAPROXY" ] && SKIP[haproxy]="haproxy not installed (apt-get install failed or disabled)" && SKIP[haproxy-tcp]=${SKIP[haproxy]}
[ -z "$NGINX" ] && SKIP[nginx]="nginx not installed (apt-get install failed or disabled)"
if [ -z "$HAPROXY" ]; then
	SKIP[h2c-haproxy]=${SKIP[haproxy]}
	SKIP[grpc-haproxy]=${SKIP[haproxy]}
fi
H2LOAD=$(command -v h2load || true)
if [ -z "$H2LOAD" ]; then
	for s in h2c-direct h2c-sidemesh h2c-sidemesh-grpc h2c-haproxy; do
		SKIP[$s]="h2load not installed (nghttp2-client; apt-get install failed or disabled)"
	done
fi

# ---- pinning ---------------------------------------------------------------
# Proxy alone on core 0; load generator and backend together on core 1.
PIN_PROXY=() PIN_LOAD=()
NCPU=$(nproc 2>/dev/null || echo 1)
if command -v taskset >/dev/null 2>&1 && [ "$NCPU" -ge 2 ]; then
	PIN_PROXY=(taskset -c 0)
	PIN_LOAD=(taskset -c 1)
	PINNING="proxy on core 0; load generator + backend on core 1"
else
	PINNING="not pinned (taskset missing or fewer than 2 CPUs)"
fi

# ---- processes -------------------------------------------------------------

read -r P_BACKEND P_SM P_SM_ADMIN P_SMT P_SMT_ADMIN P_HA P_HAT P_NGX \
	P_H2B P_H2SM P_H2SM_ADMIN P_H2SMG P_H2SMG_ADMIN P_H2HA \
	P_GRPCB P_GSM P_GSM_ADMIN P_GHA <<<"$("$LOADGEN" -free-ports 18)"
PORT=([direct]=$P_BACKEND [sidemesh]=$P_SM [sidemesh-tcp]=$P_SMT [haproxy]=$P_HA [haproxy-tcp]=$P_HAT [nginx]=$P_NGX
	[h2c-direct]=$P_H2B [h2c-sidemesh]=$P_H2SM [h2c-sidemesh-grpc]=$P_H2SMG [h2c-haproxy]=$P_H2HA
	[grpc-direct]=$P_GRPCB [grpc-sidemesh]=$P_GSM [grpc-haproxy]=$P_GHA)

# wait_ok ADDR PATH SECONDS [PROTO]: until one request answers 200 (PROTO
# h2c: over HTTP/2 prior knowledge; grpc: one gRPC unary call succeeds).
wait_ok() {
	local i probe=("$LOADGEN" -addr "$1" -path "$2" -probe)
	case "${4:-}" in
	h2c) probe+=(-h2c) ;;
	grpc) probe=("$GRPCBENCH" -addr "$1" -probe) ;;
	esac
	for ((i = 0; i < $3 * 20; i++)); do
		"${probe[@]}" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}

"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$TMP/backend" -addr "127.0.0.1:$P_BACKEND" -size 100 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
BACKEND_PID=$!
wait_ok "127.0.0.1:$P_BACKEND" / 5 || { log "bench: backend did not start"; cat "$TMP/backend.log" >&2; exit 1; }
declare -A AUX_PID=()
for s in $ALL_SETUPS; do AUX_PID[$s]=$BACKEND_PID; done

# The HTTP/2 backends, only when their setups run: a Go h2c server (the same
# backend with -h2c) and the grpc-go bench server, each GOMAXPROCS=1 on the
# load side's core.
if want_prefix h2c-; then
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$TMP/backend" -addr "127.0.0.1:$P_H2B" -size 100 -h2c >"$TMP/backend-h2c.log" 2>&1 &
	PIDS+=($!)
	for s in h2c-direct h2c-sidemesh h2c-sidemesh-grpc h2c-haproxy; do AUX_PID[$s]=$!; done
	wait_ok "127.0.0.1:$P_H2B" / 5 h2c || { log "bench: h2c backend did not start"; cat "$TMP/backend-h2c.log" >&2; exit 1; }
fi
if want_prefix grpc-; then
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$GRPCBENCH" -serve -addr "127.0.0.1:$P_GRPCB" -size 100 >"$TMP/grpc-server.log" 2>&1 &
	PIDS+=($!)
	for s in grpc-direct grpc-sidemesh grpc-haproxy; do AUX_PID[$s]=$!; done
	wait_ok "127.0.0.1:$P_GRPCB" / 5 grpc || { log "bench: gRPC server did not start"; cat "$TMP/grpc-server.log" >&2; exit 1; }
fi

cat >"$TMP/endpoints.yaml" <<EOF
services:
  backend:
    - {address: 127.0.0.1:$P_BACKEND, weight: 1}
  backend-h2c:
    - {address: 127.0.0.1:$P_H2B, weight: 1}
  backend-grpc:
    - {address: 127.0.0.1:$P_GRPCB, weight: 1}
EOF

start_sidemesh() { # name protocol port admin [service [probe-proto]]
	cat >"$TMP/$1.yaml" <<EOF
node: bench-$1
admin: 127.0.0.1:$4
log_level: warn
drain: {timeout: 100ms}
discovery:
  file: $TMP/endpoints.yaml
upstreams:
  - service: ${5:-backend}
    listen: 127.0.0.1:$3
    protocol: $2
EOF
	"${PIN_PROXY[@]}" env GOMAXPROCS=1 "$ROOT/bin/sidemesh" run -c "$TMP/$1.yaml" >"$TMP/$1.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	if wait_ok "127.0.0.1:$4" /ready 10 && wait_ok "127.0.0.1:$3" / 5 "${6:-}"; then
		PROXY_PIDS[$1]=$pid
	else
		SKIP[$1]="sidemesh did not become ready: $(tail -n 2 "$TMP/$1.log" | tr '\n' ' ')"
	fi
}

start_haproxy() { # name mode port [backend-port [h2c|grpc]]: h2c/grpc = proto h2 both sides
	local backend=${4:-$P_BACKEND} h2=${5:-} proto=
	[ -n "$h2" ] && proto=" proto h2"
	cat >"$TMP/$1.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode $2
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
EOF
	if [ "$2" = http ]; then
		cat >>"$TMP/$1.cfg" <<EOF
    option http-keep-alive
    http-reuse always
EOF
	fi
	cat >>"$TMP/$1.cfg" <<EOF
frontend fe
    bind 127.0.0.1:$3$proto
    default_backend be
backend be
    server s1 127.0.0.1:$backend$proto
EOF
	"${PIN_PROXY[@]}" "$HAPROXY" -db -f "$TMP/$1.cfg" >"$TMP/$1.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	if wait_ok "127.0.0.1:$3" / 5 "$h2"; then
		PROXY_PIDS[$1]=$pid
	else
		SKIP[$1]="haproxy did not start: $(tail -n 2 "$TMP/$1.log" | tr '\n' ' ')"
	fi
}

start_nginx() { # port
	mkdir -p "$TMP/nginx"
	cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
}
EOF
	"${PIN_PROXY[@]}" "$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	if wait_ok "127.0.0.1:$1" / 5; then
		# master + worker: CPU and RSS are summed over both.
		PROXY_PIDS[nginx]="$pid,$(pgrep -d, -P "$pid")"
	else
		SKIP[nginx]="nginx did not start: $(tail -n 2 "$TMP/nginx/error.log" "$TMP/nginx.log" 2>/dev/null | tr '\n' ' ')"
	fi
}

want sidemesh && start_sidemesh sidemesh http "$P_SM" "$P_SM_ADMIN"
want sidemesh-tcp && start_sidemesh sidemesh-tcp tcp "$P_SMT" "$P_SMT_ADMIN"
want h2c-sidemesh && start_sidemesh h2c-sidemesh http "$P_H2SM" "$P_H2SM_ADMIN" backend-h2c h2c
want h2c-sidemesh-grpc && start_sidemesh h2c-sidemesh-grpc grpc "$P_H2SMG" "$P_H2SMG_ADMIN" backend-h2c h2c
want grpc-sidemesh && start_sidemesh grpc-sidemesh grpc "$P_GSM" "$P_GSM_ADMIN" backend-grpc grpc
if [ -n "$HAPROXY" ]; then
	want haproxy && start_haproxy haproxy http "$P_HA"
	want haproxy-tcp && start_haproxy haproxy-tcp tcp "$P_HAT"
	want h2c-haproxy && start_haproxy h2c-haproxy http "$P_H2HA" "$P_H2B" h2c
	want grpc-haproxy && start_haproxy grpc-haproxy http "$P_GHA" "$P_GRPCB" grpc
fi
[ -n "$NGINX" ] && want nginx && start_nginx "$P_NGX"

# ---- measurement -------------------------------------------------------------

RES=$TMP/results
mkdir -p "$RES"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

measure() { # name round
	case $1 in
	h2c-*) measure_h2c "$@"; return ;;
	grpc-*) measure_grpc "$@"; return ;;
	esac
	local name=$1 r=$2 pids=${PROXY_PIDS[$1]:-}
	local pidflag=(-aux-pids "$BACKEND_PID")
	[ -n "$pids" ] && pidflag+=(-pids "$pids")
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$LOADGEN" -addr "127.0.0.1:${PORT[$name]}" -label "$name" \
		-mode closed -c "$CONNS" -warmup "$WARMUP" -d "$DUR" -clk-tck "$CLK_TCK" "${pidflag[@]}" \
		>"$RES/$name.$r.closed" 2>>"$RES/$name.err"
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$LOADGEN" -addr "127.0.0.1:${PORT[$name]}" -label "$name" \
		-mode open -rate "$RATE" -c "$OPEN_CONNS" -warmup "$WARMUP" -d "$DUR" -clk-tck "$CLK_TCK" "${pidflag[@]}" \
		>"$RES/$name.$r.open" 2>>"$RES/$name.err"
	log "  $(cut -d' ' -f1,5-8 "$RES/$name.$r.closed") | open: $(cut -d' ' -f8-13 "$RES/$name.$r.open")"
}

# val FILE KEY: one value of a result line.
val() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" "$1"; }
# showkeys FILE KEY...: the named key=value pairs of a result line.
showkeys() {
	local f=$1 k out=()
	shift
	for k in "$@"; do out+=("$k=$(val "$f" "$k")"); done
	echo "${out[*]}"
}

measure_h2c() { # name round: h2load closed loop
	local name=$1 r=$2 pids=${PROXY_PIDS[$1]:-}
	local pidflag=(-aux-pids "${AUX_PID[$name]}")
	[ -n "$pids" ] && pidflag+=(-pids "$pids")
	"${PIN_LOAD[@]}" "$LOADGEN" -mode h2load -h2load "$H2LOAD" -addr "127.0.0.1:${PORT[$name]}" -label "$name" \
		-c "$H2_CONNS" -m "$H2_STREAMS" -warmup "$WARMUP" -d "$DUR" -clk-tck "$CLK_TCK" "${pidflag[@]}" \
		>"$RES/$name.$r.h2load" 2>>"$RES/$name.err" || true
	log "  $name $(showkeys "$RES/$name.$r.h2load" errors rps cpu_us_per_req)"
}

measure_grpc() { # name round: unary closed loop, unary at $RATE, streaming
	local name=$1 r=$2 pids=${PROXY_PIDS[$1]:-}
	local common=(-addr "127.0.0.1:${PORT[$name]}" -label "$name" -warmup "$WARMUP" -d "$DUR" -clk-tck "$CLK_TCK" -aux-pids "${AUX_PID[$name]}")
	[ -n "$pids" ] && common+=(-pids "$pids")
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$GRPCBENCH" "${common[@]}" -mode closed -c "$GRPC_CONNS" -m "$GRPC_STREAMS" \
		>"$RES/$name.$r.closed" 2>>"$RES/$name.err" || true
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$GRPCBENCH" "${common[@]}" -mode open -rate "$RATE" -c "$GRPC_CONNS" -m "$GRPC_STREAMS" \
		>"$RES/$name.$r.open" 2>>"$RES/$name.err" || true
	"${PIN_LOAD[@]}" env GOMAXPROCS=1 "$GRPCBENCH" "${common[@]}" -mode stream -c 1 -m "$STREAMS" -chunk "$STREAM_CHUNK" \
		>"$RES/$name.$r.stream" 2>>"$RES/$name.err" || true
	log "  $name unary $(showkeys "$RES/$name.$r.closed" errors rps cpu_us_per_req) | open: $(showkeys "$RES/$name.$r.open" p50_us p99_us cpu_us_per_req) | stream: $(showkeys "$RES/$name.$r.stream" mb_per_s cpu_us_per_mb)"
}

SETUPS=() ALL=()
for s in $ALL_SETUPS; do
	want "$s" || continue
	if [ -n "${SKIP[$s]:-}" ]; then
		log "bench: skipping $s: ${SKIP[$s]}"
		continue
	fi
	ALL+=("$s")
	case $s in h2c-* | grpc-*) ;; *) SETUPS+=("$s") ;; esac
done

for ((r = 1; r <= ROUNDS; r++)); do
	log "bench: round $r/$ROUNDS ($PINNING)"
	for s in "${ALL[@]}"; do
		measure "$s" "$r"
	done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ------------------------------------------------------------------

# best KEY max|min MODE SETUP: the best value over the rounds.
best() {
	local f v out=()
	for f in "$RES/$4".*."$3"; do
		v=$(val "$f" "$1")
		[ -n "$v" ] && out+=("$v")
	done
	[ ${#out[@]} -eq 0 ] && { echo nan; return; }
	if [ "$2" = max ]; then printf '%s\n' "${out[@]}" | sort -g | tail -n 1; else printf '%s\n' "${out[@]}" | sort -g | head -n 1; fi
}
# best_file KEY max|min MODE SETUP: the round file holding the best value.
best_file() {
	local f
	for f in "$RES/$4".*."$3"; do echo "$(val "$f" "$1") $f"; done | sort -g | if [ "$2" = max ]; then tail -n 1; else head -n 1; fi | cut -d" " -f2
}
sum() { # KEY MODE SETUP: summed over rounds
	local f t=0
	for f in "$RES/$3".*."$2"; do t=$((t + $(val "$f" "$1"))); done
	echo "$t"
}

HAPROXY_VERSION= NGINX_VERSION=
[ -n "$HAPROXY" ] && HAPROXY_VERSION=$("$HAPROXY" -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p')
[ -n "$NGINX" ] && NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
declare -A LABEL=(
	[direct]="direct (load generator → backend)"
	[sidemesh]="sidemesh (\`protocol: http\`, GOMAXPROCS=1)"
	[haproxy]="HAProxy${HAPROXY_VERSION:+ $HAPROXY_VERSION} (1 thread, mode http, http-reuse always)"
	[nginx]="nginx${NGINX_VERSION:+ $NGINX_VERSION} (1 worker, upstream keepalive)"
	[sidemesh-tcp]="sidemesh (\`protocol: tcp\`, GOMAXPROCS=1)"
	[haproxy-tcp]="HAProxy (1 thread, mode tcp)"
	[h2c-direct]="direct (h2load → h2c backend)"
	[h2c-sidemesh]="sidemesh (\`protocol: http\`, h2c both sides, GOMAXPROCS=1)"
	[h2c-sidemesh-grpc]="sidemesh (\`protocol: grpc\`, GOMAXPROCS=1)"
	[h2c-haproxy]="HAProxy${HAPROXY_VERSION:+ $HAPROXY_VERSION} (1 thread, proto h2 both sides)"
	[grpc-direct]="direct (grpc-go client → grpc-go server)"
	[grpc-sidemesh]="sidemesh (\`protocol: grpc\`, GOMAXPROCS=1)"
	[grpc-haproxy]="HAProxy${HAPROXY_VERSION:+ $HAPROXY_VERSION} (1 thread, proto h2 both sides)"
)
# KIND[setup]: the kind of run its throughput comes from.
declare -A KIND=()
for s in $ALL_SETUPS; do
	case $s in h2c-*) KIND[$s]=h2load ;; *) KIND[$s]=closed ;; esac
done
H2LOAD_VERSION=
[ -n "$H2LOAD" ] && H2LOAD_VERSION=$("$H2LOAD" --version 2>/dev/null | sed -n 's|.*nghttp2/\([0-9.]*\).*|\1|p')
SIDEMESH_VERSION=$("$ROOT/bin/sidemesh" version 2>/dev/null | head -n 1)
GO_VERSION=$(go version | cut -d' ' -f3)
GRPC_GO_VERSION=$(go list -m -f '{{.Version}}' google.golang.org/grpc 2>/dev/null || true)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)

# The JSON results, the latency chart and the h2c and gRPC tables.
REPORT_ARGS=(-runs "$RES" -started "$STARTED" -cpus "$NCPU" -cpu-model "$CPU_MODEL" -pinning "$PINNING"
	-load-before "$LOAD_BEFORE" -load-after "$LOAD_AFTER"
	-version "sidemesh=$SIDEMESH_VERSION" -version "go=$GO_VERSION" -version "grpc-go=$GRPC_GO_VERSION"
	-version "haproxy=$HAPROXY_VERSION" -version "nginx=$NGINX_VERSION" -version "h2load=$H2LOAD_VERSION"
	-setting "rounds=$ROUNDS" -setting "duration=$DUR" -setting "warmup=$WARMUP" -setting "conns=$CONNS"
	-setting "rate=$RATE" -setting "open_conns=$OPEN_CONNS" -setting "h2_conns=$H2_CONNS" -setting "h2_streams=$H2_STREAMS"
	-setting "grpc_conns=$GRPC_CONNS" -setting "grpc_streams=$GRPC_STREAMS" -setting "stream_streams=$STREAMS"
	-setting "stream_chunk=$STREAM_CHUNK"
	-json "$TMP/results.json" -svg "$TMP/latency.svg" -md "$TMP/h2.md")
for s in $ALL_SETUPS; do
	want "$s" || continue
	REPORT_ARGS+=(-setup "$s=${LABEL[$s]}")
	[ -n "${SKIP[$s]:-}" ] && REPORT_ARGS+=(-skip "$s=${SKIP[$s]}")
done
"$TMP/report" "${REPORT_ARGS[@]}"

D_RPS=nan D_P50=nan D_P99=nan
if want direct && [ -z "${SKIP[direct]:-}" ]; then
	D_RPS=$(best rps max closed direct)
	D_P50=$(best p50_us min open direct)
	D_P99=$(best p99_us min open direct)
fi

row() {
	local s=$1
	local rps cpu cpuo sys syso cores p50 p99 rss errs f
	rps=$(best rps max closed "$s")
	p50=$(best p50_us min open "$s")
	p99=$(best p99_us min open "$s")
	errs=$(($(sum errors closed "$s") + $(sum errors open "$s") + $(sum dropped open "$s")))
	if [ "$s" = direct ]; then
		printf '| %s | %.0f | 1.00 | – | – | – | %.3f ms | %.3f ms | – | %s |\n' \
			"${LABEL[$s]}" "$rps" "$(awk -v a="$p50" 'BEGIN{print a/1000}')" "$(awk -v a="$p99" 'BEGIN{print a/1000}')" "$errs"
		return
	fi
	f=$(best_file cpu_us_per_req min closed "$s")
	cpu=$(val "$f" cpu_us_per_req) sys=$(val "$f" sys_us_per_req)
	f=$(best_file cpu_us_per_req min open "$s")
	cpuo=$(val "$f" cpu_us_per_req) syso=$(val "$f" sys_us_per_req)
	cores=$(best cpu_cores max closed "$s")
	rss=$(best rss_kb max closed "$s")
	awk -v l="${LABEL[$s]}" -v rps="$rps" -v drps="$D_RPS" -v cpu="$cpu" -v cpuo="$cpuo" -v sys="$sys" -v syso="$syso" -v cores="$cores" \
		-v p50="$p50" -v p99="$p99" -v d50="$D_P50" -v d99="$D_P99" -v rss="$rss" -v errs="$errs" 'BEGIN{
		printf "| %s | %.0f | %.2f | %.1f µs (%.0f user + %.0f sys) | %.1f µs (%.0f + %.0f) | %.2f | %.3f ms (%+.3f) | %.3f ms (%+.3f) | %.1f MB | %s |\n",
			l, rps, rps/drps, cpu, cpu-sys, sys, cpuo, cpuo-syso, syso, cores, p50/1000, (p50-d50)/1000, p99/1000, (p99-d99)/1000, rss/1024, errs }'
}

{
	echo "## sidemesh side-by-side benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	if [ ${#SETUPS[@]} -gt 0 ]; then
	echo "HTTP/1.1 over loopback, 100-byte response body, keep-alive. $PINNING."
	echo "Throughput: closed loop, $CONNS connections, $DUR per run. Latency: open loop at $RATE rps,"
	echo "$OPEN_CONNS connections (= max in flight), $DUR per run; *added* = proxied minus direct."
	echo "Best of $ROUNDS rounds per cell. Proxy CPU per request = the proxy's user+system time"
	echo "(/proc/PID/stat) over the window divided by the requests completed in it."
	echo
	echo "| setup | req/s (closed loop) | vs direct | proxy CPU per request, saturated (user + sys µs) | proxy CPU per request at $RATE rps | proxy cores busy (saturated) | p50 at $RATE rps (added vs direct) | p99 at $RATE rps (added vs direct) | proxy RSS | errors |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	for s in "${SETUPS[@]}"; do row "$s"; done
	for s in direct sidemesh haproxy nginx sidemesh-tcp haproxy-tcp; do
		want "$s" && [ -n "${SKIP[$s]:-}" ] && echo "| ${LABEL[$s]:-$s} | skipped: ${SKIP[$s]} |||||||||"
	done
	echo
	fi
	cat "$TMP/h2.md"
	echo "Where the time went in the saturated run of the round with the best throughput (cores busy over the window):"
	echo
	echo "| setup | req/s | proxy | load generator + backend | core 0 (all work) | core 1 (all work) |"
	echo "|---|---|---|---|---|---|"
	for s in "${ALL[@]}"; do
		f=$(best_file rps max "${KIND[$s]}" "$s")
		[ -n "$f" ] || continue
		pc=$(val "$f" cpu_cores)
		busy=$(val "$f" cpu_busy)
		printf '| %s | %.0f | %s | %s | %s | %s |\n' "$s" "$(val "$f" rps)" "${pc:-–}" \
			"$(val "$f" load_cores)" "$(cut -d/ -f1 <<<"$busy")" "$(cut -s -d/ -f2 <<<"$busy")"
	done
	echo
	echo "Machine: $NCPU × $CPU_MODEL, load average $LOAD_BEFORE before, $LOAD_AFTER after"
	echo "(the cores may be shared with other work; see bench/README.md on noise)."
	echo "Versions: $SIDEMESH_VERSION, $GO_VERSION${GRPC_GO_VERSION:+, grpc-go $GRPC_GO_VERSION}${H2LOAD_VERSION:+, h2load $H2LOAD_VERSION}."
	echo
	echo "<details><summary>raw runs (loadgen and grpcbench output)</summary>"
	echo
	echo '```'
	for s in "${ALL[@]}"; do
		cat "$RES/$s".*.* 2>/dev/null || true
	done
	echo '```'
	echo "</details>"
} >"$TMP/table.md"

for s in "${ALL[@]}"; do
	if [ -s "$RES/$s.err" ]; then
		log "bench: $s reported errors:"
		sort "$RES/$s.err" | uniq -c | head -n 5 >&2
	fi
done
mkdir -p bench/results
cp "$TMP/table.md" bench/results/latest.md
cp "$TMP/results.json" bench/results/latest.json
cp "$TMP/latency.svg" bench/results/latest.svg
echo
cat "$TMP/table.md"
echo
echo "(written to bench/results/latest.md, latest.json and latest.svg)"
