#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and helpers are called through traps and indirection
# Video benchmarks (issue 14): bucketgate's posters, HLS segments and web.mp4 side by side with
# the ffmpeg CLI a customer would otherwise script, in one run, on loopback only.
#
#   benches/video.sh
#
# 1. builds bucketgate (`cargo build --release --locked`);
# 2. makes the sources in a temp dir with ffmpeg: a CLIP_SECS s 1920x1080 25 fps H.264/AAC clip
#    (lavfi testsrc2 with temporal noise, CLIP_KBPS kbit/s video, GOP 2 s, faststart); for hls a
#    2-hour MP4 of that clip looped (`-stream_loop 119 -c copy`, index at the end, about 1.4 GB);
#    for remux a REMUX_MIB MiB moov-at-end MP4 the same way, put into s3s-fs (started as
#    benches/load.sh starts it, `cargo install`ed when missing); a self-signed ECDSA certificate;
# 3. the gateway as deployed: fs source `bench` and s3 source `s3`, a signed URL token on every
#    request, audit on (stdout, to its log), rate limits lifted, a [cache] memory tier,
#    [video] with its defaults (work_dir in the temp dir) and VIDEO_TOML. Gateway times are
#    curl's request sent -> last byte (TLS handshake excluded); the peers' are the wall time of
#    the process, as a customer would run it;
# 4. poster: `poster.jpg?t=POSTER_T` of the clip, cold (a fresh key every request: a hard link
#    under a new name, so nothing is warm but the page cache) vs `ffmpeg -ss POSTER_T -i clip.mp4
#    -frames:v 1 -f image2 out.jpg` on the same local file, alternated (who goes first swaps
#    every round) for ROUNDS rounds; medians. Goal: gateway / ffmpeg <= 1.1. Then the cached
#    poster: the same URL again, wrk -c1 for CACHED_SECS s, latency p50. Goal: < 5 ms;
# 5. hls: the 2-hour source, a fresh key each time: the playlist + segment 0 (a player
#    starting), and the playlist + the segment that starts at or after HLS_SEEK_S (a player
#    opening at minute 60), each alternated with ffmpeg cutting that same segment alone from
#    the local file (`-ss S -i long.mp4 -t D -frames:v N -map 0 -c copy -f mpegts`) for
#    HLS_ROUNDS rounds. Goals: < 1.5 s each (the ratio to ffmpeg is printed for the record);
# 6. remux: `web.mp4` of the moov-at-end object in S3, a fresh gateway (new work dir, empty
#    cache) each round, time to the complete answer (the remux happens before the first byte)
#    vs curl downloading the object from s3s-fs + ffmpeg's `-map 0 -c copy -movflags
#    +faststart` of the local copy, alternated for REMUX_ROUNDS rounds; both outputs checked
#    (moov before mdat). Goal: gateway / (download + ffmpeg) <= 1.2;
# 7. prints the figures and goals. Ratios only mean something within one run: the machine is
#    shared, so rounds alternate and medians are reported.
#
# Environment (defaults in brackets):
#   SECTIONS ["poster hls remux"]  any subset
#   ROUNDS [7] poster rounds   HLS_ROUNDS [3]   REMUX_ROUNDS [2]   CACHED_SECS [5]
#   CLIP_FILE [""] use this clip instead of making one (1080p 25 fps H.264/AAC, GOP 2 s: a
#                  kept temp dir's files/clip.mp4 saves minutes when iterating)
#   CLIP_SECS [60]  CLIP_KBPS [1500]  POSTER_T [5]  POSTER_W [""] (poster width; "" = full size)
#   HLS_LOOPS [120] clip copies in the long source (120 x 60 s = 2 h)   HLS_SEEK_S [3600]
#   SEGMENT_SECS [4] the segment length the peer assumes when there is no playlist
#   REMUX_MIB [1024]  size of the remux source (whole clips, at least this)
#   WORKERS [2] gateway runtime threads (TOKIO_WORKER_THREADS)
#   CACHE_MEMORY_BYTES [268435456] the gateway's [cache] memory tier
#   VIDEO_TOML [""] extra keys of the gateway's [video] section (e.g. `jobs = 4`)
#   SKIP_BUILD=1     use the existing target/release/bucketgate
#   SKIP_GATEWAY=1   measure the peers only
#   BENCH_RUST_LOG [warn]   KEEP_TMP=1 keep the temp dir   TMPDIR [/tmp] where it is made
# Needs: ffmpeg, wrk, curl, openssl, python3 (installed with apt-get when missing and running
# as root); s3s-fs 0.14 for remux (cargo install, pinned: newer needs rustc 1.96); about 6 GB
# of free disk in TMPDIR for all sections (checked).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

