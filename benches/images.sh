#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and helpers are called through traps and indirection
# Image benchmarks (issue 13): bucketgate's IIIF thumbnails and tiles side by side with the tools
# a customer would otherwise deploy, in one run, on loopback only.
#
#   benches/images.sh
#
# 1. builds bucketgate (`cargo build --release --locked`);
# 2. makes the test images in a temp dir with ffmpeg and vips: a noisy 6000x4000 JPEG (12 MB,
#    the issue's ffmpeg command), a camera-like one (smooth content with mild sensor noise,
#    2-4 MB), a 50 MP camera-like JPEG (the camera-like one enlarged with vips), and a tiled pyramidal BigTIFF (JPEG tiles of TILE px,
#    `vips tiffsave --tile --pyramid --bigtiff`) of PYRAMID_REPLICATE copies of the camera-like
#    image; a self-signed ECDSA P-256 certificate that the gateway and nginx serve;
# 3. thumb: a cold 256 px thumbnail (`full/!256,256/0/default.jpg`) of each 6000x4000 JPEG
#    through the gateway (fs source, signed URL, audit on stdout, rate limits lifted, no cache,
#    a fresh key every request, so nothing is warm but the page cache) vs `vipsthumbnail -s 256`
#    on the same file, alternated (who goes first swaps every round) for ROUNDS rounds. Gateway
#    time is curl's request sent -> last byte (TLS handshake excluded); vipsthumbnail's is the
#    wall time of the process, as a customer would run it. Also printed: vipsthumbnail's
#    start-up (the median wall time on a 16x16 JPEG) and the ratio against vipsthumbnail minus
#    that, and the CPU time of both (the gateway's from /proc, summed over the rounds). Goal:
#    gateway median / vipsthumbnail median <= 0.8;
# 4. tiles: every tile of every level of the pyramid (IIIF region + `w,` size, the URLs a tile
#    viewer asks for), wrk with a Lua script going round the list (each connection from its own
#    offset) for DURATION s, bucketgate vs iipsrv (Debian `iipimage-server`, WORKERS FastCGI
#    processes behind nginx, TLS like the gateway), same file, alternated for TILE_ROUNDS
#    rounds: cold (the gateway without [cache], iipsrv with MAX_IMAGE_CACHE_SIZE=0) and warm
#    (the gateway with a [cache] memory tier, iipsrv with a tile cache, both after one pass over
#    every URL). Goal: bucketgate tiles/s / iipsrv tiles/s >= 1.0;
# 5. scale: one cold thumbnail of the noisy JPEG alone vs two at once (fresh keys), wall time
#    until the last finishes, alternated for ROUNDS rounds. Goal: two / one <= 1.2 (on WORKERS
#    cores; a machine shared with builds makes this one noisy);
# 6. mem: a fresh gateway, MEM_CLIENTS concurrent cold thumbnails of the 50 MP JPEG (distinct
#    keys: hard links), peak RSS (VmHWM) of the gateway. Goal: < 500 MiB.
# 7. prints the figures and goals. Ratios only mean something within one run.
#
# Environment (defaults in brackets):
#   SECTIONS ["thumb tiles scale mem"]  any subset
#   ROUNDS [7] alternated rounds of the thumb and scale comparisons
#   DURATION [10] seconds per wrk run   CONNECTIONS [8]   THREADS [2] wrk threads
#   TILE_ROUNDS [2] alternated rounds of each tile comparison
#   WORKERS [2] gateway runtime threads (TOKIO_WORKER_THREADS) and iipsrv processes
#   TILE [512] pyramid tile side   PYRAMID_REPLICATE ["4 4"] copies across and down (24000x16000)
#   MEM_CLIENTS [20]   MEM_TARGET_MIB [500]
#   CACHE_MEMORY_BYTES [1073741824] the warm gateway's memory tier
#   IMAGES_TOML [""] extra config for the gateway (e.g. an `[images]` section)
#   SKIP_BUILD=1     use the existing target/release/bucketgate
#   SKIP_GATEWAY=1   measure the peers only
#   BENCH_RUST_LOG [warn]   KEEP_TMP=1 keep the temp dir
# Needs: ffmpeg, libvips-tools, nginx, wrk, curl, openssl, python3, iipimage-server (installed
# with apt-get when missing and running as root).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

