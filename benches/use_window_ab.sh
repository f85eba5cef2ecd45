#!/usr/bin/env bash
# A/B for issue 16: the 64 KiB signed-URL load test with a plain token vs a use-window token
# (`sign --idle 10m --max 8h --no-bind`), on one gateway (the embedded default, run in a temp dir:
# signed URL on every request, its default audit and memory cache), wrk alternated ROUNDS times.
# Prints each run's req/s and the ratio of the means (window / plain; goal: within noise of 1).
#
#   cargo build --release && benches/use_window_ab.sh
#
# Environment: DUR [5] seconds per run, ROUNDS [3], CONNECTIONS [50], BIN [target/release/bucketgate]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$(pwd)/target/release/bucketgate}
DUR=${DUR:-5} ROUNDS=${ROUNDS:-3} CONNECTIONS=${CONNECTIONS:-50}
[[ -x "$BIN" ]] || { echo "use_window_ab.sh: build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "use_window_ab.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
D=$(mktemp -d)
cd "$D"
mkdir data
head -c 65536 /dev/urandom >data/64k.bin
"$BIN" serve >gw.log 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true; wait $GW 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 100); do
    curl -sk -o /dev/null https://127.0.0.1:8443/ && break
    sleep 0.1
done
plain=$("$BIN" sign --source local --key 64k.bin --ttl 1h)
window=$("$BIN" sign --source local --key 64k.bin --ttl 1h --idle 10m --max 8h --no-bind)
for u in "$plain" "$window"; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' "$u")
    [[ "$code" == 200 ]] || { echo "use_window_ab.sh: a signed URL got $code" >&2; exit 1; }
done
declare -A sum=([plain]=0 [window]=0)
for r in $(seq "$ROUNDS"); do
    for v in plain window; do
        rps=$(wrk -t2 -c"$CONNECTIONS" -d"${DUR}s" "${!v}" | awk '/Requests\/sec/ {print $2}')
        printf '%-6s round %s: %s req/s\n' "$v" "$r" "$rps"
        sum[$v]=$(awk -v a="${sum[$v]}" -v b="$rps" 'BEGIN {print a + b}')
    done
done
awk -v p="${sum[plain]}" -v w="${sum[window]}" -v n="$ROUNDS" \
    'BEGIN {printf "mean plain %.0f, window %.0f req/s; window/plain %.2f\n", p/n, w/n, w/p}'