SECTIONS=${SECTIONS:-"poster hls remux"}
ROUNDS=${ROUNDS:-7}
HLS_ROUNDS=${HLS_ROUNDS:-3}
REMUX_ROUNDS=${REMUX_ROUNDS:-2}
CACHED_SECS=${CACHED_SECS:-5}
CLIP_SECS=${CLIP_SECS:-60}
CLIP_KBPS=${CLIP_KBPS:-1500}
POSTER_T=${POSTER_T:-5}
POSTER_W=${POSTER_W:-}
HLS_LOOPS=${HLS_LOOPS:-120}
HLS_SEEK_S=${HLS_SEEK_S:-3600}
SEGMENT_SECS=${SEGMENT_SECS:-4}
REMUX_MIB=${REMUX_MIB:-1024}
WORKERS=${WORKERS:-2}
CACHE_MEMORY_BYTES=${CACHE_MEMORY_BYTES:-268435456}
VIDEO_TOML=${VIDEO_TOML:-}
CLIP_FILE=${CLIP_FILE:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_GATEWAY=${SKIP_GATEWAY:-0}
BENCH_RUST_LOG=${BENCH_RUST_LOG:-warn}
S3S_FS_VERSION=0.14.1
FPS=25

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET_DIR/release/bucketgate"

# Logging, tracked child processes (ended by pid on exit), apt installs of missing tools.
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need ffmpeg ffmpeg
need ffprobe ffmpeg
need wrk wrk
need curl curl
need openssl openssl
need python3 python3

sum() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a + b }'; }
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.0f", b / 1048576 }'; }
verdict() { # value op goal -> "ok" or "MISSED"
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN {
        if (v == "-" || v == "") { print "no figure"; exit }
        ok = (op == "<=") ? (v + 0 <= g + 0) : (v + 0 < g + 0)
        print ok ? "ok" : "MISSED" }'
}

