#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and helpers are called through traps and indirection
# Load test: bucketgate side by side with peers, in one run, on loopback only.
#
#   benches/load.sh
#
# 1. builds bucketgate (`cargo build --release --locked`);
# 2. makes a temp dir with a 64 KiB and a 1 MiB random file and a 1 GiB sparse file, and a
#    self-signed ECDSA P-256 certificate that both TLS servers use;
# 3. fs section: nginx (TLS, keep-alive, sendfile on, worker_processes = WORKERS) and bucketgate
#    (fs source, TOKIO_WORKER_THREADS = WORKERS) serve the same files; wrk (HTTP/1.1) and
#    h2load (HTTP/2) drive each for DURATION seconds, back to back;
# 4. s3 section: s3s-fs serves the same small files as an S3 bucket; bucketgate (s3 source,
#    SigV4-signed) vs nginx proxying to s3s-fs vs reading s3s-fs directly (plain http);
# 5. memory: a fresh bucketgate, MEM_CLIENTS slow clients (curl --limit-rate MEM_RATE) each
#    reading the 1 GiB object for MEM_SECONDS; prints peak RSS above idle;
# 6. net section (issue 3): two gateways side by side, identical but for [network]: 10,000 allow
#    and deny rules (mixed IPv4/IPv6, 127.0.0.0/8 among the allow rules) vs the one allow rule
#    127.0.0.0/8; wrk on the 64 KiB file, the two alternated for AB_ROUNDS rounds; prints the
#    mean req/s of each, each gateway's CPU time per request (from /proc: steadier than req/s
#    when the machine is busy), and the ratios (goal: the 10k-rule stage costs under 3%);
# 7. auth section (issue 4; not in the default SECTIONS: it builds an old commit once): the
#    gateway at BASELINE_COMMIT, the last one before the identity stage existed, serves the
#    64 KiB file unauthenticated, next to today's gateway serving it to signed URLs (audit off,
#    as the baseline has none; and audit on stdout, as in the fs section); alternated likewise,
#    same figures, ratio signed/unauthenticated (goal >= 0.9). The baseline lacks everything
#    merged since (identity, authorization, CORS, audit), so the ratio bounds the cost of the
#    signed URL from above;
# 8. saml section (issue 5; not in the default SECTIONS): moto_server from ./.venv as STS and S3
#    (IAM enforcement off) with the 64 KiB file in one bucket, the test IdP
#    tests/support/saml_idp.py, and one gateway with [sts] on moto, [saml] trusting the IdP and
#    two s3 sources on that bucket: `static` (fixed keys) and `saml` (credentials = "saml"). curl
#    signs in once (login -> IdP /sso -> its form posted to the ACS -> session cookie); then wrk
#    reads /o/static/64k.bin (signed URL) and /o/saml/64k.bin (session cookie), alternated
#    likewise. moto (Python) bounds req/s, so the figure is the gateway's CPU time per request
#    (its CPU delta over each variant's runs): ratio static/saml CPU (goal >= 0.9), and the STS
#    calls moto saw (want 1: the sign-in);
# 9. s3lat section (issue 12): a delaying TCP proxy (python3 asyncio, written to the temp dir)
#    in front of each S3 server holds back every piece of data the store sends by DELAY_MS, so
#    each response's first byte arrives DELAY_MS late (one-way latency on the store's answers;
#    requests, connection set-up and throughput are not slowed, as with a distant region on a
#    warm keep-alive connection). S3 passthrough, cache off: time to first byte of 64k.bin,
#    p50 of LAT_RUNS keep-alive requests (curl time_starttransfer - time_pretransfer: request
#    sent -> first byte, so the gateway's local TLS handshake is not counted), bucketgate vs
#    reading the store directly through the same proxy (goal: at most 1.1x); then wrk throughput
#    of bucketgate vs nginx proxying the same delayed store (goal: at least 0.9x) and vs direct;
# 10. cache section (issue 12; not in the default SECTIONS until the cache is merged: the
#    gateway must know `[cache]`, else the section stops with a clear message). Gateways with
#    `[cache]` in front of the delayed store (source `s3lat`; the fs source opts out with
#    `cache = false`), signed URLs and audit on as in the fs section:
#    - memory hit: 64k.bin, warmed, wrk (h1) and h2load (h2) vs nginx serving the same file
#      (goal: at least 1.0x);
#    - disk hit: 1m.bin through a gateway whose memory tier is tiny (CACHE_TINY_MEMORY_BYTES,
#      chunk CACHE_TINY_CHUNK_BYTES), so hits come from the (encrypted, CACHE_ENCRYPT) disk
#      tier, vs the same gateway reading 1m.bin from the uncached fs source (goal: at least
#      0.9x);
#    - cold vs warm: TTFB p50 of LAT_COLD_KEYS distinct 64 KiB objects read once each (cold:
#      origin latency DELAY_MS), then of LAT_RUNS warm reads (goal: warm under 2 ms);
#    - memory: the mem section's MEM_CLIENTS slow clients through the cache, each reading a
#      CACHE_BIG_MIB object from its own offset (spread evenly, so together they touch more than
#      the memory tier holds) (goal: RSS above idle within CACHE_MEMORY_BYTES + 64 MiB);
# 11. redis section (issue 15; not in the default SECTIONS): a redis-server on loopback (no
#    persistence) and two gateways identical but for [redis]: one with today's memory stores,
#    one keeping its state in that Redis (rate limits through Redis with local leases, and
#    whatever other stores the build keeps there, e.g. revocations), expected_nodes =
#    REDIS_NODES; quotas REDIS_RPS per IP and per subject (rps = burst) on both. wrk on the 64 KiB
#    signed URL, the two alternated for AB_ROUNDS rounds; prints the mean req/s and CPU per
#    request of each, the ratio redis/memory (goal >= 0.9), and the commands Redis processed per
#    1,000 requests of the redis gateway (the fast path: most requests never wait on Redis);
# 12. prints one table with req/s, MiB/s, latency and the bucketgate/peer ratios, then the
#    latency, cache and memory lines with their goals. Latency figures on a shared machine are
#    noisy: compare within one run.
#
# Environment (defaults in brackets):
#   DURATION [10] seconds per measurement   CONNECTIONS [50]   THREADS [2] client threads
#   WORKERS [2] nginx worker_processes and bucketgate runtime threads
#   H2_STREAMS [10] concurrent streams per h2load connection
#   MEM_CLIENTS [200]  MEM_SECONDS [20]  MEM_RATE [1M]
#   SECTIONS ["fs s3 mem net s3lat"]  any subset of "fs s3 mem net s3lat cache auth saml redis"
#   DELAY_MS [20] one-way latency the delaying proxy adds to the store's answers (s3lat, cache)
#   LAT_RUNS [50] keep-alive requests per TTFB figure   LAT_COLD_KEYS [20] cold objects (cache)
#   CACHE_MEMORY_BYTES [134217728] memory tier of the cache section's gateways (128 MiB)
#   CACHE_TINY_MEMORY_BYTES [1048576] CACHE_TINY_CHUNK_BYTES [262144] the disk-hit gateway's
#                    memory tier (its minimum) and chunk size; DISK_OBJECTS [8] 1 MiB objects it
#                    reads round robin   CACHE_DISK_BYTES [1073741824] its disk tier
#   CACHE_ENCRYPT [1] disk tier encrypted with a random key (env:BENCH_CACHE_KEY, 32 bytes as
#                    64 hex digits, key_id "k1"); 0 writes `encrypt = false`
#   CACHE_BIG_MIB [512] size of the object the cache's memory test streams
#   AB_ROUNDS [2] rounds of the net, auth, saml and redis comparisons (each variant: DURATION s a round)
#   REDIS_RPS [1000000] per-IP and per-subject rps and burst of the redis section's gateways
#   REDIS_NODES [3] their [redis] expected_nodes (sizes the leases: min(rps, burst) / (10 * n))
#   BASELINE_COMMIT [61e0984] the unauthenticated baseline of the auth section; its binary is
#                    built from `git archive` in a temp dir, cached in target/bench-baseline/
#   SKIP_GATEWAY=1   measure the peers only (when bucketgate does not build or start)
#   SKIP_BUILD=1     use the existing target/release/bucketgate
#   BENCH_RUST_LOG [warn]  RUST_LOG for bucketgate (per-request logs would measure the logger)
#   S3_SERVER [auto]  s3s-fs, moto, or auto (s3s-fs, installing it if needed, else moto)
#   KEEP_TMP=1       keep the temp dir (logs, configs) for inspection
# Needs: nginx, wrk, nghttp2-client (h2load), curl, openssl, python3 (installed with apt-get
# when missing and running as root); s3s-fs 0.14 (cargo install, pinned: newer needs rustc 1.96),
# falling back to moto_server from ./.venv (see ./tests/run) for the s3 section; the saml section
# needs ./.venv (moto_server, and signxml for the IdP); the redis section needs redis-server and
# redis-cli (Debian's redis-server, installed when missing and running as root).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
H2_STREAMS=${H2_STREAMS:-10}
MEM_CLIENTS=${MEM_CLIENTS:-200}
MEM_SECONDS=${MEM_SECONDS:-20}
MEM_RATE=${MEM_RATE:-1M}
SECTIONS=${SECTIONS:-"fs s3 mem net s3lat"}
AB_ROUNDS=${AB_ROUNDS:-2}
REDIS_RPS=${REDIS_RPS:-1000000}
REDIS_NODES=${REDIS_NODES:-3}
BASELINE_COMMIT=${BASELINE_COMMIT:-61e0984}
SKIP_GATEWAY=${SKIP_GATEWAY:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
BENCH_RUST_LOG=${BENCH_RUST_LOG:-warn}
S3_SERVER=${S3_SERVER:-auto}
DELAY_MS=${DELAY_MS:-20}
LAT_RUNS=${LAT_RUNS:-50}
LAT_COLD_KEYS=${LAT_COLD_KEYS:-20}
CACHE_MEMORY_BYTES=${CACHE_MEMORY_BYTES:-134217728}
CACHE_TINY_MEMORY_BYTES=${CACHE_TINY_MEMORY_BYTES:-1048576}
DISK_OBJECTS=${DISK_OBJECTS:-8}
CACHE_TINY_CHUNK_BYTES=${CACHE_TINY_CHUNK_BYTES:-262144}
CACHE_DISK_BYTES=${CACHE_DISK_BYTES:-1073741824}
CACHE_ENCRYPT=${CACHE_ENCRYPT:-1}
CACHE_BIG_MIB=${CACHE_BIG_MIB:-512}
S3S_FS_VERSION=0.14.1
MEM_TARGET_MIB=64

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET_DIR/release/bucketgate"

# Logging, tracked child processes (ended by pid on exit), apt installs of missing tools.
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need nginx nginx
need wrk wrk
need h2load nghttp2-client
need curl curl
need openssl openssl
need python3 python3
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if has_section redis; then
    need redis-server redis-server
    need redis-cli redis-tools
fi



# Fetch once and check status and size before measuring: a benchmark of 404s is no benchmark.
check_url() { # url expected-size
    local out
    out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{http_version}' --max-time 10 \
        --cacert "$TMP/cert.pem" "$1" || true)
    if [[ "$out" != "200 $2 "* ]]; then
        log "WARNING: $1 answered '${out:-nothing}' (want 200 and $2 bytes)"
        return 1
    fi
}

# --- build and files -------------------------------------------------------------------------------

if [[ "$SKIP_GATEWAY" != "1" && "$SKIP_BUILD" != "1" ]]; then
    log "cargo build --release --locked"
    cargo build --release --locked 2>&1 | tail -3 >&2
    [[ ${PIPESTATUS[0]} -eq 0 ]] || die "cargo build --release failed"
fi
if [[ "$SKIP_GATEWAY" != "1" && ! -x "$BIN" ]]; then
    die "$BIN not found"
fi

TMP=$(mktemp -d /tmp/bucketgate-load.XXXXXX)
chmod 755 "$TMP" # nginx workers run as an unprivileged user
mkdir -p "$TMP/files" "$TMP/nginx" "$TMP/s3root/bench" "$TMP/gw"
head -c $((64 * 1024)) /dev/urandom >"$TMP/files/64k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$TMP/files/1m.bin"
truncate -s 1G "$TMP/files/1g.bin"
chmod 644 "$TMP/files/"*
cp "$TMP/files/64k.bin" "$TMP/files/1m.bin" "$TMP/s3root/bench/"
declare -A SIZE=([64k.bin]=65536 [1m.bin]=1048576 [1g.bin]=1073741824)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 644 "$TMP/key.pem" "$TMP/cert.pem"

# --- result table --------------------------------------------------------------------------------

declare -a ROWS=()     # "section|target|proto|file|req/s|MiB/s|latency|note"
declare -A REQS=() MIBS=()

to_mib() { # "123.45MB" -> MiB as a number (wrk and h2load count in powers of 1024)
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u); sub(/\/s$/, "", u)
        f = 1 / 1048576
        if (u == "KB") f = 1 / 1024; else if (u == "MB") f = 1; else if (u == "GB") f = 1024
        printf "%.1f", n * f }'
}