SECTIONS=${SECTIONS:-"thumb tiles scale mem"}
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=${THREADS:-2}
TILE_ROUNDS=${TILE_ROUNDS:-2}
WORKERS=${WORKERS:-2}
TILE=${TILE:-512}
PYRAMID_REPLICATE=${PYRAMID_REPLICATE:-"4 4"}
MEM_CLIENTS=${MEM_CLIENTS:-20}
MEM_TARGET_MIB=${MEM_TARGET_MIB:-500}
CACHE_MEMORY_BYTES=${CACHE_MEMORY_BYTES:-1073741824}
IMAGES_TOML=${IMAGES_TOML:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_GATEWAY=${SKIP_GATEWAY:-0}
BENCH_RUST_LOG=${BENCH_RUST_LOG:-warn}

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET_DIR/release/bucketgate"
IIPSRV=/usr/lib/iipimage-server/iipsrv.fcgi
THUMB_PATH='full/!256,256/0/default.jpg'

# Logging, tracked child processes (ended by pid on exit), apt installs of missing tools.
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need ffmpeg ffmpeg
need vips libvips-tools
need vipsthumbnail libvips-tools
need nginx nginx
need wrk wrk
need curl curl
need openssl openssl
need python3 python3
if has_section tiles && [[ ! -x "$IIPSRV" ]]; then
    log "installing iipimage-server (for iipsrv)"
    apt_install iipimage-server || die "$IIPSRV is missing; install the Debian package iipimage-server"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)





# CPU time (user + system) of a process so far, in ms.
cpu_ms() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f", ($14 + $15) * 1000 / hz }' "/proc/$1/stat"
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

TMP=$(mktemp -d /tmp/bucketgate-images.XXXXXX)
chmod 755 "$TMP" # nginx workers run as an unprivileged user
mkdir -p "$TMP/files/cold" "$TMP/nginx" "$TMP/gw" "$TMP/out"

ffmpeg_img() { # filter size out [-q:v]
    ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i "$1=size=$2:rate=1,$3" \
        -frames:v 1 -q:v 3 "$4" || die "ffmpeg could not make $4"
}
log "making the test images"
# The issue's noisy file: every 8x8 block full of noise, about 12 MB.
ffmpeg_img testsrc2 6000x4000 "noise=alls=25:allf=t" "$TMP/files/noisy.jpg"
# Camera-like: smooth gradients and edges with mild sensor noise, 2-4 MB.
ffmpeg_img mandelbrot 6000x4000 "noise=alls=6:allf=t" "$TMP/files/camera.jpg"
# 50 MP (8660x5773): the camera-like picture enlarged (ffmpeg's mandelbrot source refuses
# that size).
if has_section mem; then
    vips resize "$TMP/files/camera.jpg" "$TMP/files/50mp.jpg[Q=90]" 1.44334 || die "vips resize failed"
fi
# A 16x16 JPEG: vipsthumbnail's start-up cost, nearly nothing else.
ffmpeg_img testsrc2 16x16 "null" "$TMP/files/tiny.jpg"
if has_section tiles; then
    log "making the pyramid (vips replicate $PYRAMID_REPLICATE, tiffsave --tile --pyramid --bigtiff)"
    # shellcheck disable=SC2086  # two numbers
    vips replicate "$TMP/files/camera.jpg" "$TMP/big.v" $PYRAMID_REPLICATE
    vips tiffsave "$TMP/big.v" "$TMP/files/pyramid.tif" --tile --pyramid --bigtiff \
        --tile-width "$TILE" --tile-height "$TILE" --compression jpeg --Q 85 ||
        die "vips tiffsave failed"
    rm -f "$TMP/big.v"
