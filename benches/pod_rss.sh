#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup is called through a trap
# The memory and CPU of one Kubernetes pod's gateway, for the requests and limits of
# deploy/kubernetes/deployment.yaml (README "Run several nodes", Sizing). Loopback only.
#
#   benches/pod_rss.sh
#
# 1. builds the release binary (SKIP_BUILD=1: use the existing one);
# 2. runs it with the config of deploy/kubernetes/configmap.yaml, changed only where a pod and
#    this machine differ: loopback ports, its absolute paths moved under a temp dir, the S3
#    source replaced by an fs source of the same name (the [cache] applies to both), [redis] on
#    a local redis-server with the password from a file (no TLS), random keys of the right form,
#    and the rate limits lifted (one client and one subject make every request here); so the
#    256 MiB memory tier, the encrypted disk tier and the Redis stores are all in play;
# 3. idle: RSS a few seconds after /readyz answers;
# 4. load: wrk (CONNECTIONS connections, DURATION s) on a 64 KiB object: req/s, the gateway's
#    CPU seconds per 1,000 requests, peak RSS;
# 5. slow clients: MEM_CLIENTS curls at MEM_RATE, each from its own offset of a 1 GiB object for
#    MEM_SECONDS (together they touch more than the memory tier holds): peak RSS and VmHWM.
#
# Environment: DURATION [10] CONNECTIONS [50] THREADS [2] WORKERS [2] (TOKIO_WORKER_THREADS,
# the pod's CPU limit) MEM_CLIENTS [200] MEM_SECONDS [20] MEM_RATE [1M] SKIP_BUILD [0]
# CACHE_DISK [1] (0: the memory tier only, to tell the tiers' shares apart) BIN [release binary]
# Needs: python3 with PyYAML (.venv-k8s from ./tests/run), redis-server, wrk, curl, openssl.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
MEM_CLIENTS=${MEM_CLIENTS:-200}
MEM_SECONDS=${MEM_SECONDS:-20}
MEM_RATE=${MEM_RATE:-1M}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHE_DISK=${CACHE_DISK:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=${BIN:-$TARGET_DIR/release/bucketgate}
PY="$REPO/.venv-k8s/bin/python"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'pod_rss.sh: error: %s\n' "$*" >&2
    exit 1
}

declare -a PIDS=()
TMP=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -z "$TMP" || -n "${KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT

for tool in redis-server wrk curl openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
[[ -x "$PY" ]] || die "$PY is missing: run ./tests/run once (it installs .venv-k8s)"
if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building the release binary"
    cargo build --release --locked --bin bucketgate >&2
fi
[[ -x "$BIN" ]] || die "$BIN is missing"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

TMP=$(mktemp -d)
DATA_PORT=$(free_port)
ADMIN_PORT=$(free_port)
REDIS_PORT=$(free_port)
mkdir -p "$TMP/data" "$TMP/etc/bucketgate/tls" "$TMP/etc/bucketgate/secrets" "$TMP/etc/bucketgate/config"
head -c 65536 /dev/urandom >"$TMP/data/64k.bin"
truncate -s 1G "$TMP/data/1g.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$TMP/etc/bucketgate/tls/tls.key" \
    -out "$TMP/etc/bucketgate/tls/tls.crt" 2>/dev/null

# The ConfigMap's config and the Secret's keys, laid out as in the pod (see the header).
"$PY" - "$REPO/deploy/kubernetes" "$TMP" "$DATA_PORT" "$ADMIN_PORT" "$REDIS_PORT" "$CACHE_DISK" <<'EOF'
import os, re, secrets, sys, yaml
k8s, tmp, data_port, admin_port, redis_port, cache_disk = sys.argv[1:]
docs = [d for f in ("configmap.yaml", "secret.yaml") for d in yaml.safe_load_all(open(os.path.join(k8s, f))) if d]
text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.toml"]
text = text.replace('"0.0.0.0:8443"', f'"127.0.0.1:{data_port}"')
text = text.replace('"0.0.0.0:9090"', f'"127.0.0.1:{admin_port}"')
text = text.replace('"/', f'"{tmp}/').replace('"file:/', f'"file:{tmp}/')
text, n = re.subn(r'(\[sources\.(\w+)\]\n)(?:[^\[\n].*\n|#.*\n)*', lambda m: f'{m.group(1)}kind = "fs"\nroot = "{tmp}/data"\n\n', text, count=1)
assert n == 1, "no source table"
text, n = re.subn(r'^url = "rediss?://.*"$', f'url = "redis://127.0.0.1:{redis_port}/0"', text, flags=re.M)
assert n == 1, "no [redis] url"
text = re.sub(r'^ca_file = .*\n', '', text, flags=re.M)
# One client and one subject make all the requests here: lift their quotas (the defaults would
# answer most of wrk's requests 429, measuring refusals instead of reads).
if cache_disk == "0":
    text, n = re.subn(r'^(disk_dir|disk_bytes|key|key_id) = .*\n', '', text, flags=re.M)
    assert n == 4, "the [cache] disk keys"
