#!/usr/bin/env bash
# Runs every test Trine has, on a fresh machine too: Rust unit and engine tests, then the
# black-box compatibility suites with the official iii SDKs (npm 0.9.0 / 0.11.6 / 0.22.1,
# PyPI 0.25.0, crates.io 0.26.0-rc.4) against a real `trine serve`, and the seed todo app end to
# end (three SDK generations, a WebSocket client and the live page in headless Chromium).
# Installs the npm and pip packages it needs itself (pinned, lockfiles committed).
# Usage: scripts/test.sh [rust|node|python|rust-sdk|e2e]...   (default: all)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(rust node python rust-sdk e2e)

export TRINE_BIN="$repo/target/debug/trine"
echo "==> building trine"
cargo build --locked -p trine

# A Redis server on 127.0.0.1:6379 for the Redis adapter tests (TRINE_TEST_REDIS_URL points them
# elsewhere). Started here only when none answers: Debian's package, nothing kept on disk.
redis_up() {
  if command -v redis-cli >/dev/null; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
  else
    (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}
# The redis-server binary: the Redis restart test runs a private server of its own.
ensure_redis_binary() {
  command -v redis-server >/dev/null && return 0
  echo "==> installing redis-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
    || { echo "could not install redis-server: install it, or set TRINE_TEST_REDIS_URL" >&2; return 1; }
}

ensure_redis() {
  ensure_redis_binary || return 1
  [ -n "${TRINE_TEST_REDIS_URL:-}" ] && return 0
  redis_up && return 0
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
  for _ in $(seq 50); do redis_up && return 0; sleep 0.2; done
  echo "redis-server did not answer on 127.0.0.1:6379" >&2
  return 1
}

passed=0
failed=0
failed_names=()
run() {
  local name=$1; shift
  echo "==> $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failed_names+=("$name")
  fi
}

for s in "${suites[@]}"; do
  case "$s" in
    rust) ensure_redis; run "rust workspace tests" cargo test --locked --workspace ;;
    node) run "node SDK compat (0.9.0, 0.11.6, 0.22.1)" bash tests/compat/node/run.sh ;;
    python) run "python SDK compat (0.25.0)" bash tests/compat/python/run.sh ;;
    rust-sdk) run "rust SDK compat (0.26.0-rc.4)" bash tests/compat/rust/run.sh ;;
    e2e) ensure_redis; run "seed app + live page e2e (0.9.0, 0.22.1, python, chromium)" bash tests/compat/node/e2e/run.sh ;;
    *) echo "unknown suite: $s (rust, node, python, rust-sdk, e2e)" >&2; exit 2 ;;
  esac
done

echo
if [ "$failed" -gt 0 ]; then
  echo "failed suites: ${failed_names[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
