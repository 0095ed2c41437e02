#!/usr/bin/env bash
# Rust SDK compatibility suite: official crates.io iii-sdk 0.26.0-rc.4 against $TRINE_BIN.
# A standalone cargo project (not in the main workspace) with its own Cargo.lock.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
export TRINE_BIN="${TRINE_BIN:-$repo/target/debug/trine}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
# The SDK reads these and they would change what it sends.
unset III_WORKER_NAME III_NAMESPACE III_TOKEN III_URL || true

cd "$here"
cargo test --locked "$@"