# wrk: HTTP/1.1 with keep-alive. Records req/s, MiB/s, p99.
run_wrk() { # section target file url [header]
    local section=$1 target=$2 file=$3 url=$4 out rps tps p99 note=""
    local -a header=()
    [[ -z "${5:-}" ]] || header=(-H "$5")
    log "wrk  $target $file ($DURATION s, c=$CONNECTIONS, t=$THREADS)"
    [[ -z "${WRK_LUA:-}" ]] || header+=(-s "$WRK_LUA")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${header[@]}" "$url" 2>&1) ||
        note="wrk-failed"
    WRK_REQUESTS=$(awk '/ requests in / {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    tps=$(awk '/^Transfer\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    grep -q 'Non-2xx' <<<"$out" && note+="non-2xx:$(awk '/Non-2xx/ {print $NF}' <<<"$out") "
    grep -q 'Socket errors' <<<"$out" && note+="$(grep 'Socket errors' <<<"$out" | sed 's/^ *Socket errors: //') "
    record "$section" "$target" h1 "$file" "${rps:-0}" "$(to_mib "${tps:-0B}")" "p99 ${p99:--}" "$note"
}

# h2load: HTTP/2 over TLS (ALPN). h2load prints no percentiles; the mean is shown instead.
run_h2load() { # section target file url
    local section=$1 target=$2 file=$3 url=$4 out rps tps mean failed note=""
    log "h2load $target $file ($DURATION s, c=$CONNECTIONS, m=$H2_STREAMS, t=$THREADS)"
    out=$(h2load -t"$THREADS" -c"$CONNECTIONS" -m"$H2_STREAMS" -D"$DURATION" "$url" 2>&1) || note="h2load-failed "
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
    tps=$(awk '/^finished in/ {print $6}' <<<"$out")
    mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
    failed=$(awk '/^requests:/ {print $10 + $12}' <<<"$out")
    [[ "${failed:-0}" == "0" ]] || note+="failed/errored:$failed "
    grep -q 'No protocol negotiated\|h2 is not supported' <<<"$out" && note+="no-h2 "
    local non2xx
    non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
    [[ "${non2xx:-0}" == "0" ]] || note+="non-2xx:$non2xx "
    record "$section" "$target" h2 "$file" "${rps:-0}" "$(to_mib "${tps:-0B}")" "mean ${mean:--}" "$note"
}

record() { # section target proto file rps mib latency note
    ROWS+=("$1|$2|$3|$4|$5|$6|$7|$8")
    REQS["$1|$2|$3|$4"]=$5
    MIBS["$1|$2|$3|$4"]=$6
}


# --- servers -------------------------------------------------------------------------------------

NGINX_PORT=$(free_port)
GW_PORT=$(free_port)
GW_ADMIN_PORT=$(free_port)
S3_PORT=$(free_port)      # s3s-fs with SigV4 credentials, for the gateway
S3_ANON_PORT=$(free_port) # s3s-fs without auth, for direct reads
S3_ACCESS_KEY=BENCHACCESSKEY
S3_SECRET_KEY=benchsecretkey0123456789
S3_KIND=""
S3LAT_PORT=""      # the delaying proxy in front of S3_PORT (the gateway's store), if started
S3LAT_ANON_PORT="" # the delaying proxy in front of S3_ANON_PORT (direct reads, nginx)

# s3s-fs (preferred, fast) or moto_server (fallback). Sets S3_KIND, S3_ANON_PORT and S3_PORT.
start_s3() {
    local s3s
    s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    [[ "$S3_SERVER" != moto ]] || s3s=/nonexistent
    if [[ "$S3_SERVER" != moto && ! -x "$s3s" ]]; then
        log "installing s3s-fs $S3S_FS_VERSION (cargo install, a few minutes once)"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked >"$TMP/s3s-install.log" 2>&1 ||
            log "cargo install s3s-fs failed (see $TMP/s3s-install.log)"
    fi
    if [[ -x "$s3s" ]]; then
        S3_KIND="s3s-fs"
        "$s3s" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
            --secret-key "$S3_SECRET_KEY" "$TMP/s3root" >"$TMP/s3s-auth.log" 2>&1 &
        PIDS+=("$!")
        local auth_pid=$!
        "$s3s" --host 127.0.0.1 --port "$S3_ANON_PORT" "$TMP/s3root" >"$TMP/s3s-anon.log" 2>&1 &
        PIDS+=("$!")
        wait_http "http://127.0.0.1:$S3_ANON_PORT/bench/64k.bin" 20 "$!" ||
            { cat "$TMP/s3s-anon.log" >&2; die "s3s-fs did not start"; }
        # The signed instance refuses an unsigned GET (403) once it is up.
        local i
        for i in $(seq 100); do
            kill -0 "$auth_pid" 2>/dev/null || { cat "$TMP/s3s-auth.log" >&2; die "s3s-fs (auth) exited"; }
            [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" || true) != 000 ]] && break
            sleep 0.1
        done
        return 0
    fi
    local moto="$REPO/.venv/bin/moto_server"
    [[ "$S3_SERVER" != s3s-fs && -x "$moto" ]] || return 1
    # moto does not check signatures: one instance serves both the gateway and direct reads.
    S3_KIND=moto
    S3_PORT=$S3_ANON_PORT
    "$moto" -H 127.0.0.1 -p "$S3_ANON_PORT" >"$TMP/moto.log" 2>&1 &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$S3_ANON_PORT/moto-api/" 30 "$!" || { cat "$TMP/moto.log" >&2; die "moto did not start"; }
    curl -sf -X PUT "http://127.0.0.1:$S3_ANON_PORT/bench" >/dev/null
    local f
    for f in 64k.bin 1m.bin; do
        curl -sf -H "x-amz-acl: public-read" -T "$TMP/files/$f" "http://127.0.0.1:$S3_ANON_PORT/bench/$f" >/dev/null
    done
}

# The delaying proxy of the s3lat and cache sections: what the store sends reaches the client
# DELAY_MS later, piece by piece in order (so each response's first byte is DELAY_MS late and a
# long body keeps its rate); what the client sends passes at once. One upstream per instance.
write_delay_proxy() {
    cat >"$TMP/delay_proxy.py" <<'PY'
import asyncio, sys

listen_port, upstream_port, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000

async def forward(reader, writer):
    """Client to store, undelayed; the client's EOF is passed on."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, OSError):
        pass

async def delayed(reader, writer):
    """Store to client: each piece is written `delay` after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(maxsize=256)  # at most 16 MiB in flight per connection

    async def feed():
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, b""))

    feeder = asyncio.create_task(feed())
    try:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        feeder.cancel()
        writer.close()

async def handle(client_reader, client_writer):
    try:
        store_reader, store_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    up = asyncio.create_task(forward(client_reader, store_writer))
    await delayed(store_reader, client_writer)
    up.cancel()
    store_writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
}