fi
chmod -R a+rX "$TMP/files"
declare -A FILE_BYTES=()
for f in noisy camera; do
    FILE_BYTES[$f]=$(stat -c %s "$TMP/files/$f.jpg")
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 644 "$TMP/key.pem" "$TMP/cert.pem"

# A fresh key for a cold request: a hard link to the file under a name never asked for before.
# Sets KEY (not printed: a $(...) subshell would lose the counter).
COLD_N=0
KEY=""
cold_key() { # file-stem
    COLD_N=$((COLD_N + 1))
    ln "$TMP/files/$1.jpg" "$TMP/files/cold/$1-$COLD_N.jpg"
    KEY="cold%2F$1-$COLD_N.jpg"
}

# --- the gateway ---------------------------------------------------------------------------------

GW_PID=""
GW=""
Q=""
# A gateway config on stdout: fs source `bench` over $TMP/files, signed URLs, audit on stdout
# (the default), rate limits lifted (the load comes from one address), EXTRA appended.
gateway_config() { # port admin-port [extra-toml]
    gateway_toml_head "$1" "$2"
    cat <<EOF

$IMAGES_TOML
${3:-}

[sources.bench]
kind = "fs"
root = "$TMP/files"
EOF
}

start_gateway() { # name [extra-toml]; sets GW_PID, GW, Q
    local name=$1 port admin
    port=$(free_port)
    admin=$(free_port)
    [[ -f "$TMP/gw/hs256.key" ]] || openssl rand -hex 32 >"$TMP/gw/hs256.key"
    gateway_config "$port" "$admin" "${2:-}" >"$TMP/gw/$name.toml"
    local out
    out=$("$BIN" check --config "$TMP/gw/$name.toml" 2>&1) ||
        die "bucketgate check rejected $TMP/gw/$name.toml: $out"
    Q="?token=$("$BIN" token --config "$TMP/gw/$name.toml" --source bench --prefix "" --ttl 2h --role reviewer)"
    (
        cd "$TMP/gw"
        export RUST_LOG=$BENCH_RUST_LOG TOKIO_WORKER_THREADS=$WORKERS
        exec "$BIN" serve --config "$TMP/gw/$name.toml"
    ) >"$TMP/gw/$name.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    GW="https://127.0.0.1:$port"
    if ! wait_http "$GW/iiif/3/bench/tiny.jpg/info.json$Q" 30 "$GW_PID" --cacert "$TMP/cert.pem"; then
        printf '\n--- bucketgate did not serve /iiif/3/bench/tiny.jpg/info.json within 30 s; its log:\n' >&2
        cat "$TMP/gw/$name.log" >&2
        curl -s --cacert "$TMP/cert.pem" "$GW/iiif/3/bench/tiny.jpg/info.json$Q" >&2 || true
        exit 1
    fi
}

# One request to the gateway: prints request sent -> last byte in ms; dies on a non-200.
gw_get_ms() { # path (after /iiif/3/bench/)
    local out code total pre
    out=$(curl -s -o "$TMP/out/gw.jpg" -w '%{http_code} %{time_total} %{time_pretransfer}' \
        --cacert "$TMP/cert.pem" --max-time 60 "$GW/iiif/3/bench/$1$Q") || true
    read -r code total pre <<<"$out"
    [[ "$code" == 200 ]] || die "gateway: /iiif/3/bench/$1 answered ${code:-nothing}: $(head -c 300 "$TMP/out/gw.jpg")"
    awk -v t="$total" -v p="$pre" 'BEGIN { printf "%.1f", (t - p) * 1000 }'
}

declare -a LINES=()

# --- thumb -----------------------------------------------------------------------------------------

