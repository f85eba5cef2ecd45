#!/usr/bin/env bash
# Build figures of one commit, measured in a fresh clone: a clean `cargo test --no-run`, the
# rebuild after touching src/lib.rs, the number of test executables, target/ after the build,
# then `./tests/run` and target/ after it. CI=true (no incremental builds), as in CI.
#
#   benches/build_figures.sh [COMMIT] [DIR]      (defaults: HEAD, a temp dir)
set -uo pipefail
commit=${1:-HEAD}
dir=${2:-$(mktemp -d)/bucketgate}
repo=$(cd "$(dirname "$0")/.." && pwd)
git clone -q "$repo" "$dir" && cd "$dir" && git checkout -q "$commit" || exit 1
# Reuse the source checkout's venv (moto, PyJWT, signxml) when there is one.
[[ -d "$repo/.venv" ]] && ln -s "$repo/.venv" .venv
export CI=true CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
t0=$SECONDS; cargo test --no-run >build.log 2>&1 || { echo "build failed: $dir/build.log"; exit 1; }
echo "clean cargo test --no-run: $((SECONDS - t0)) s"
touch src/lib.rs; t0=$SECONDS; cargo test --no-run >rebuild.log 2>&1
echo "touch src/lib.rs; cargo test --no-run: $((SECONDS - t0)) s"
echo "test executables: $(find target/debug/deps -maxdepth 1 -type f -executable -regex '.*-[0-9a-f]\{16\}$' | wc -l)"
echo "target/ after the build: $(du -sh target | cut -f1)"
t0=$SECONDS; ./tests/run >run.log 2>&1; rc=$?
echo "./tests/run: rc=$rc in $((SECONDS - t0)) s; $(tail -1 run.log)"
echo "target/ after ./tests/run: $(du -sh target | cut -f1)"