assert "[rate_limits]" not in text
text += "\n[rate_limits]\n" + "".join(f"{k} = 1000000\n" for k in ("per_ip_rps", "per_ip_burst", "per_subject_rps", "per_subject_burst"))
open(os.path.join(tmp, "etc/bucketgate/config/config.toml"), "w").write(text)
keys = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "bucketgate-keys")
for key in keys["stringData"]:
    open(os.path.join(tmp, "etc/bucketgate/secrets", key), "w").write(secrets.token_hex(32))
EOF
CONFIG="$TMP/etc/bucketgate/config/config.toml"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --requirepass "$(cat "$TMP/etc/bucketgate/secrets/redis-password")" >"$TMP/redis.log" 2>&1 &
PIDS+=("$!")

log "gateway: the ConfigMap's config on 127.0.0.1:$DATA_PORT (admin $ADMIN_PORT), redis on $REDIS_PORT"
(
    cd "$TMP"
    export RUST_LOG=warn TOKIO_WORKER_THREADS=$WORKERS
    exec "$BIN" serve --config "$CONFIG" --log-format json
) >"$TMP/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$TMP/gw.log" >&2; die "the gateway exited"; }
    sleep 0.2
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { cat "$TMP/gw.log" >&2; die "not ready"; }
source=$(sed -n 's/^\[sources\.\([a-z0-9_-]*\)\]$/\1/p' "$CONFIG" | head -1)
sign() { "$BIN" sign --config "$CONFIG" --source "$source" --key "$1" --ttl 1h --base-url "https://127.0.0.1:$DATA_PORT"; }
URL_64K=$(sign 64k.bin)
URL_1G=$(sign 1g.bin)
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/etc/bucketgate/tls/tls.crt" "$URL_64K")
[[ "$code" == 200 ]] || { cat "$TMP/gw.log" >&2; die "a signed read answered $code"; }
sleep 3
IDLE=$(rss_kib "$GW_PID")
log "idle RSS $((IDLE / 1024)) MiB"

# Request load: wrk on the 64 KiB object (a memory-tier hit after the first read).
HZ=$(getconf CLK_TCK)
t0=$(cpu_ticks "$GW_PID")
wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" "$URL_64K" >"$TMP/wrk.out" 2>&1 &
WRK=$!
PIDS+=("$WRK")
PEAK_LOAD=$IDLE
while kill -0 "$WRK" 2>/dev/null; do
    now=$(rss_kib "$GW_PID")
    ((now > PEAK_LOAD)) && PEAK_LOAD=$now
    sleep 0.25
done
wait "$WRK" || true
t1=$(cpu_ticks "$GW_PID")
REQS=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk.out")
TOTAL=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk.out")
CPU_PER_1K=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v q="${TOTAL:-0}" 'BEGIN { if (q == 0) print "-"; else printf "%.3f", t / hz * 1000 / q }')
log "wrk: ${REQS:-?} req/s, ${NON2XX:-0} non-2xx, CPU ${CPU_PER_1K} s per 1000 requests, peak RSS $((PEAK_LOAD / 1024)) MiB"

# Slow clients, each from its own offset of the 1 GiB object.
SPREAD=$((1024 * 1048576 / MEM_CLIENTS))
declare -a CLIENTS=()
for i in $(seq "$MEM_CLIENTS"); do
    curl -s -o /dev/null --cacert "$TMP/etc/bucketgate/tls/tls.crt" --limit-rate "$MEM_RATE" \
        --max-time "$MEM_SECONDS" -r "$(((i - 1) * SPREAD))-" -w '%{http_code}\n' "$URL_1G" \
        >"$TMP/slow.$i" 2>/dev/null &
    CLIENTS+=("$!")
    PIDS+=("$!")
done
PEAK_SLOW=$IDLE
deadline=$((SECONDS + MEM_SECONDS + 5))
while ((SECONDS < deadline)); do
    now=$(rss_kib "$GW_PID")
    ((now > PEAK_SLOW)) && PEAK_SLOW=$now
    alive=0
    for pid in "${CLIENTS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
    ((alive == 0)) && break
    sleep 0.25
done
for pid in "${CLIENTS[@]}"; do wait "$pid" 2>/dev/null || true; done
OK=$(cat "$TMP"/slow.* | grep -c '^206$' || true)
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status")
kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited during the test"

printf '\npod RSS (config of deploy/kubernetes/configmap.yaml, %s worker threads):\n' "$WORKERS"
printf '  idle:                       %4d MiB\n' $((IDLE / 1024))
printf '  wrk %s conns, 64 KiB, %ss: %4d MiB peak; %s req/s; %s CPU-s per 1000 requests\n' \
    "$CONNECTIONS" "$DURATION" $((PEAK_LOAD / 1024)) "${REQS:-?}" "$CPU_PER_1K"
printf '  %s slow clients at %s/s:  %4d MiB peak (%s got 206); VmHWM %d MiB\n' \
    "$MEM_CLIENTS" "$MEM_RATE" $((PEAK_SLOW / 1024)) "$OK" $((HWM / 1024))