# One vipsthumbnail run as a customer would script it: sets VMS (wall ms), adds its CPU ms
# (user + system, from /usr/bin/time) to VIPS_CPU.
VIPS_CPU=0
VMS=""
vips_run() { # file
    local t0 out
    t0=$(now_ns)
    out=$(/usr/bin/time -f '%U %S' vipsthumbnail "$1" -s 256 -o "$TMP/out/vips.jpg[Q=85,strip]" 2>&1) ||
        die "vipsthumbnail $1 failed: $out"
    VMS=$(ms_since "$t0")
    VIPS_CPU=$(awk -v c="$VIPS_CPU" -v o="$(tail -1 <<<"$out")" 'BEGIN { split(o, f, " "); printf "%.0f", c + (f[1] + f[2]) * 1000 }')
}

thumb_section() {
    local f r gw_t v_t vips=() gws=() c0 c1 tiny=()
    for r in $(seq 5); do
        vips_run "$TMP/files/tiny.jpg"
        tiny+=("$VMS")
    done
    local startup
    startup=$(median "${tiny[@]}")
    for f in noisy camera; do
        vips=()
        gws=()
        VIPS_CPU=0
        local gw_cpu=0
        # One warm-up of each (page cache, the gateway's first connection), not counted.
        cold_key "$f"
        gw_get_ms "$KEY/$THUMB_PATH" >/dev/null
        vips_run "$TMP/files/$f.jpg"
        VIPS_CPU=0
        for r in $(seq "$ROUNDS"); do
            local key
            cold_key "$f"
            key=$KEY
            if ((r % 2)); then
                c0=$(cpu_ms "$GW_PID")
                gws+=("$(gw_get_ms "$key/$THUMB_PATH")")
                c1=$(cpu_ms "$GW_PID")
                vips_run "$TMP/files/$f.jpg"
                vips+=("$VMS")
            else
                vips_run "$TMP/files/$f.jpg"
                vips+=("$VMS")
                c0=$(cpu_ms "$GW_PID")
                gws+=("$(gw_get_ms "$key/$THUMB_PATH")")
                c1=$(cpu_ms "$GW_PID")
            fi
            gw_cpu=$((gw_cpu + c1 - c0))
        done
        gw_t=$(median "${gws[@]}")
        v_t=$(median "${vips[@]}")
        log "thumb $f: gateway ${gws[*]} ms; vipsthumbnail ${vips[*]} ms"
        LINES+=("thumb $f.jpg ($((FILE_BYTES[$f] / 1024)) KiB, 6000x4000 -> 256 px), median of $ROUNDS alternated: bucketgate $gw_t ms, vipsthumbnail $v_t ms; ratio $(ratio "$gw_t" "$v_t") (goal <= 0.8)")
        LINES+=("   vipsthumbnail minus its start-up ($startup ms on a 16x16 JPEG): $(awk -v v="$v_t" -v s="$startup" 'BEGIN { printf "%.1f", v - s }') ms, ratio $(ratio "$gw_t" "$(awk -v v="$v_t" -v s="$startup" 'BEGIN { print v - s }')"); CPU per thumbnail: bucketgate $((gw_cpu / ROUNDS)) ms, vipsthumbnail $((VIPS_CPU / ROUNDS)) ms")
    done
    # What the gateway sent: its size, for the record.
    LINES+=("   last outputs: bucketgate $(stat -c %s "$TMP/out/gw.jpg") B, vipsthumbnail $(stat -c %s "$TMP/out/vips.jpg") B")
}

# --- scale -------------------------------------------------------------------------------------------

