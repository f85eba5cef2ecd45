# Shared by the bench scripts (sourced, not run): logging, the child processes every script
# tracks by pid and ends by pid on exit (and its $TMP), and installing a missing tool with apt.
# The sourcing script sets SECTIONS before calling has_section, and TMP once it makes one.

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}
has_section() { [[ " $SECTIONS " == *" $1 "* ]]; }

# --- processes: every child is tracked by pid and ended by pid on exit ------------------------

declare -a PIDS=()
TMP=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "${KEEP_TMP:-0}" == "1" ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# --- tools ---------------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    if [[ $APT_UPDATED -eq 0 ]]; then
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

need() {
    local cmd=$1 pkg=$2
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [[ -x "/usr/sbin/$cmd" ]]; then
        log "installing $pkg (for $cmd)"
        apt_install "$pkg" || die "$cmd is missing; install the Debian package $pkg"
    fi
}

# --- small helpers --------------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, seconds, pid-to-watch, [curl args...]: wait until url answers 200
    local url=$1 secs=$2 pid=$3 deadline
    shift 3
    deadline=$((SECONDS + secs))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true) == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

ratio() { # a b -> a/b with two decimals, or "-"
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || a == "-" || b == "" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
median() { # numbers... -> median (mean of the middle two for an even count)
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- gateway config pieces (TOML on stdout) -------------------------------------------------

# [listener] on `port` with $TMP's certificate, [admin] on `admin-port`, loopback [network],
# the rate limits lifted (the load comes from one address), and signed URLs (?token=) with the
# bench key in $TMP/gw/hs256.key.
gateway_toml_head() { # port admin-port
    cat <<EOF
[listener]
addr = "127.0.0.1:$1"
tls_cert = "$TMP/cert.pem"
tls_key = "$TMP/key.pem"

[admin]
addr = "127.0.0.1:$2"

[network]
allow = ["127.0.0.0/8"]

[rate_limits]
per_ip_rps = 1000000
per_ip_burst = 1000000
per_subject_rps = 1000000
per_subject_burst = 1000000
max_connections_per_ip = 100000

# Every request carries a signed URL (?token=), verified and authorized as in production.
[identity]
audience = "bucketgate"

[[identity.keys]]
kid = "bench"
alg = "HS256"
secret = "file:$TMP/gw/hs256.key"
EOF
}

# An S3 source `name` over bucket `bench` at 127.0.0.1:`port`, path-style, with the bench access
# key ($S3_ACCESS_KEY) and its secret from env BENCH_S3_SECRET_KEY.
s3_source_toml() { # name port
    cat <<EOF
[sources.$1]
kind = "s3"
bucket = "bench"
region = "us-east-1"
endpoint = "http://127.0.0.1:$2"
path_style = true
credentials = { access_key_id = "$S3_ACCESS_KEY", secret_access_key = "env:BENCH_S3_SECRET_KEY" }
EOF
}