# ffmpeg as a customer scripts it: quiet, no stdin, overwrite. Dies with its stderr on failure.
ff() {
    local out
    out=$(ffmpeg -hide_banner -loglevel error -nostdin -y "$@" 2>&1) || die "ffmpeg $* failed: $out"
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

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bucketgate-video.XXXXXX")
mkdir -p "$TMP/files/cold" "$TMP/gw" "$TMP/out" "$TMP/s3root/bench"

# Disk: the long source (~1.4 GB; hard links are free), the remux source in s3s-fs, its
# downloaded copy, ffmpeg's output and the gateway's rendition (REMUX_MIB each), plus slack.
need_mib=512
has_section hls && need_mib=$((need_mib + HLS_LOOPS * CLIP_SECS * (CLIP_KBPS + 150) / 8 / 1024))
has_section remux && need_mib=$((need_mib + 5 * REMUX_MIB))
avail_mib=$(df -Pm "$TMP" | awk 'NR == 2 { print $4 }')
((avail_mib > need_mib)) || die "$TMP has $avail_mib MiB free; these sections need about $need_mib MiB"

if [[ -n "$CLIP_FILE" ]]; then
    log "using $CLIP_FILE as the clip"
    cp "$CLIP_FILE" "$TMP/files/clip.mp4"
else
    log "making a ${CLIP_SECS} s 1080p H.264/AAC clip (${CLIP_KBPS} kbit/s; a few minutes on a busy machine)"
    ff -f lavfi -i "testsrc2=size=1920x1080:rate=$FPS,noise=alls=10:allf=t" \
        -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$CLIP_SECS" -map 0:v -map 1:a \
        -c:v libx264 -preset veryfast -b:v "${CLIP_KBPS}k" -maxrate "$((CLIP_KBPS * 4 / 3))k" \
        -bufsize "$((CLIP_KBPS * 2))k" -g $((2 * FPS)) -keyint_min $((2 * FPS)) -sc_threshold 0 \
        -pix_fmt yuv420p -c:a aac -b:a 96k -movflags +faststart "$TMP/files/clip.mp4"
fi
printf 'ready\n' >"$TMP/files/ready.txt"
if has_section hls; then
    log "looping it $HLS_LOOPS times into long.mp4 (-c copy, index at the end)"
    ff -stream_loop $((HLS_LOOPS - 1)) -i "$TMP/files/clip.mp4" -map 0 -c copy "$TMP/files/long.mp4"
    LONG_SECS=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$TMP/files/long.mp4")
fi
if has_section remux; then
    loops=$(((REMUX_MIB * 1048576 + $(stat -c %s "$TMP/files/clip.mp4") - 1) / $(stat -c %s "$TMP/files/clip.mp4")))
    log "looping it $loops times into remux.mp4 (-c copy, moov at the end)"
    ff -stream_loop $((loops - 1)) -i "$TMP/files/clip.mp4" -map 0 -c copy "$TMP/remux-src.mp4"
fi
chmod -R a+rX "$TMP/files"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

# A fresh key for a cold request: a hard link to the file under a name never asked for before.
# Sets KEY (URL-encoded, `/` as %2F) and KEY_FILE (not printed: a $(...) subshell would lose the
# counter).
COLD_N=0
KEY=""
cold_key() { # file-stem (an .mp4 in $TMP/files)
    COLD_N=$((COLD_N + 1))
    ln "$TMP/files/$1.mp4" "$TMP/files/cold/$1-$COLD_N.mp4"
    KEY="cold%2F$1-$COLD_N.mp4"
}

# Top-level MP4 boxes in order, one a line (checks that an output has its index in front).
mp4_boxes() {
    python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    while True:
        h = f.read(8)
        if len(h) < 8:
            break
        size, kind = struct.unpack(">I4s", h)
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            f.seek(size - 16, 1)
        elif size == 0:
            print(kind.decode("latin-1"))
            break
        else:
            f.seek(size - 8, 1)
        print(kind.decode("latin-1"))
PY
}
moov_first() { # file -> dies unless moov comes before mdat
    local order
    order=$(mp4_boxes "$1" | grep -E '^(moov|mdat)$' | tr '\n' ' ')
    [[ "$order" == "moov mdat "* ]] || die "$1 is not faststart (top-level boxes: $order)"
}

# --- s3s-fs (as benches/load.sh starts it) ---------------------------------------------------------

S3_PORT=""      # s3s-fs with SigV4 credentials, for the gateway
S3_ANON_PORT="" # s3s-fs without auth, for the peer's download
S3_ACCESS_KEY=BENCHACCESSKEY
S3_SECRET_KEY=benchsecretkey0123456789
start_s3() {
    local s3s auth_pid
    s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    if [[ ! -x "$s3s" ]]; then
        log "installing s3s-fs $S3S_FS_VERSION (cargo install, a few minutes once)"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked >"$TMP/s3s-install.log" 2>&1 ||
            die "cargo install s3s-fs failed (see $TMP/s3s-install.log; KEEP_TMP=1 keeps it)"
    fi
    S3_PORT=$(free_port)
    S3_ANON_PORT=$(free_port)
    "$s3s" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
        --secret-key "$S3_SECRET_KEY" "$TMP/s3root" >"$TMP/s3s-auth.log" 2>&1 &
    PIDS+=("$!")
    auth_pid=$!
    printf 'ready\n' >"$TMP/s3root/bench/ready.txt"
    "$s3s" --host 127.0.0.1 --port "$S3_ANON_PORT" "$TMP/s3root" >"$TMP/s3s-anon.log" 2>&1 &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$S3_ANON_PORT/bench/ready.txt" 20 "$!" ||
        { cat "$TMP/s3s-anon.log" >&2; die "s3s-fs did not start"; }
    for _ in $(seq 100); do
        kill -0 "$auth_pid" 2>/dev/null || { cat "$TMP/s3s-auth.log" >&2; die "s3s-fs (auth) exited"; }
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" || true) != 000 ]] && break
        sleep 0.1
    done
}

# Put a file into the bucket through the anonymous endpoint (s3s-fs then keeps its MD5 and does
# not hash the file on every GET, as it does for files copied into its directory).
put_object() { # key file
    curl -sf -T "$2" "http://127.0.0.1:$S3_ANON_PORT/bench/$1" >/dev/null || die "PUT $1 to s3s-fs failed"
}

# --- the gateway ---------------------------------------------------------------------------------

GW_PID=""
GW=""
TOKEN=""    # token=... for source bench
TOKEN_S3="" # token=... for source s3
GW_RUNS=0
gateway_config() { # port admin-port
    local s3_source=""
    if [[ -n "$S3_PORT" ]]; then
        s3_source="
$(s3_source_toml s3 "$S3_PORT")"
    fi
    gateway_toml_head "$1" "$2"
    cat <<EOF

[cache]
memory_bytes = $CACHE_MEMORY_BYTES
metadata_ttl_secs = 3600

[video]
work_dir = "$GW_DIR/video"
$VIDEO_TOML

[sources.bench]
kind = "fs"
root = "$TMP/files"
$s3_source
EOF
}

# A fresh gateway in a fresh work dir (its rendition store and cache start empty). Sets GW_PID,
# GW, GW_DIR, TOKEN and TOKEN_S3.
GW_DIR=""
start_gateway() {
    local port admin out
    GW_RUNS=$((GW_RUNS + 1))
    GW_DIR="$TMP/gw/run-$GW_RUNS"
    mkdir -p "$GW_DIR"
    port=$(free_port)
    admin=$(free_port)
    [[ -f "$TMP/gw/hs256.key" ]] || openssl rand -hex 32 >"$TMP/gw/hs256.key"
    gateway_config "$port" "$admin" >"$GW_DIR/config.toml"
    out=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" check --config "$GW_DIR/config.toml" 2>&1) ||
        die "bucketgate check rejected $GW_DIR/config.toml: $out"
    TOKEN="token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$GW_DIR/config.toml" --source bench --prefix "" --ttl 4h --role reviewer)"
    TOKEN_S3=""
    [[ -z "$S3_PORT" ]] ||
        TOKEN_S3="token=$(BENCH_S3_SECRET_KEY=$S3_SECRET_KEY "$BIN" token --config "$GW_DIR/config.toml" --source s3 --prefix "" --ttl 4h --role reviewer)"
    (
        cd "$GW_DIR"
        export BENCH_S3_SECRET_KEY=$S3_SECRET_KEY RUST_LOG=$BENCH_RUST_LOG TOKIO_WORKER_THREADS=$WORKERS
        exec "$BIN" serve --config "$GW_DIR/config.toml"
    ) >"$GW_DIR/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    GW="https://127.0.0.1:$port"
    if ! wait_http "$GW/o/bench/ready.txt?$TOKEN" 30 "$GW_PID" --cacert "$TMP/cert.pem"; then
        printf '\n--- bucketgate did not serve /o/bench/ready.txt within 30 s; its log:\n' >&2
        cat "$GW_DIR/gateway.log" >&2
        exit 1
    fi
}