scale_section() {
    local r t0 ones=() twos=() a b
    cold_key noisy
    gw_get_ms "$KEY/$THUMB_PATH" >/dev/null
    for r in $(seq "$ROUNDS"); do
        if ((r % 2)); then
            cold_key noisy
            t0=$(now_ns)
            gw_get_ms "$KEY/$THUMB_PATH" >/dev/null
            ones+=("$(ms_since "$t0")")
        fi
        cold_key noisy
        a=$KEY
        cold_key noisy
        b=$KEY
        t0=$(now_ns)
        gw_get_ms "$a/$THUMB_PATH" >/dev/null &
        local p1=$!
        gw_get_ms "$b/$THUMB_PATH" >/dev/null &
        local p2=$!
        wait "$p1" || die "scale: a thumbnail failed"
        wait "$p2" || die "scale: a thumbnail failed"
        twos+=("$(ms_since "$t0")")
        if ! ((r % 2)); then
            cold_key noisy
            t0=$(now_ns)
            gw_get_ms "$KEY/$THUMB_PATH" >/dev/null
            ones+=("$(ms_since "$t0")")
        fi
    done
    local one two
    one=$(median "${ones[@]}")
    two=$(median "${twos[@]}")
    log "scale: one ${ones[*]} ms; two ${twos[*]} ms"
    LINES+=("scale: cold thumbnails of noisy.jpg, wall until the last is done, median of $ROUNDS: one $one ms, two at once $two ms; ratio $(ratio "$two" "$one") (goal <= 1.2; $(nproc) cores, shared)")
}

# --- mem -----------------------------------------------------------------------------------------------

