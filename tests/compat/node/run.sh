#!/usr/bin/env bash
# Runs the Node compatibility suites against the trine binary.
#   tests/compat/node/run.sh [sdk-0.9.0|sdk-0.11.6|sdk-0.22.1 ...]
# Env: TRINE_BIN (default target/debug/trine), TRINE_COMPAT_CONCURRENCY (test files run at once,
# default 2), TRINE_COMPAT_VERBOSE=1 (echo engine stderr).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
export TRINE_BIN="${TRINE_BIN:-$repo/target/debug/trine}"
concurrency="${TRINE_COMPAT_CONCURRENCY:-2}"

if [ ! -x "$TRINE_BIN" ]; then
  echo "run.sh: engine binary not found at $TRINE_BIN (cargo build -p trine, or set TRINE_BIN)" >&2
  exit 2
fi

projects=("$@")
if [ ${#projects[@]} -eq 0 ]; then
  projects=(sdk-0.9.0 sdk-0.11.6 sdk-0.22.1)
fi

# Install exactly what each lock file pins, only when node_modules is missing or the lock changed.
for project in "${projects[@]}"; do
  dir="$here/$project"
  stamp="$dir/node_modules/.trine-lock-sha256"
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== npm ci in $project"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed in $project" >&2; exit 2; }
    echo "$want" > "$stamp"
  fi
done

status=0
for project in "${projects[@]}"; do
  echo "== node --test in $project"
  (cd "$here/$project" && node --test --test-reporter=spec --test-concurrency="$concurrency" --test-timeout=180000 test/*.test.mjs) || status=1
done
exit $status
