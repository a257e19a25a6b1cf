#!/usr/bin/env bash
# Binary size budget (#18): builds the release mkectl (without any bundle
# payload) from the lock file, strips a copy and fails when it exceeds the
# budget. Prints the size and the budget either way.
#   packaging/check-size.sh            build, then check
#   MKECTL_SIZE_BUDGET=<bytes>         override the budget (default 15.8 MB)
#   MKECTL_SIZE_SKIP_BUILD=1           check an existing target/release/mkectl
set -euo pipefail
cd "$(dirname "$0")/.."

# A ratchet, not yet the goal: #18 asks for 15 MB. The release profile
# (Cargo.toml) gives 15.47 MB with the benches within 5% of opt-level 3; the
# budget is that plus 2.1%, so growth fails CI. Lower it as cuts land.
budget="${MKECTL_SIZE_BUDGET:-15800000}"
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/mkectl"

if [ "${MKECTL_SIZE_SKIP_BUILD:-0}" != 1 ]; then
  start=$(date +%s)
  cargo build --release --locked --bin mkectl
  echo "release build: $(( $(date +%s) - start ))s"
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# The release profile already strips; stripping a copy again keeps the check
# honest should the profile change.
strip -o "$tmp" "$bin"
size=$(stat -c %s "$tmp")
unstripped=$(stat -c %s "$bin")
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1000000 }'; }
echo "mkectl stripped: $size bytes ($(mb "$size") MB), budget $budget bytes ($(mb "$budget") MB); as built: $unstripped bytes"
if [ "$size" -gt "$budget" ]; then
  echo "mkectl is over its size budget by $(( size - budget )) bytes (README \"Binary size\")" >&2
  exit 1
fi
