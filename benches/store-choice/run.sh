#!/usr/bin/env bash
# Reproduces the figures in docs/storage.md ("Choosing the storage engine").
# Usage: benches/store-choice/run.sh   (from the repository root; takes ~3 minutes)
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

echo "== dependency count (unique crates, normal edges) and clean release build time"
for engine in redb fjall; do
  deps=$(cargo tree -q -p "$engine" -e normal --prefix none | sed 's/ (\*)//' | sort -u | wc -l)
  cargo clean -q
  start=$(date +%s%N)
  cargo build -q --release -p "$engine"
  end=$(date +%s%N)
  printf '%-6s crates=%s clean_build_ms=%s\n' "$engine" "$deps" "$(( (end - start) / 1000000 ))"
done

echo "== runtime figures"
cargo build -q --release
"$CARGO_TARGET_DIR/release/store-choice" "$@"