start_delay_proxy() { # upstream-port name; sets DELAY_PORT
    local i pid
    [[ -f "$TMP/delay_proxy.py" ]] || write_delay_proxy
    DELAY_PORT=$(free_port)
    python3 "$TMP/delay_proxy.py" "$DELAY_PORT" "$1" "$DELAY_MS" >"$TMP/delay-$2.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { cat "$TMP/delay-$2.log" >&2; die "delaying proxy ($2) exited"; }
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DELAY_PORT/" || true) != 000 ]] && return 0
        sleep 0.1
    done
    die "delaying proxy ($2) did not listen on $DELAY_PORT"
}

start_nginx() {
    local h2_listen="" h2_directive="" ver
    ver=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    # `http2 on;` exists from 1.25.1; older versions take it as a listen parameter.
    if [[ "$(printf '%s\n1.25.1\n' "$ver" | sort -V | head -1)" == "1.25.1" ]]; then
        h2_directive="http2 on;"
    else
        h2_listen=" http2"
    fi
    local s3_location=""
    if [[ -n "$S3_KIND" ]]; then
        s3_location="
        location /s3/ {
            proxy_pass http://s3_upstream/bench/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering on;
        }"
    fi
    local s3lat_upstream=""
    if [[ -n "$S3LAT_ANON_PORT" ]]; then
        s3lat_upstream="upstream s3lat_upstream { server 127.0.0.1:$S3LAT_ANON_PORT; keepalive 64; }"
        s3_location+="
        location /s3lat/ {
            proxy_pass http://s3lat_upstream/bench/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering on;
        }"
    fi
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    default_type application/octet-stream;
    upstream s3_upstream { server 127.0.0.1:$S3_ANON_PORT; keepalive 64; }
    $s3lat_upstream
    server {
        listen 127.0.0.1:$NGINX_PORT ssl$h2_listen;
        $h2_directive
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location /o/bench/ { alias $TMP/files/; }$s3_location
    }
}
EOF
    "$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ||
        die "nginx rejected its config ($TMP/nginx/nginx.conf)"
    "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx/stdout.log" 2>&1 &
    PIDS+=("$!")
    wait_http "https://127.0.0.1:$NGINX_PORT/o/bench/64k.bin" 20 "$!" --cacert "$TMP/cert.pem" ||
        { cat "$TMP/nginx/error.log" >&2; die "nginx did not start"; }
}

GW_PID=""
NET_ONE_RULE='# The network stage runs on every request, as in production; the load comes from one address,
# so the per-address rate limit is lifted to measure throughput rather than the limiter.
[network]
allow = ["127.0.0.0/8"]'

# A gateway config on stdout. flavour `current`: today's keys, every request a signed URL;
# `baseline`: only the keys BASELINE_COMMIT knows (no [identity], no per-subject limits, no audit).
gateway_config() { # port admin-port network-toml flavour [extra-toml [fs-source-extra-toml]]
    local port=$1 admin_port=$2 network=$3 flavour=$4 extra=${5:-} fs_extra=${6:-} s3_source=""
    local subject="" identity=""
    if [[ -n "$S3LAT_PORT" ]]; then
        s3_source="
# The same store behind the delaying proxy (DELAY_MS on every answer).
$(s3_source_toml s3lat "$S3LAT_PORT")"
    fi
    if [[ -n "$S3_KIND" ]]; then
        s3_source+="
$(s3_source_toml s3 "$S3_PORT")"
    fi
    if [[ $flavour == current ]]; then
        subject="per_subject_rps = 1000000
per_subject_burst = 1000000"
        identity="# Every request carries a signed URL (?token=), verified and authorized as in production.
[identity]
audience = \"bucketgate\"

[[identity.keys]]
kid = \"bench\"
alg = \"HS256\"
secret = \"file:$TMP/gw/hs256.key\""
    fi
    cat <<EOF
[listener]
addr = "127.0.0.1:$port"
tls_cert = "$TMP/cert.pem"
tls_key = "$TMP/key.pem"

[admin]
addr = "127.0.0.1:$admin_port"

$network

[rate_limits]
per_ip_rps = 1000000
per_ip_burst = 1000000
$subject
max_connections_per_ip = 100000

$identity
$extra

[sources.bench]
kind = "fs"
root = "$TMP/files"
$fs_extra
$s3_source
EOF
}

write_gateway_config() {
    [[ -f "$TMP/gw/hs256.key" ]] || openssl rand -hex 32 >"$TMP/gw/hs256.key"
    gateway_config "$GW_PORT" "$GW_ADMIN_PORT" "$NET_ONE_RULE" current >"$TMP/gw/config.toml"
    # Signed-URL query strings for each source, minted by the gateway's own CLI. Every current
    # config here shares the key and audience, so these work for all of them.
    Q_BENCH="?token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$TMP/gw/config.toml" --source bench --prefix "" --ttl 1h --role reviewer)"
    Q_S3=""
    [[ -z "$S3_KIND" ]] ||
        Q_S3="?token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$TMP/gw/config.toml" --source s3 --prefix "" --ttl 1h --role reviewer)"
    Q_S3LAT=""
    [[ -z "$S3LAT_PORT" ]] ||
        Q_S3LAT="?token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$TMP/gw/config.toml" --source s3lat --prefix "" --ttl 1h --role reviewer)"
}

start_gateway() { # log-name [config port binary probe-query]; sets GW_PID
    local logf="$TMP/gw/$1.log" config=${2:-$TMP/gw/config.toml} port=${3:-$GW_PORT} bin=${4:-$BIN}
    local query=${5-$Q_BENCH}
    (
        cd "$TMP/gw"
        export BENCH_S3_SECRET_KEY=$S3_SECRET_KEY RUST_LOG=$BENCH_RUST_LOG TOKIO_WORKER_THREADS=$WORKERS
        exec "$bin" serve --config "$config"
    ) >"$logf" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    if ! wait_http "https://127.0.0.1:$port/o/bench/64k.bin$query" 30 "$GW_PID" --cacert "$TMP/cert.pem"; then
        printf '\n--- bucketgate (%s) did not serve /o/bench/64k.bin within 30 s; its config:\n' "$bin" >&2
        cat "$config" >&2
        printf -- '--- its log (%s):\n' "$logf" >&2
        cat "$logf" >&2
        exit 1
    fi
}

# [network] with 10,000 rules in the mix of benches/network.rs: 9,000 allow and 1,000 deny, half
# IPv4 (/16../32) and half IPv6 (/32../128 in 2001:db8::/32), none touching 127.0.0.0/8, plus
# 127.0.0.0/8 itself as the last allow rule (the bench client is allowed by the 9,000th).
network_10k_rules() {
    python3 - <<'PY'
import ipaddress, random
rng = random.Random(0x9E3779B97F4A7C15)
loopback = ipaddress.ip_network("127.0.0.0/8")
def rules(n):
    out = []
    while len(out) < n:
        if len(out) % 2 == 0:
            net = ipaddress.ip_network((rng.getrandbits(32), rng.randint(16, 32)), strict=False)
            if net.overlaps(loopback):
                continue
        else:
            addr = (0x20010DB8 << 96) | rng.getrandbits(96)
            net = ipaddress.ip_network((addr, rng.randint(32, 128)), strict=False)
        out.append(str(net))
    return out
allow = rules(8999) + [str(loopback)]
deny = rules(1000)
q = lambda xs: ",\n".join('    "%s"' % x for x in xs)
print("# 10,000 rules (load.sh network_10k_rules)\n[network]")
print("allow = [\n%s,\n]" % q(allow))
print("deny = [\n%s,\n]" % q(deny))
PY
}