mem_section() {
    local i pids=() codes idle peak
    for i in $(seq "$MEM_CLIENTS"); do
        ln "$TMP/files/50mp.jpg" "$TMP/files/cold/50mp-$i.jpg"
    done
    idle=$(awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$GW_PID/status")
    for i in $(seq "$MEM_CLIENTS"); do
        curl -s -o /dev/null -w '%{http_code}\n' --cacert "$TMP/cert.pem" --max-time 120 \
            "$GW/iiif/3/bench/cold%2F50mp-$i.jpg/$THUMB_PATH$Q" >"$TMP/out/mem-$i.code" &
        pids+=("$!")
    done
    for i in "${pids[@]}"; do
        wait "$i" || true
    done
    codes=$(cat "$TMP/out"/mem-*.code | sort | uniq -c | awk '{printf "%s x%s ", $2, $1}')
    peak=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/$GW_PID/status")
    LINES+=("mem: $MEM_CLIENTS concurrent cold thumbnails of a 50 MP JPEG ($(($(stat -c %s "$TMP/files/50mp.jpg") / 1024)) KiB): statuses ${codes}; gateway RSS idle $idle MiB, peak (VmHWM) $peak MiB (goal < $MEM_TARGET_MIB MiB)")
}

# --- tiles ---------------------------------------------------------------------------------------------

# Every tile of every level, as a tile viewer asks for them from info.json (scale factors 1, 2,
# 4, ... while the level is larger than one tile): `x,y,w,h/w',/0/default.jpg`, one a line.
tile_paths() {
    local size w h
    size=$(vipsheader -f width "$TMP/files/pyramid.tif")x$(vipsheader -f height "$TMP/files/pyramid.tif")
    w=${size%x*}
    h=${size#*x}
    python3 - "$w" "$h" "$TILE" <<'PY'
import sys
w, h, t = map(int, sys.argv[1:])
s = 1
out = []
while True:
    step = t * s
    for y in range(0, h, step):
        for x in range(0, w, step):
            rw, rh = min(step, w - x), min(step, h - y)
            out.append(f"{x},{y},{rw},{rh}/{-(-rw // s)},/0/default.jpg")
    if step >= w and step >= h:
        break
    s *= 2
print("\n".join(out))
PY
}

write_wrk_lua() {
    cat >"$TMP/tiles.lua" <<'LUA'
-- Round the list of tile paths (TILE_LIST, one a line), each thread from its own offset.
local paths = {}
for line in io.lines(os.getenv("TILE_LIST")) do paths[#paths + 1] = line end
local n = 0
function setup(thread)
    thread:set("offset", n * 7919)
    n = n + 1
end
local i
function request()
    i = ((i or offset or 0) % #paths) + 1
    return wrk.format("GET", paths[i])
end
LUA
}

IIP_PIDS=()
NGINX_PID=""
NGINX_PORT=""
start_iipsrv() { # cache-mb
    local i port upstream=""
    for i in $(seq "$WORKERS"); do
        port=$(free_port)
        (
            export FILESYSTEM_PREFIX="$TMP/files/" VERBOSITY=0 MAX_IMAGE_CACHE_SIZE=$1 JPEG_QUALITY=85 \
                OMP_NUM_THREADS=1 MAX_CVT=5000
            exec "$IIPSRV" --bind "127.0.0.1:$port" --backlog 1024
        ) >"$TMP/nginx/iipsrv-$i.log" 2>&1 &
        IIP_PIDS+=("$!")
        PIDS+=("$!")
        upstream+="server 127.0.0.1:$port; "
    done
    NGINX_PORT=$(free_port)
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream iipsrv { $upstream}
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /fcgi-bin/iipsrv.fcgi {
            fastcgi_pass iipsrv;
            fastcgi_param PATH_INFO \$fastcgi_script_name;
            fastcgi_param REQUEST_METHOD \$request_method;
            fastcgi_param QUERY_STRING \$query_string;
            fastcgi_param CONTENT_TYPE \$content_type;
            fastcgi_param CONTENT_LENGTH \$content_length;
            fastcgi_param SERVER_PROTOCOL \$server_protocol;
            fastcgi_param REQUEST_URI \$request_uri;
            fastcgi_param HTTPS \$https if_not_empty;
            fastcgi_param SERVER_NAME \$server_name;
            fastcgi_param SERVER_PORT \$server_port;
        }
    }
}
EOF
    "$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ||
        die "nginx rejected its config ($TMP/nginx/nginx.conf)"
    "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "https://127.0.0.1:$NGINX_PORT/fcgi-bin/iipsrv.fcgi?IIIF=pyramid.tif/info.json" 20 "$NGINX_PID" \
        --cacert "$TMP/cert.pem" || { cat "$TMP/nginx/error.log" >&2; die "nginx + iipsrv did not serve info.json"; }
}

stop_iipsrv() {
    local pid
    stop "$NGINX_PID"
    for pid in "${IIP_PIDS[@]}"; do
        stop "$pid"
    done
    IIP_PIDS=()
}

# One pass over every URL (4 at a time), checking each answers 200.
prime() { # list-file base
    local bad
    bad=$(sed "s|^|url = \"$2|; s|\$|\"\noutput = \"/dev/null\"|" "$1" |
        curl -s --no-progress-meter --parallel --parallel-max 4 --max-time 60 --cacert "$TMP/cert.pem" \
            -w '%{http_code}\n' -K - 2>"$TMP/prime.log" | grep -cv '^200$' || true)
    [[ "$bad" == 0 ]] || log "WARNING: $bad of $(wc -l <"$1") tile URLs of $2 did not answer 200"
}

# wrk over a list; prints tiles/s, notes non-2xx.
run_tiles() { # name list-file base
    local out rps note=""
    out=$(TILE_LIST=$2 wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$TMP/tiles.lua" "$3" 2>&1) ||
        die "wrk failed on $1: $out"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    grep -q 'Non-2xx' <<<"$out" && note=" non-2xx:$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    log "tiles $1: $rps tiles/s$note"
    [[ -z "$note" ]] || LINES+=("   WARNING: tiles $1:$note")
    printf '%s' "$rps"
}

tiles_section() {
    tile_paths >"$TMP/tiles.txt"
    local n
    n=$(wc -l <"$TMP/tiles.txt")
    write_wrk_lua
    # The gateway's list carries the token; iipsrv's the FastCGI path.
    local mode r gw_rates iip_rates cache_toml
    for mode in cold warm; do
        gw_rates=()
        iip_rates=()
        if [[ $mode == cold ]]; then
            cache_toml=""
            start_iipsrv 0
        else
            cache_toml="[cache]
memory_bytes = $CACHE_MEMORY_BYTES
metadata_ttl_secs = 3600"
            start_iipsrv 1024
        fi
        start_gateway "tiles-$mode" "$cache_toml"
        sed "s|^|/iiif/3/bench/pyramid.tif/|; s|\$|$Q|" "$TMP/tiles.txt" >"$TMP/tiles-gw.txt"
        sed "s|^|/fcgi-bin/iipsrv.fcgi?IIIF=pyramid.tif/|" "$TMP/tiles.txt" >"$TMP/tiles-iip.txt"
        # Both lists once: every URL answers (and, warm, every tile is cached).
        prime "$TMP/tiles-gw.txt" "$GW"
        prime "$TMP/tiles-iip.txt" "https://127.0.0.1:$NGINX_PORT"
        for r in $(seq "$TILE_ROUNDS"); do
            if ((r % 2)); then
                gw_rates+=("$(run_tiles "bucketgate-$mode" "$TMP/tiles-gw.txt" "$GW")")
                iip_rates+=("$(run_tiles "iipsrv-$mode" "$TMP/tiles-iip.txt" "https://127.0.0.1:$NGINX_PORT")")
            else
                iip_rates+=("$(run_tiles "iipsrv-$mode" "$TMP/tiles-iip.txt" "https://127.0.0.1:$NGINX_PORT")")
                gw_rates+=("$(run_tiles "bucketgate-$mode" "$TMP/tiles-gw.txt" "$GW")")
            fi
        done
        stop "$GW_PID"
        stop_iipsrv
        local g i
        g=$(printf '%s\n' "${gw_rates[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
        i=$(printf '%s\n' "${iip_rates[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
        LINES+=("tiles $mode: $n tile URLs of pyramid.tif ($(vipsheader -f width "$TMP/files/pyramid.tif")x$(vipsheader -f height "$TMP/files/pyramid.tif"), $TILE px JPEG tiles), wrk c=$CONNECTIONS, mean of $TILE_ROUNDS alternated ${DURATION} s runs: bucketgate $g tiles/s, iipsrv $i tiles/s; ratio $(ratio "$g" "$i") (goal >= 1.0)")
    done
}

# --- run -------------------------------------------------------------------------------------------

if [[ "$SKIP_GATEWAY" == "1" ]]; then
    has_section tiles || die "SKIP_GATEWAY=1 only measures iipsrv (the tiles section)"
    tile_paths >"$TMP/tiles.txt"
    write_wrk_lua
    sed "s|^|/fcgi-bin/iipsrv.fcgi?IIIF=pyramid.tif/|" "$TMP/tiles.txt" >"$TMP/tiles-iip.txt"
    start_iipsrv 0
    prime "$TMP/tiles-iip.txt" "https://127.0.0.1:$NGINX_PORT"
    LINES+=("tiles cold: iipsrv $(run_tiles iipsrv-cold "$TMP/tiles-iip.txt" "https://127.0.0.1:$NGINX_PORT") tiles/s ($(wc -l <"$TMP/tiles.txt") URLs)")
    stop_iipsrv
else
    if has_section thumb || has_section scale; then
        start_gateway thumb
        has_section thumb && thumb_section
        has_section scale && scale_section
        stop "$GW_PID"
    fi
    if has_section mem; then
        start_gateway mem
        mem_section
        stop "$GW_PID"
    fi
    has_section tiles && tiles_section
fi

printf '\nbucketgate image benchmarks: %s cores (%s), %s gateway threads / iipsrv processes; %s\n' \
    "$(nproc)" "$(uname -r)" "$WORKERS" "$(vips --version)"
for line in "${LINES[@]}"; do
    printf '  %s\n' "$line"
done