stop_gateway() { # and drop its work dir (renditions), keeping the log
    stop "$GW_PID"
    GW_PID=""
    find "$GW_DIR" -mindepth 1 -maxdepth 1 ! -name gateway.log ! -name config.toml -exec rm -rf {} +
}

# One request to the gateway: sets GW_MS (request sent -> last byte) and TTFB_MS (request sent
# -> first byte), in ms; dies on a non-200. The body goes to the given file.
GW_MS=""
TTFB_MS=""
gw_get() { # path-and-query (after the host) [out]
    local out code total pre start file=${2:-$TMP/out/gw.bin}
    out=$(curl -s -o "$file" -w '%{http_code} %{time_total} %{time_pretransfer} %{time_starttransfer}' \
        --cacert "$TMP/cert.pem" --max-time 900 "$GW$1") || true
    read -r code total pre start <<<"$out"
    [[ "$code" == 200 ]] || die "gateway: ${1%%\?*} answered ${code:-nothing}: $(head -c 300 "$file")"
    TTFB_MS=$(awk -v t="$start" -v p="$pre" 'BEGIN { printf "%.1f", (t - p) * 1000 }')
    GW_MS=$(awk -v t="$total" -v p="$pre" 'BEGIN { printf "%.1f", (t - p) * 1000 }')
}