# The unauthenticated baseline for the auth section: bucketgate at BASELINE_COMMIT, built from
# `git archive` (the working tree is not touched) and cached by commit. Sets BASELINE_BIN, _REV.
BASELINE_BIN=""
BASELINE_REV=""
build_baseline() {
    local src="$TMP/baseline-src" target="$TARGET_DIR/bench-baseline"
    BASELINE_REV=$(git -C "$REPO" rev-parse --short=12 "$BASELINE_COMMIT^{commit}" 2>/dev/null) ||
        { log "BASELINE_COMMIT $BASELINE_COMMIT is not in this clone (shallow?)"; return 1; }
    BASELINE_BIN="$target/bucketgate-$BASELINE_REV"
    [[ -x "$BASELINE_BIN" ]] && return 0
    mkdir -p "$src" "$target"
    git -C "$REPO" archive "$BASELINE_REV" | tar -x -C "$src"
    log "building the baseline $BASELINE_REV (cargo build --release, a few minutes, once)"
    if ! (cd "$src" && CARGO_TARGET_DIR="$target/target" cargo build --release --locked) \
        >"$TMP/baseline-build.log" 2>&1; then
        tail -20 "$TMP/baseline-build.log" >&2
        log "building the baseline $BASELINE_REV failed"
        return 1
    fi
    cp "$target/target/release/bucketgate" "$BASELINE_BIN"
    rm -rf "$src"
}

# --- saml section: moto as STS and S3, the test IdP, one sign-in -------------------------------------

VENV_PY="$REPO/.venv/bin/python"
SAML_ROLE_ARN="arn:aws:iam::123456789012:role/BenchReader"
SAML_PROVIDER_ARN="arn:aws:iam::123456789012:saml-provider/BenchIdp"
SAML_SP_ENTITY_ID="https://bucketgate.bench/saml"
SAML_MOTO="" IDP_BASE="" IDP_ENTITY_ID="" SAML_COOKIE=""

# moto_server from ./.venv as both STS and S3, IAM enforcement off (its default: any keys, and
# the unsigned AssumeRoleWithSAML is answered without checks), bucket `bench` with the 64 KiB
# file. Sets SAML_MOTO.
start_saml_moto() {
    local port
    port=$(free_port)
    "$REPO/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$TMP/saml/moto.log" 2>&1 &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$port/moto-api/" 30 "$!" ||
        { cat "$TMP/saml/moto.log" >&2; die "moto (saml) did not start"; }
    SAML_MOTO="http://127.0.0.1:$port"
    curl -sf -X PUT "$SAML_MOTO/bench" >/dev/null || die "moto: creating the bucket failed"
    curl -sf -T "$TMP/files/64k.bin" "$SAML_MOTO/bench/64k.bin" >/dev/null || die "moto: upload failed"
}

# tests/support/saml_idp.py with the venv's python (signxml): once listening it prints one JSON
# line (base, entity_id); it exits when its stdin reaches EOF, so it reads a FIFO this script
# keeps open on fd 8 until it exits. Its /sso signs for one user holding SAML_ROLE_ARN; moto
# wants a second attribute (RoleSessionName) besides the Role. Sets IDP_BASE, IDP_ENTITY_ID and
# writes its signing certificate to $TMP/saml/idp.pem.
start_saml_idp() {
    local i line="" pid
    mkfifo "$TMP/saml/idp.stdin"
    exec 8<>"$TMP/saml/idp.stdin"
    "$VENV_PY" "$REPO/tests/support/saml_idp.py" --name-id bench@corp.example \
        --role "$SAML_ROLE_ARN,$SAML_PROVIDER_ARN" <"$TMP/saml/idp.stdin" \
        >"$TMP/saml/idp.out" 2>"$TMP/saml/idp.log" &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 150); do
        line=$(head -1 "$TMP/saml/idp.out")
        [[ $line == *'}' ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    IDP_BASE=$(sed -n 's/.*"base": "\([^"]*\)".*/\1/p' <<<"$line")
    IDP_ENTITY_ID=$(sed -n 's/.*"entity_id": "\([^"]*\)".*/\1/p' <<<"$line")
    [[ -n "$IDP_BASE" && -n "$IDP_ENTITY_ID" ]] ||
        { cat "$TMP/saml/idp.log" >&2; die "the test IdP did not start (is signxml in .venv? run ./tests/run)"; }
    curl -sf -X POST -d '{"role_session_name": "bench"}' "$IDP_BASE/defaults" >/dev/null ||
        die "the test IdP refused POST /defaults"
    curl -sf -o "$TMP/saml/idp.pem" "$IDP_BASE/cert" || die "the test IdP refused GET /cert"
}

# [sts], [saml] and the two S3 sources on moto's bucket for the gateway on `port`: `static`
# (fixed keys, which moto takes as they come) and `saml` (each read signed with the session's
# STS credentials), and the project that lets the SAML role read `saml`.
saml_gateway_toml() { # port
    cat <<EOF
[sts]
region = "us-east-1"
endpoint = "$SAML_MOTO"
timeout_secs = 10

[saml]
sp_entity_id = "$SAML_SP_ENTITY_ID"
acs_url = "https://127.0.0.1:$1/auth/saml/acs"

[saml.idp]
entity_id = "$IDP_ENTITY_ID"
sso_url = "$IDP_BASE/sso"
certificates = ["file:$TMP/saml/idp.pem"]

[[saml.idp.roles]]
role_arn = "$SAML_ROLE_ARN"
provider_arn = "$SAML_PROVIDER_ARN"
gateway_role = "reviewer"
project = "benchsaml"

[projects.benchsaml]
sources = ["saml:"]

[sources.static]
kind = "s3"
bucket = "bench"
region = "us-east-1"
endpoint = "$SAML_MOTO"
path_style = true
credentials = { access_key_id = "$S3_ACCESS_KEY", secret_access_key = "env:BENCH_S3_SECRET_KEY" }

[sources.saml]
kind = "s3"
bucket = "bench"
region = "us-east-1"
endpoint = "$SAML_MOTO"
path_style = true
credentials = "saml"
EOF
}

# What a browser does, with curl: GET /auth/saml/login (keeps the login cookie), follow its
# redirect to the IdP's /sso, read the auto-POST form there, POST it to the ACS with the login
# cookie. Sets SAML_COOKIE to the value of the __Host-bucketgate-session cookie.
saml_sign_in() { # gateway-base-url
    local gw=$1 jar="$TMP/saml/cookies.txt" location code
    local -a form=() relay=()
    location=$(curl -s -o /dev/null -w '%{redirect_url}' --cacert "$TMP/cert.pem" -c "$jar" \
        "$gw/auth/saml/login" || true)
    [[ $location == "$IDP_BASE/sso?"* ]] || die "GET /auth/saml/login redirected to '$location', not the IdP"
    mapfile -t form < <(curl -sf "$location" | python3 -c '
import html, re, sys
page = sys.stdin.read()
def attr(marker, name):
    m = re.search(re.escape(marker) + r"[^>]*?\b" + name + r"=\"([^\"]*)\"", page)
    return html.unescape(m.group(1)) if m else ""
print(attr("<form", "action"))
print(attr("name=\"SAMLResponse\"", "value"))
print(attr("name=\"RelayState\"", "value"))')
    [[ ${#form[@]} -eq 3 && -n "${form[1]}" ]] || die "the IdP's /sso page had no SAMLResponse form"
    [[ ${form[0]} == "$gw/auth/saml/acs" ]] || die "the IdP posts to '${form[0]}', not $gw/auth/saml/acs"
    [[ -z "${form[2]}" ]] || relay=(--data-urlencode "RelayState=${form[2]}")
    code=$(curl -s -o "$TMP/saml/acs.body" -w '%{http_code}' --cacert "$TMP/cert.pem" -b "$jar" -c "$jar" \
        --data-urlencode "SAMLResponse=${form[1]}" "${relay[@]}" "${form[0]}" || true)
    [[ $code == 303 ]] || { cat "$TMP/saml/acs.body" >&2; die "POST /auth/saml/acs answered '$code' (want 303)"; }
    SAML_COOKIE=$(awk '$6 == "__Host-bucketgate-session" { print $7 }' "$jar")
    [[ -n "$SAML_COOKIE" ]] || die "the ACS set no __Host-bucketgate-session cookie"
}

# --- same-run comparisons (net, auth, saml) ---------------------------------------------------------

declare -a AB_LINES=() AB_MEAN=() AB_CPU=()
declare -A AB_HEADER=() # label -> one request header wrk sends for that variant (saml: the cookie)
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; } # user + system

# wrk (HTTP/1.1) on the 64 KiB file against each variant in turn for AB_ROUNDS rounds, each round
# starting one variant later (ABBA for two), so drift on a busy machine falls on all alike. Every
# run goes into the table. In argument order, AB_MEAN gets each variant's mean req/s and AB_CPU
# its gateway's CPU time per request in microseconds (user + system, from /proc): throughput
# moves with whatever else the machine runs, CPU per request much less. Variants may share one
# gateway (saml): only that process's CPU delta over each variant's own runs counts.
ab_runs() { # section label url pid [label url pid]...
    local section=$1 n r i k before
    shift
    local -a labels=() urls=() pids=() sums=() ticks=() requests=()
    while (($# >= 3)); do
        labels+=("$1")
        urls+=("$2")
        pids+=("$3")
        sums+=(0)
        ticks+=(0)
        requests+=(0)
        shift 3
    done
    n=${#labels[@]}
    for r in $(seq "$AB_ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            k=$(((i + r - 1) % n))
            before=$(cpu_ticks "${pids[$k]}")
            WRK_REQUESTS=0
            run_wrk "$section" "${labels[$k]}" 64k.bin "${urls[$k]}" "${AB_HEADER[${labels[$k]}]:-}"
            ticks[k]=$((ticks[k] + $(cpu_ticks "${pids[$k]}") - before))
            requests[k]=$((requests[k] + ${WRK_REQUESTS:-0}))
            sums[k]=$(awk -v a="${sums[$k]}" -v b="${REQS[$section|${labels[$k]}|h1|64k.bin]}" \
                'BEGIN { print a + b }')
        done
    done
    AB_MEAN=()
    AB_CPU=()
    for k in $(seq 0 $((n - 1))); do
        AB_MEAN+=("$(awk -v s="${sums[$k]}" -v r="$AB_ROUNDS" 'BEGIN { printf "%.0f", s / r }')")
        AB_CPU+=("$(awk -v t="${ticks[$k]}" -v q="${requests[$k]}" -v hz="$CLK_TCK" \
            'BEGIN { if (q == 0) print "-"; else printf "%.1f", t / hz * 1e6 / q }')")
    done
}

percent_below() { # a b -> how many percent a is below b, one decimal (negative: above)
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.1f", (1 - a / b) * 100 }'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# MEM_CLIENTS slow clients (curl --limit-rate MEM_RATE) read `url` from the gateway GW_PID for
# MEM_SECONDS, from the start, or given the object's size each from its own offset (client i at
# i/MEM_CLIENTS of it); its RSS is sampled throughout. Sets RSS_LINE (peak above idle against the
# target).
slow_clients_rss() { # log-name url target-mib [object-size-to-spread-over]
    local name=$1 url=$2 target=$3 spread=${4:-0} idle peak peak_threads deadline now threads alive
    local pid i hwm streamed above verdict
    local -a range=()
    sleep 1
    idle=$(rss_kib "$GW_PID")
    log "memory ($name): idle RSS $((idle / 1024)) MiB; $MEM_CLIENTS clients at $MEM_RATE/s for $MEM_SECONDS s"
    local -a clients=()
    rm -rf "$TMP/mem"
    mkdir -p "$TMP/mem"
    for i in $(seq "$MEM_CLIENTS"); do
        ((spread == 0)) || range=(-r "$(((i - 1) * (spread / MEM_CLIENTS)))-")
        curl -s -o /dev/null --cacert "$TMP/cert.pem" --limit-rate "$MEM_RATE" --max-time "$MEM_SECONDS" \
            "${range[@]}" -w '%{http_code} %{size_download}\n' "$url" >"$TMP/mem/$i.out" 2>/dev/null &
        clients+=("$!")
        PIDS+=("$!")
    done
    peak=$idle
    peak_threads=0
    deadline=$((SECONDS + MEM_SECONDS + 5))
    while ((SECONDS < deadline)); do
        kill -0 "$GW_PID" 2>/dev/null || { cat "$TMP/gw/$name.log" >&2; die "bucketgate exited during the memory test"; }
        now=$(rss_kib "$GW_PID")
        ((now > peak)) && peak=$now
        threads=$(awk '/^Threads:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
        ((threads > peak_threads)) && peak_threads=$threads
        alive=0
        for pid in "${clients[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
        ((alive == 0)) && break
        sleep 0.25
    done
    for pid in "${clients[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${clients[@]}"; do wait "$pid" 2>/dev/null || true; done
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
    streamed=$(cat "$TMP"/mem/*.out 2>/dev/null | awk '$1 == 200 || $1 == 206 {n++; b += $2} $1 != 200 && $1 != 206 {e++}
        END {printf "%d clients got 200/206 (%.0f MiB in all), %d did not", n, b / 1048576, e}')
    above=$(((peak - idle) / 1024))
    verdict=ok
    ((above < target)) || verdict=OVER
    RSS_LINE="RSS above idle: $above MiB (target < $target MiB) [$verdict]; idle $((idle / 1024)) MiB, peak $((peak / 1024)) MiB, VmHWM $((hwm / 1024)) MiB, threads up to $peak_threads; streamed: $streamed"
}

# Time to first byte in ms over one keep-alive curl run (HTTP/1.1) of the given URLs in order;
# the first, which opens the connection, is a warm-up and not counted. TTFB here is
# time_starttransfer - time_pretransfer: from the request sent to the answer's first byte, so a
# TLS handshake is not counted. Sets TTFB_P50 and TTFB_P90; warns about answers other than 200.
ttfb() { # warm-up-url url...
    local u out bad vals
    local -a args=()
    for u in "$@"; do args+=(-o /dev/null "$u"); done
    out=$(curl -s --http1.1 --cacert "$TMP/cert.pem" --max-time 120 \
        -w '%{http_code} %{time_pretransfer} %{time_starttransfer}\n' "${args[@]}" || true)
    bad=$(awk 'NR > 1 && $1 != 200' <<<"$out" | wc -l)
    ((bad == 0)) || log "WARNING: $bad of $(($# - 1)) TTFB requests did not answer 200 (first: $2)"
    vals=$(awk 'NR > 1 && $1 == 200 { printf "%.3f\n", ($3 - $2) * 1000 }' <<<"$out" | sort -n)
    TTFB_P50=$(awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else printf "%.2f", v[int((NR + 1) / 2)] }' <<<"$vals")
    TTFB_P90=$(awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
        i = int(NR * 0.9 + 0.5); if (i < 1) i = 1; printf "%.2f", v[i] }' <<<"$vals")
}

repeat() { # n word: the word n times, one a line
    local i
    for i in $(seq "$1"); do printf '%s\n' "$2"; done
}

# Put a file into the bench bucket as object `key`, through the anonymous endpoint (s3s-fs and
# moto then keep its ETag: s3s-fs computes the MD5 of a file it did not store on every GET).
# Falls back to copying the file into s3s-fs's directory.
put_object() { # key file
    if curl -sf -T "$2" "http://127.0.0.1:$S3_ANON_PORT/bench/$1" >/dev/null; then
        return 0
    fi
    [[ "$S3_KIND" == s3s-fs ]] || die "uploading $1 to $S3_KIND failed"
    log "NOTICE: PUT $1 to s3s-fs failed; copying the file (s3s-fs hashes it on every GET)"
    mkdir -p "$(dirname "$TMP/s3root/bench/$1")"
    cp "$2" "$TMP/s3root/bench/$1"
}

# A gateway config with [cache] (issue 12) in $TMP/gw/NAME.toml, the fs source opted out; stops
# the run with a clear message when this bucketgate does not know the keys.
cache_config() { # name port admin-port cache-toml
    local out
    gateway_config "$2" "$3" "$NET_ONE_RULE" current "$4" "cache = false" >"$TMP/gw/$1.toml"
    if ! out=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" check --config "$TMP/gw/$1.toml" 2>&1); then
        if grep -qi 'unknown field\|unknown key' <<<"$out" && grep -q 'cache' <<<"$out"; then
            die "this bucketgate does not know the cache's keys ([cache], a source's cache = false): the cache (issue 12) is not merged into $BIN yet. bucketgate check said: $out"
        fi
        die "bucketgate check rejected the cache config $TMP/gw/$1.toml: $out"
    fi
}

# The cache section (see the header): memory hit, disk hit, cold vs warm, memory.
cache_section() {
    [[ -n "$S3LAT_PORT" ]] || die "the cache section needs an S3 server (s3s-fs or moto) and the delaying proxy"
    local ttl="metadata_ttl_secs = 3600" port admin cgw pid i mem_toml disk_toml keys=()
    local d50 d90 c50 c90 w50 w90
    mem_toml="# The cache (issue 12): a memory tier; object metadata trusted for the whole run.
[cache]
memory_bytes = $CACHE_MEMORY_BYTES
$ttl"
    if [[ "$CACHE_ENCRYPT" == 1 ]]; then
        BENCH_CACHE_KEY=$(openssl rand -hex 32)
        export BENCH_CACHE_KEY
        disk_toml='key = "env:BENCH_CACHE_KEY"
key_id = "k1"'
    else
        disk_toml="encrypt = false"
    fi
    disk_toml="# The cache (issue 12): a tiny memory tier, so that hits come from the disk tier.
[cache]
memory_bytes = $CACHE_TINY_MEMORY_BYTES
chunk_bytes = $CACHE_TINY_CHUNK_BYTES
disk_dir = \"$TMP/cache-disk\"
disk_bytes = $CACHE_DISK_BYTES
$disk_toml
$ttl"
    mkdir -p "$TMP/cache-disk"

    # Objects only this section reads: the cold keys, and the big one for the memory test.
    for i in $(seq "$LAT_COLD_KEYS"); do
        put_object "cold/64k-$i.bin" "$TMP/files/64k.bin"
        keys+=("cold/64k-$i.bin")
    done
    truncate -s "${CACHE_BIG_MIB}M" "$TMP/big.bin"
    put_object big.bin "$TMP/big.bin"
    rm -f "$TMP/big.bin"

    # Memory hit and cold vs warm.
    port=$(free_port) admin=$(free_port)
    cgw="https://127.0.0.1:$port"
    cache_config cache-mem "$port" "$admin" "$mem_toml"
    start_gateway cache-mem "$TMP/gw/cache-mem.toml" "$port"
    pid=$GW_PID
    # Cold: each key once, store +DELAY_MS; the warm-up request reads another object.
    mapfile -t urls < <(for i in "${keys[@]}"; do printf '%s\n' "$cgw/o/s3lat/$i$Q_S3LAT"; done)
    ttfb "$cgw/o/bench/64k.bin$Q_BENCH" "${urls[@]}"
    c50=$TTFB_P50 c90=$TTFB_P90
    check_url "$cgw/o/s3lat/64k.bin$Q_S3LAT" "${SIZE[64k.bin]}" || true
    mapfile -t urls < <(repeat $((LAT_RUNS + 1)) "$cgw/o/s3lat/64k.bin$Q_S3LAT")
    ttfb "${urls[@]}"
    w50=$TTFB_P50 w90=$TTFB_P90
    mapfile -t urls < <(repeat $((LAT_RUNS + 1)) "http://127.0.0.1:$S3LAT_ANON_PORT/bench/64k.bin")
    ttfb "${urls[@]}"
    d50=$TTFB_P50 d90=$TTFB_P90
    GOAL_LINES+=("cache: TTFB p50/p90 of 64 KiB (store +$DELAY_MS ms): cold $c50/$c90 ms ($LAT_COLD_KEYS objects), warm $w50/$w90 ms ($LAT_RUNS reads), store direct $d50/$d90 ms; goal: warm p50 < 2 ms")
    for proto in h1 h2; do
        runner=run_wrk
        [[ $proto == h2 ]] && runner=run_h2load
        $runner cache "nginx(file)" 64k.bin "$NG/o/bench/64k.bin"
        $runner cache bucketgate-mem-hit 64k.bin "$cgw/o/s3lat/64k.bin$Q_S3LAT"
        GOAL_LINES+=("cache: memory hit 64k.bin $proto vs nginx serving the file: req/s ratio $(ratio "${REQS[cache|bucketgate-mem-hit|$proto|64k.bin]}" "${REQS[cache|nginx(file)|$proto|64k.bin]}"); goal >= 1.0")
    done
    stop "$pid"

    # Disk hit vs the uncached fs source, one gateway.
    port=$(free_port) admin=$(free_port)
    cgw="https://127.0.0.1:$port"
    cache_config cache-disk "$port" "$admin" "$disk_toml"
    start_gateway cache-disk "$TMP/gw/cache-disk.toml" "$port"
    pid=$GW_PID
    # DISK_OBJECTS different 1 MiB objects read round robin (a wrk script): the memory tier
    # (its minimum, 1 MiB) holds at most one of them, so every read misses memory and hits disk.
    # The uncached fs source reads the same files the same way.
    mkdir -p "$TMP/files/disk"
    for i in $(seq "$DISK_OBJECTS"); do
        cp "$TMP/files/1m.bin" "$TMP/files/disk/1m-$i.bin"
        put_object "disk/1m-$i.bin" "$TMP/files/1m.bin"
        check_url "$cgw/o/s3lat/disk/1m-$i.bin$Q_S3LAT" "${SIZE[1m.bin]}" || true
    done
    rotate_lua() { # source query -> a wrk script reading disk/1m-*.bin round robin
        printf 'local paths = {}\n'
        for i in $(seq "$DISK_OBJECTS"); do printf 'paths[%d] = "/o/%s/disk/1m-%d.bin%s"\n' "$i" "$1" "$i" "$2"; done
        printf 'local n = 0\nrequest = function()\n  n = n %% #paths + 1\n  return wrk.format(nil, paths[n])\nend\n'
    }
    rotate_lua bench "$Q_BENCH" >"$TMP/rotate-fs.lua"
    rotate_lua s3lat "$Q_S3LAT" >"$TMP/rotate-disk.lua"
    WRK_LUA="$TMP/rotate-fs.lua" run_wrk cache bucketgate-fs-nocache 1m.bin "$cgw/"
    WRK_LUA="$TMP/rotate-disk.lua" run_wrk cache bucketgate-disk-hit 1m.bin "$cgw/"
    curl -sf "http://127.0.0.1:$admin/metrics" | grep -E '^bucketgate_cache_(hits|misses|fills)' | sed 's/^/    /' || true
    GOAL_LINES+=("cache: disk hit 1m.bin h1 ($DISK_OBJECTS objects round robin) vs the uncached fs source, same gateway (memory tier $CACHE_TINY_MEMORY_BYTES B, encrypt=$CACHE_ENCRYPT): req/s ratio $(ratio "${REQS[cache|bucketgate-disk-hit|h1|1m.bin]}" "${REQS[cache|bucketgate-fs-nocache|h1|1m.bin]}"); goal >= 0.9")
    stop "$pid"

    # Memory: the slow clients on a big object through the cache, a fresh process.
    port=$(free_port) admin=$(free_port)
    cache_config cache-rss "$port" "$admin" "$mem_toml"
    start_gateway cache-rss "$TMP/gw/cache-rss.toml" "$port"
    slow_clients_rss cache-rss "https://127.0.0.1:$port/o/s3lat/big.bin$Q_S3LAT" \
        $((CACHE_MEMORY_BYTES / 1048576 + MEM_TARGET_MIB)) $((CACHE_BIG_MIB * 1048576))
    GOAL_LINES+=("cache: $MEM_CLIENTS slow clients, each from its own offset of a $CACHE_BIG_MIB MiB object, through the cache (memory tier $((CACHE_MEMORY_BYTES / 1048576)) MiB): $RSS_LINE")
    stop "$GW_PID"
    GW_PID=""
}

# --- run ------------------------------------------------------------------------------------------

if has_section s3 || has_section s3lat || has_section cache; then
    start_s3 || log "NOTICE: no S3 server available (s3s-fs install failed, no .venv moto); s3, s3lat and cache sections skipped"
fi
if [[ -n "$S3_KIND" ]] && { has_section s3lat || has_section cache; }; then
    start_delay_proxy "$S3_ANON_PORT" anon
    S3LAT_ANON_PORT=$DELAY_PORT
    S3LAT_PORT=$DELAY_PORT
    if [[ "$S3_PORT" != "$S3_ANON_PORT" ]]; then
        start_delay_proxy "$S3_PORT" signed
        S3LAT_PORT=$DELAY_PORT
    fi
fi
start_nginx
if [[ "$SKIP_GATEWAY" != "1" ]]; then
    write_gateway_config
    if has_section fs || has_section s3 || has_section s3lat; then
        start_gateway bench
    fi
fi

NG="https://127.0.0.1:$NGINX_PORT"
GW="https://127.0.0.1:$GW_PORT"

if has_section fs; then
    for f in 64k.bin 1m.bin; do
        check_url "$NG/o/bench/$f" "${SIZE[$f]}" || true
        [[ "$SKIP_GATEWAY" == "1" ]] || check_url "$GW/o/bench/$f$Q_BENCH" "${SIZE[$f]}" || true
        for proto in h1 h2; do
            runner=run_wrk
            [[ $proto == h2 ]] && runner=run_h2load
            $runner fs nginx "$f" "$NG/o/bench/$f"
            [[ "$SKIP_GATEWAY" == "1" ]] || $runner fs bucketgate "$f" "$GW/o/bench/$f$Q_BENCH"
        done
    done
fi

if has_section s3 && [[ -n "$S3_KIND" ]]; then
    for f in 64k.bin 1m.bin; do
        check_url "http://127.0.0.1:$S3_ANON_PORT/bench/$f" "${SIZE[$f]}" || true
        check_url "$NG/s3/$f" "${SIZE[$f]}" || true
        [[ "$SKIP_GATEWAY" == "1" ]] || check_url "$GW/o/s3/$f$Q_S3" "${SIZE[$f]}" || true
        run_wrk s3 "$S3_KIND-direct(http)" "$f" "http://127.0.0.1:$S3_ANON_PORT/bench/$f"
        run_wrk s3 "nginx->$S3_KIND" "$f" "$NG/s3/$f"
        [[ "$SKIP_GATEWAY" == "1" ]] || run_wrk s3 "bucketgate->$S3_KIND" "$f" "$GW/o/s3/$f$Q_S3"
    done
fi

declare -a GOAL_LINES=()
if has_section s3lat && [[ -n "$S3LAT_PORT" ]]; then
    direct="http://127.0.0.1:$S3LAT_ANON_PORT/bench"
    check_url "$direct/64k.bin" "${SIZE[64k.bin]}" || true
    check_url "$NG/s3lat/64k.bin" "${SIZE[64k.bin]}" || true
    mapfile -t urls < <(repeat $((LAT_RUNS + 1)) "$direct/64k.bin")
    ttfb "${urls[@]}"
    d50=$TTFB_P50 d90=$TTFB_P90
    mapfile -t urls < <(repeat $((LAT_RUNS + 1)) "$NG/s3lat/64k.bin")
    ttfb "${urls[@]}"
    n50=$TTFB_P50 n90=$TTFB_P90
    g50="-" g90="-"
    if [[ "$SKIP_GATEWAY" != "1" ]]; then
        check_url "$GW/o/s3lat/64k.bin$Q_S3LAT" "${SIZE[64k.bin]}" || true
        mapfile -t urls < <(repeat $((LAT_RUNS + 1)) "$GW/o/s3lat/64k.bin$Q_S3LAT")
        ttfb "${urls[@]}"
        g50=$TTFB_P50 g90=$TTFB_P90
    fi
    GOAL_LINES+=("s3lat: TTFB p50/p90 of 64k.bin, store +$DELAY_MS ms, cache off ($LAT_RUNS keep-alive requests): bucketgate $g50/$g90 ms, direct $d50/$d90 ms, nginx $n50/$n90 ms; p50 ratio bucketgate/direct $(ratio "$g50" "$d50"); goal <= 1.1")
    for f in 64k.bin 1m.bin; do
        run_wrk s3lat "$S3_KIND-direct(http)" "$f" "$direct/$f"
        run_wrk s3lat "nginx->$S3_KIND" "$f" "$NG/s3lat/$f"
        [[ "$SKIP_GATEWAY" == "1" ]] || run_wrk s3lat "bucketgate->$S3_KIND" "$f" "$GW/o/s3lat/$f$Q_S3LAT"
        GOAL_LINES+=("s3lat: throughput $f h1 vs nginx proxying the same delayed store: req/s ratio $(ratio "${REQS[s3lat|bucketgate->$S3_KIND|h1|$f]:-}" "${REQS[s3lat|nginx->$S3_KIND|h1|$f]:-}"); goal >= 0.9")
    done
fi

if has_section net && [[ "$SKIP_GATEWAY" != "1" ]]; then
    main_pid=$GW_PID
    net_port1=$(free_port) net_admin1=$(free_port) net_port2=$(free_port) net_admin2=$(free_port)
    gateway_config "$net_port1" "$net_admin1" "$NET_ONE_RULE" current >"$TMP/gw/net-1-rule.toml"
    gateway_config "$net_port2" "$net_admin2" "$(network_10k_rules)" current >"$TMP/gw/net-10k-rules.toml"
    # The big list is in force: the bench client is allowed, an address of a deny rule is not.
    deny_addr=$(awk '/^deny = \[/ { getline; gsub(/[" ,]/, ""); sub(/\/.*/, ""); print; exit }' \
        "$TMP/gw/net-10k-rules.toml")
    explain_10k() { BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" explain --config "$TMP/gw/net-10k-rules.toml" "$@"; }
    explain_10k --peer 127.0.0.1 /o/bench/64k.bin >/dev/null ||
        die "the 10,000-rule config does not allow 127.0.0.1"
    if explain_10k --peer "$deny_addr" /o/bench/64k.bin >/dev/null; then
        die "the 10,000-rule config allows $deny_addr, inside its first deny rule"
    fi
    start_gateway net-1-rule "$TMP/gw/net-1-rule.toml" "$net_port1"
    net_pid1=$GW_PID
    start_gateway net-10k-rules "$TMP/gw/net-10k-rules.toml" "$net_port2"
    net_pid2=$GW_PID
    check_url "https://127.0.0.1:$net_port1/o/bench/64k.bin$Q_BENCH" "${SIZE[64k.bin]}" || true
    check_url "https://127.0.0.1:$net_port2/o/bench/64k.bin$Q_BENCH" "${SIZE[64k.bin]}" || true
    ab_runs net bucketgate-1-rule "https://127.0.0.1:$net_port1/o/bench/64k.bin$Q_BENCH" "$net_pid1" \
        bucketgate-10k-rules "https://127.0.0.1:$net_port2/o/bench/64k.bin$Q_BENCH" "$net_pid2"
    AB_LINES+=("net:  10,000 rules vs 1 rule: req/s ${AB_MEAN[1]} vs ${AB_MEAN[0]}, ratio $(ratio "${AB_MEAN[1]}" "${AB_MEAN[0]}") (stage cost $(percent_below "${AB_MEAN[1]}" "${AB_MEAN[0]}")%); CPU/request ${AB_CPU[1]} vs ${AB_CPU[0]} us, ratio $(ratio "${AB_CPU[0]}" "${AB_CPU[1]}") (stage cost $(percent_below "${AB_CPU[0]}" "${AB_CPU[1]}")%); goal: cost < 3%")
    stop "$net_pid1"
    stop "$net_pid2"
    GW_PID=$main_pid
fi

if has_section auth && [[ "$SKIP_GATEWAY" != "1" ]]; then
    if build_baseline; then
        main_pid=$GW_PID
        auth_port1=$(free_port) auth_admin1=$(free_port) auth_port2=$(free_port)
        auth_admin2=$(free_port) auth_port3=$(free_port) auth_admin3=$(free_port)
        gateway_config "$auth_port1" "$auth_admin1" "$NET_ONE_RULE" baseline >"$TMP/gw/auth-baseline.toml"
        gateway_config "$auth_port2" "$auth_admin2" "$NET_ONE_RULE" current \
            "$(printf '[audit]\ndestination = "off"')" >"$TMP/gw/auth-signed.toml"
        gateway_config "$auth_port3" "$auth_admin3" "$NET_ONE_RULE" current >"$TMP/gw/auth-signed-audit.toml"
        start_gateway auth-baseline "$TMP/gw/auth-baseline.toml" "$auth_port1" "$BASELINE_BIN" ""
        auth_pid1=$GW_PID
        start_gateway auth-signed "$TMP/gw/auth-signed.toml" "$auth_port2"
        auth_pid2=$GW_PID
        start_gateway auth-signed-audit "$TMP/gw/auth-signed-audit.toml" "$auth_port3"
        auth_pid3=$GW_PID
        unauth_url="https://127.0.0.1:$auth_port1/o/bench/64k.bin"
        check_url "$unauth_url" "${SIZE[64k.bin]}" || true
        # The current gateway refuses the same request without its signed URL.
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/cert.pem" \
            "https://127.0.0.1:$auth_port2/o/bench/64k.bin" || true)
        [[ $code == 401 ]] || log "WARNING: the current gateway answered $code to an unsigned request (want 401)"
        check_url "https://127.0.0.1:$auth_port2/o/bench/64k.bin$Q_BENCH" "${SIZE[64k.bin]}" || true
        ab_runs auth "bucketgate@${BASELINE_REV:0:7}-unauth" "$unauth_url" "$auth_pid1" \
            bucketgate-signed "https://127.0.0.1:$auth_port2/o/bench/64k.bin$Q_BENCH" "$auth_pid2" \
            bucketgate-signed+audit "https://127.0.0.1:$auth_port3/o/bench/64k.bin$Q_BENCH" "$auth_pid3"
        AB_LINES+=("auth: signed URL vs unauthenticated (${BASELINE_REV:0:7}): req/s ${AB_MEAN[1]} vs ${AB_MEAN[0]}, ratio $(ratio "${AB_MEAN[1]}" "${AB_MEAN[0]}"); CPU/request ${AB_CPU[1]} vs ${AB_CPU[0]} us, ratio $(ratio "${AB_CPU[0]}" "${AB_CPU[1]}"); goal: ratio >= 0.9")
        AB_LINES+=("auth: signed URL + audit on stdout vs unauthenticated: req/s ${AB_MEAN[2]} vs ${AB_MEAN[0]}, ratio $(ratio "${AB_MEAN[2]}" "${AB_MEAN[0]}"); CPU/request ${AB_CPU[2]} vs ${AB_CPU[0]} us, ratio $(ratio "${AB_CPU[0]}" "${AB_CPU[2]}")")
        stop "$auth_pid1"
        stop "$auth_pid2"
        stop "$auth_pid3"
        GW_PID=$main_pid
    else
        log "NOTICE: no baseline binary for $BASELINE_COMMIT; auth section skipped"
    fi
fi

if has_section saml && [[ "$SKIP_GATEWAY" != "1" ]]; then
    if [[ -x "$VENV_PY" && -x "$REPO/.venv/bin/moto_server" ]]; then
        main_pid=$GW_PID
        mkdir -p "$TMP/saml"
        start_saml_moto
        start_saml_idp
        saml_port=$(free_port) saml_admin=$(free_port)
        saml_gw="https://127.0.0.1:$saml_port"
        gateway_config "$saml_port" "$saml_admin" "$NET_ONE_RULE" current "$(saml_gateway_toml "$saml_port")" \
            >"$TMP/gw/saml.toml"
        q_static="?token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$TMP/gw/saml.toml" \
            --source static --prefix "" --ttl 1h --role reviewer)"
        start_gateway saml "$TMP/gw/saml.toml" "$saml_port"
        saml_pid=$GW_PID
        saml_sign_in "$saml_gw"
        saml_header="Cookie: __Host-bucketgate-session=$SAML_COOKIE"
        check_url "$saml_gw/o/static/64k.bin$q_static" "${SIZE[64k.bin]}" || true
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --cacert "$TMP/cert.pem" \
            -H "$saml_header" "$saml_gw/o/saml/64k.bin" || true)
        [[ $out == "200 ${SIZE[64k.bin]}" ]] ||
            log "WARNING: $saml_gw/o/saml/64k.bin with the session cookie answered '$out' (want 200 and ${SIZE[64k.bin]} bytes)"
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/cert.pem" "$saml_gw/o/saml/64k.bin" || true)
        [[ $code == 401 ]] || log "WARNING: the saml source answered $code without a session (want 401)"
        AB_HEADER[bucketgate-saml]=$saml_header
        ab_runs saml bucketgate-static "$saml_gw/o/static/64k.bin$q_static" "$saml_pid" \
            bucketgate-saml "$saml_gw/o/saml/64k.bin" "$saml_pid"
        # moto logs each request; STS calls are its only POSTs to / (S3 reads are GETs of the key).
        sts_calls=$(grep -c '"POST / HTTP' "$TMP/saml/moto.log" || true)
        AB_LINES+=("saml: session-cookie reads (credentials = \"saml\") vs token reads (static keys), one gateway, one moto bucket: CPU/request ${AB_CPU[1]} vs ${AB_CPU[0]} us, ratio $(ratio "${AB_CPU[0]}" "${AB_CPU[1]}") (static/saml CPU: saml's relative throughput per core); goal: ratio >= 0.9")
        AB_LINES+=("saml: req/s ${AB_MEAN[1]} vs ${AB_MEAN[0]}, ratio $(ratio "${AB_MEAN[1]}" "${AB_MEAN[0]}"): bounded by moto (Python), not by the gateway, so CPU/request is the figure; STS calls seen by moto: ${sts_calls:-?} (want 1, the sign-in)")
        stop "$saml_pid"
        GW_PID=$main_pid
    else
        log "NOTICE: no .venv with moto_server and python (run ./tests/run once); saml section skipped"
    fi
fi

# --- redis section: memory stores vs Redis stores on one loopback redis-server ---------------------

redis_commands() { # port -> total commands the server processed so far
    redis-cli -p "$1" info stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'
}

if has_section redis && [[ "$SKIP_GATEWAY" != "1" ]]; then
    main_pid=$GW_PID
    mkdir -p "$TMP/redis"
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$TMP/redis" >"$TMP/redis/redis.log" 2>&1 &
    redis_pid=$!
    PIDS+=("$redis_pid")
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] || die "redis-server did not start (see $TMP/redis/redis.log)"
    quotas=$(printf '[rate_limits]\nper_ip_rps = %s\nper_ip_burst = %s\nper_subject_rps = %s\nper_subject_burst = %s\nmax_connections_per_ip = 100000\n' \
        "$REDIS_RPS" "$REDIS_RPS" "$REDIS_RPS" "$REDIS_RPS")
    redis_toml=$(printf '[redis]\nurl = "redis://127.0.0.1:%s/0"\nprefix = "bench"\nexpected_nodes = %s\n' \
        "$redis_port" "$REDIS_NODES")
    rd_port1=$(free_port) rd_admin1=$(free_port) rd_port2=$(free_port) rd_admin2=$(free_port)
    # The section's quotas replace gateway_config's: the later [rate_limits] table would be a
    # duplicate, so take it out of the generated config first.
    gateway_config "$rd_port1" "$rd_admin1" "$NET_ONE_RULE" current |
        awk '/^\[rate_limits\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' >"$TMP/gw/redis-memory.toml"
    printf '%s\n' "$quotas" >>"$TMP/gw/redis-memory.toml"
    gateway_config "$rd_port2" "$rd_admin2" "$NET_ONE_RULE" current |
        awk '/^\[rate_limits\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' >"$TMP/gw/redis-redis.toml"
    printf '%s\n%s\n' "$quotas" "$redis_toml" >>"$TMP/gw/redis-redis.toml"
    start_gateway redis-memory "$TMP/gw/redis-memory.toml" "$rd_port1"
    rd_pid1=$GW_PID
    start_gateway redis-redis "$TMP/gw/redis-redis.toml" "$rd_port2"
    rd_pid2=$GW_PID
    rd_url1="https://127.0.0.1:$rd_port1/o/bench/64k.bin$Q_BENCH"
    rd_url2="https://127.0.0.1:$rd_port2/o/bench/64k.bin$Q_BENCH"
    check_url "$rd_url1" "${SIZE[64k.bin]}" || true
    check_url "$rd_url2" "${SIZE[64k.bin]}" || true
    # The Redis gateway really keeps its limits there: its first request wrote the keys.
    rl_keys=$(redis-cli -p "$redis_port" --scan --pattern 'bench:v1:rate-*' | wc -l)
    ((rl_keys > 0)) || log "WARNING: no rate-limit keys in Redis after a request to the redis gateway"
    cmds_before=$(redis_commands "$redis_port")
    ab_runs redis bucketgate-memory "$rd_url1" "$rd_pid1" bucketgate-redis "$rd_url2" "$rd_pid2"
    cmds=$(($(redis_commands "$redis_port") - cmds_before))
    rd_reqs=$(awk -v m="${AB_MEAN[1]}" -v d="$DURATION" -v r="$AB_ROUNDS" 'BEGIN { printf "%.0f", m * d * r }')
    AB_LINES+=("redis: Redis stores (rate limits with leases, expected_nodes $REDIS_NODES, quotas $REDIS_RPS rps) vs memory stores: req/s ${AB_MEAN[1]} vs ${AB_MEAN[0]}, ratio $(ratio "${AB_MEAN[1]}" "${AB_MEAN[0]}"); CPU/request ${AB_CPU[1]} vs ${AB_CPU[0]} us, ratio $(ratio "${AB_CPU[0]}" "${AB_CPU[1]}"); goal: ratio >= 0.9")
    AB_LINES+=("redis: commands Redis processed during the runs: $cmds, for about $rd_reqs requests of the redis gateway ($(awk -v c="$cmds" -v q="$rd_reqs" 'BEGIN { if (q == 0) print "-"; else printf "%.2f", c * 1000 / q }') per 1,000; the rest served from leases and local copies)")
    stop "$rd_pid1"
    stop "$rd_pid2"
    stop "$redis_pid"
    GW_PID=$main_pid
fi

MEM_LINE=""
if has_section mem && [[ "$SKIP_GATEWAY" != "1" ]]; then
    # A fresh process, so that allocator memory kept from the runs above does not count as idle.
    [[ -z "$GW_PID" ]] || stop "$GW_PID"
    GW_PORT=$(free_port) # new ports: the old ones may linger in TIME_WAIT
    GW_ADMIN_PORT=$(free_port)
    GW="https://127.0.0.1:$GW_PORT"
    write_gateway_config
    start_gateway mem
    slow_clients_rss mem "$GW/o/bench/1g.bin$Q_BENCH" "$MEM_TARGET_MIB"
    MEM_LINE=$RSS_LINE
fi

if has_section cache && [[ "$SKIP_GATEWAY" != "1" ]]; then
    cache_section
fi

# --- report ----------------------------------------------------------------------------------------

printf '\nbucketgate load test: %s s per run, %s connections, %s client threads, %s server workers, h2 streams/conn %s\n' \
    "$DURATION" "$CONNECTIONS" "$THREADS" "$WORKERS" "$H2_STREAMS"
printf 'host: %s cores, %s; nginx %s; %s\n\n' "$(nproc)" "$(uname -r)" "$("$NGINX" -v 2>&1 | sed 's|.*/||')" \
    "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
fmt='%-7s %-24s %-5s %-8s %11s %10s %14s  %s\n'
# shellcheck disable=SC2059  # fmt is a constant format
printf "$fmt" section target proto file req/s MiB/s latency note
for row in "${ROWS[@]}"; do
    IFS='|' read -r s t p f r m l n <<<"$row"
    # shellcheck disable=SC2059
    printf "$fmt" "$s" "$t" "$p" "$f" "$r" "$m" "$l" "$n"
done

printf '\nratios (bucketgate / peer):\n'
for row in "${ROWS[@]}"; do
    IFS='|' read -r s t p f _ <<<"$row"
    [[ $t == bucketgate* ]] || continue
    for peer_row in "${ROWS[@]}"; do
        IFS='|' read -r ps pt pp pf _ <<<"$peer_row"
        [[ $ps == "$s" && $pp == "$p" && $pf == "$f" && $pt != bucketgate* ]] || continue
        printf '  %-3s %-3s %-8s vs %-22s req/s %5s   MiB/s %5s\n' "$s" "$p" "$f" "$pt" \
            "$(ratio "${REQS[$s|$t|$p|$f]}" "${REQS[$ps|$pt|$pp|$pf]}")" \
            "$(ratio "${MIBS[$s|$t|$p|$f]}" "${MIBS[$ps|$pt|$pp|$pf]}")"
    done
done
if ((${#AB_LINES[@]})); then
    printf '\nsame-run comparisons (wrk h1 on 64k.bin, mean of %s alternated rounds of %s s):\n' \
        "$AB_ROUNDS" "$DURATION"
    for line in "${AB_LINES[@]}"; do
        printf '  %s\n' "$line"
    done
fi
if ((${#GOAL_LINES[@]})); then
    printf '\nlatency and cache (issue 12; TTFB = request sent -> first byte; noisy on a shared machine):\n'
    for line in "${GOAL_LINES[@]}"; do
        printf '  %s\n' "$line"
    done
fi
[[ -z "$MEM_LINE" ]] || printf '\nmemory (%s clients x %s/s on the 1 GiB object, %s s): %s\n' \
    "$MEM_CLIENTS" "$MEM_RATE" "$MEM_SECONDS" "$MEM_LINE"
[[ "$SKIP_GATEWAY" != "1" ]] || printf '\nNOTE: SKIP_GATEWAY=1: peers only, no bucketgate rows\n'