# The wall time of a command in ms (the peers, run as a customer would).
wall_ms() {
    local t0
    t0=$(now_ns)
    "$@"
    ms_since "$t0"
}

declare -a LINES=()

# --- poster ----------------------------------------------------------------------------------------

POSTER_Q="t=$POSTER_T${POSTER_W:+&w=$POSTER_W}"
ff_poster() {
    ff -ss "$POSTER_T" -i "$TMP/files/clip.mp4" -frames:v 1 ${POSTER_W:+-vf "scale=$POSTER_W:-2"} \
        -f image2 "$TMP/out/ffmpeg.jpg"
}

poster_section() {
    local r gws=() ffs=() g f
    # One warm-up of each (page cache, the gateway's first connection, ffmpeg's libraries).
    ff_poster
    if [[ -n "$GW" ]]; then
        cold_key clip
        gw_get "/v/bench/$KEY/poster.jpg?$POSTER_Q&$TOKEN"
    fi
    for r in $(seq "$ROUNDS"); do
        if [[ -n "$GW" ]]; then
            cold_key clip
            if ((r % 2)); then
                gw_get "/v/bench/$KEY/poster.jpg?$POSTER_Q&$TOKEN" "$TMP/out/gw.jpg"
                gws+=("$GW_MS")
                ffs+=("$(wall_ms ff_poster)")
            else
                ffs+=("$(wall_ms ff_poster)")
                gw_get "/v/bench/$KEY/poster.jpg?$POSTER_Q&$TOKEN" "$TMP/out/gw.jpg"
                gws+=("$GW_MS")
            fi
        else
            ffs+=("$(wall_ms ff_poster)")
        fi
    done
    f=$(median "${ffs[@]}")
    g=$(median "${gws[@]}")
    log "poster: gateway ${gws[*]} ms; ffmpeg ${ffs[*]} ms"
    local what
    what="poster t=$POSTER_T s of a ${CLIP_SECS} s 1080p H.264 file ($(mib "$TMP/files/clip.mp4") MiB)${POSTER_W:+, w=$POSTER_W}"
    if [[ -z "$GW" ]]; then
        LINES+=("$what, median of $ROUNDS: ffmpeg CLI $f ms")
        return
    fi
    local rat
    rat=$(ratio "$g" "$f")
    LINES+=("$what, cold, median of $ROUNDS alternated: bucketgate $g ms, ffmpeg CLI $f ms; ratio $rat (goal <= 1.1: $(verdict "$rat" "<=" 1.1))")
    LINES+=("   outputs: bucketgate $(stat -c %s "$TMP/out/gw.jpg") B, ffmpeg CLI $(stat -c %s "$TMP/out/ffmpeg.jpg") B")

    # Cached: the same URL after the first, one connection, back to back.
    local url="/v/bench/$KEY/poster.jpg?$POSTER_Q&$TOKEN" out p50 p99 reqs note=""
    gw_get "$url"
    out=$(wrk -t1 -c1 -d"${CACHED_SECS}s" --latency "$GW$url" 2>&1) || die "wrk failed: $out"
    p50=$(awk '/^ +50%/ { print $2 }' <<<"$out")
    p99=$(awk '/^ +99%/ { print $2 }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    grep -q 'Non-2xx' <<<"$out" && note=" WARNING: non-2xx $(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    local p50ms
    p50ms=$(to_ms "$p50")
    LINES+=("poster cached (same URL again), wrk -c1 ${CACHED_SECS} s, $reqs requests: p50 $p50, p99 $p99 (goal p50 < 5 ms: $(verdict "$p50ms" "<" 5))$note")
}

to_ms() { # wrk's "1.23ms" / "850.00us" / "1.20s" -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else print "-" }'
}

# --- hls -------------------------------------------------------------------------------------------

# The segment of a playlist that starts at or after SECONDS: prints "uri start duration".
pick_segment() { # playlist-file seconds
    python3 - "$1" "$2" <<'PY'
import sys
at = float(sys.argv[2])
t = 0.0
dur = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("#EXTINF:"):
        dur = float(line[8:].split(",")[0])
    elif line and not line.startswith("#"):
        if t >= at - 1e-6:
            print(line, "%.6f" % t, "%.6f" % dur)
            sys.exit(0)
        t += dur or 0.0
sys.exit("no segment starts at or after %s s (playlist ends at %.1f s)" % (at, t))
PY
}

# A segment URI from the playlist as a path and query on the gateway.
seg_path() { # uri playlist-path
    case $1 in
    https://*) printf '/%s' "${1#https://*/}" ;;
    /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$(dirname "${2%%\?*}")" "$1" ;;
    esac
}

# ffmpeg cutting one segment alone from the local file: `start duration`.
ff_segment() {
    local frames
    frames=$(awk -v d="$2" -v f="$FPS" 'BEGIN { printf "%d", d * f + 0.5 }')
    ff -ss "$1" -i "$TMP/files/long.mp4" -t "$2" -frames:v "$frames" -map 0 -c copy -f mpegts "$TMP/out/ffmpeg.ts"
}

# One cold player start at `seconds`: a fresh key, the playlist, then the segment starting at or
# after it. Sets HLS_PL_MS, HLS_SEG_MS, HLS_START, HLS_DUR.
HLS_PL_MS=""
HLS_SEG_MS=""
HLS_START=""
HLS_DUR=""
gw_hls() { # seconds
    local pl uri
    cold_key long
    pl="/v/bench/$KEY/hls/index.m3u8?$TOKEN"
    gw_get "$pl" "$TMP/out/index.m3u8"
    HLS_PL_MS=$GW_MS
    read -r uri HLS_START HLS_DUR <<<"$(pick_segment "$TMP/out/index.m3u8" "$1")" || die "playlist: no segment at $1 s"
    gw_get "$(seg_path "$uri" "$pl")" "$TMP/out/gw.ts"
    HLS_SEG_MS=$GW_MS
}

hls_section() {
    local at name r gws=() pls=() segs=() ffs=() start dur
    for at in 0 "$HLS_SEEK_S"; do
        name="segment 0"
        ((at == 0)) || name="seek to $((at / 60)) min"
        gws=()
        pls=()
        segs=()
        ffs=()
        # The peer's segment: the playlist's when there is a gateway, else SEGMENT_SECS from `at`.
        start=$at
        dur=$SEGMENT_SECS
        if [[ -n "$GW" ]]; then
            gw_hls "$at"
            start=$HLS_START
            dur=$HLS_DUR
        fi
        ff_segment "$start" "$dur"
        for r in $(seq "$HLS_ROUNDS"); do
            if ((r % 2)) && [[ -n "$GW" ]]; then
                gw_hls "$at"
                pls+=("$HLS_PL_MS")
                segs+=("$HLS_SEG_MS")
                gws+=("$(sum "$HLS_PL_MS" "$HLS_SEG_MS")")
            fi
            ffs+=("$(wall_ms ff_segment "$start" "$dur")")
            if ! ((r % 2)) && [[ -n "$GW" ]]; then
                gw_hls "$at"
                pls+=("$HLS_PL_MS")
                segs+=("$HLS_SEG_MS")
                gws+=("$(sum "$HLS_PL_MS" "$HLS_SEG_MS")")
            fi
        done
        log "hls $name: gateway playlist ${pls[*]} ms, segment ${segs[*]} ms; ffmpeg ${ffs[*]} ms"
        local what f g
        what="hls $name of a $(awk -v s="${LONG_SECS:-0}" 'BEGIN { printf "%.0f", s / 60 }') min 1080p H.264/AAC MP4 ($(mib "$TMP/files/long.mp4") MiB, index at the end), segment at $start s, $dur s"
        f=$(median "${ffs[@]}")
        if [[ -z "$GW" ]]; then
            LINES+=("$what, median of $HLS_ROUNDS: ffmpeg cutting it alone $f ms")
            continue
        fi
        g=$(median "${gws[@]}")
        LINES+=("$what, cold, median of $HLS_ROUNDS alternated: bucketgate playlist + segment $g ms (playlist $(median "${pls[@]}") ms, segment $(median "${segs[@]}") ms) (goal < 1500 ms: $(verdict "$g" "<" 1500)); ffmpeg cutting it alone $f ms, ratio $(ratio "$g" "$f")")
    done
    LINES+=("   last segment outputs: bucketgate $(stat -c %s "$TMP/out/gw.ts" 2>/dev/null || echo -) B, ffmpeg $(stat -c %s "$TMP/out/ffmpeg.ts") B")
}

# --- remux -------------------------------------------------------------------------------------------

peer_download() { curl -sf -o "$TMP/out/download.mp4" "http://127.0.0.1:$S3_ANON_PORT/bench/remux.mp4" || die "download from s3s-fs failed"; }
peer_remux() { ff -i "$TMP/out/download.mp4" -map 0 -c copy -movflags +faststart "$TMP/out/ffmpeg-web.mp4"; }

remux_section() {
    local r gws=() firsts=() dls=() rms=() peers=() d m
    log "putting remux.mp4 ($(mib "$TMP/remux-src.mp4") MiB) into s3s-fs"
    put_object remux.mp4 "$TMP/remux-src.mp4"
    rm -f "$TMP/remux-src.mp4"
    for r in $(seq "$REMUX_ROUNDS"); do
        if ((r % 2)) && [[ "$SKIP_GATEWAY" != "1" ]]; then
            start_gateway
            gw_get "/v/s3/remux.mp4/web.mp4?$TOKEN_S3" "$TMP/out/gw-web.mp4"
            gws+=("$GW_MS")
            firsts+=("$TTFB_MS")
            stop_gateway
            moov_first "$TMP/out/gw-web.mp4"
            rm -f "$TMP/out/gw-web.mp4"
        fi
        d=$(wall_ms peer_download)
        m=$(wall_ms peer_remux)
        moov_first "$TMP/out/ffmpeg-web.mp4"
        dls+=("$d")
        rms+=("$m")
        peers+=("$(sum "$d" "$m")")
        rm -f "$TMP/out/download.mp4"
        if ! ((r % 2)) && [[ "$SKIP_GATEWAY" != "1" ]]; then
            start_gateway
            gw_get "/v/s3/remux.mp4/web.mp4?$TOKEN_S3" "$TMP/out/gw-web.mp4"
            gws+=("$GW_MS")
            firsts+=("$TTFB_MS")
            stop_gateway
            moov_first "$TMP/out/gw-web.mp4"
            rm -f "$TMP/out/gw-web.mp4"
        fi
    done
    log "remux: gateway ${gws[*]} ms (first byte ${firsts[*]} ms); download ${dls[*]} ms + ffmpeg ${rms[*]} ms"
    local what p g
    what="remux of a $(mib "$TMP/out/ffmpeg-web.mp4") MiB moov-at-end MP4 in S3 (s3s-fs) to faststart"
    p=$(median "${peers[@]}")
    rm -f "$TMP/out/ffmpeg-web.mp4"
    if [[ "$SKIP_GATEWAY" == "1" ]]; then
        LINES+=("$what, median of $REMUX_ROUNDS: download $(median "${dls[@]}") ms + ffmpeg -c copy -movflags +faststart $(median "${rms[@]}") ms = $p ms")
        return
    fi
    g=$(median "${gws[@]}")
    local rat
    rat=$(ratio "$g" "$p")
    LINES+=("$what, cold (fresh gateway each round), median of $REMUX_ROUNDS alternated: bucketgate web.mp4 $g ms to the last byte (first byte $(median "${firsts[@]}") ms); download $(median "${dls[@]}") ms + ffmpeg -c copy -movflags +faststart $(median "${rms[@]}") ms = $p ms; ratio $rat (goal <= 1.2: $(verdict "$rat" "<=" 1.2))")
}

# --- run -------------------------------------------------------------------------------------------

has_section remux && start_s3
if [[ "$SKIP_GATEWAY" != "1" ]] && { has_section poster || has_section hls; }; then
    start_gateway
fi
has_section poster && poster_section
has_section hls && hls_section
if [[ -n "$GW_PID" ]]; then
    stop_gateway
    GW=""
fi
has_section remux && remux_section

printf '\nbucketgate video benchmarks: %s cores (%s), %s gateway threads; %s\n' \
    "$(nproc)" "$(uname -r)" "$WORKERS" "$(ffmpeg -version | head -1 | cut -d' ' -f1-3)"
for line in "${LINES[@]}"; do
    printf '  %s\n' "$line"
done
