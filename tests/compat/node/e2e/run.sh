#!/usr/bin/env bash
# End-to-end tests of the seed app and the live page against the trine binary:
#   tests/compat/node/e2e/run.sh [test/seed.test.mjs|test/browser.test.mjs ...]
# Installs (when missing or changed): this project's node_modules (npm ci), the example apps'
# node_modules (examples/todo-node-*, npm ci) and examples/todo-python/.venv (pip, pinned).
# Env: TRINE_BIN (default target/debug/trine), TRINE_COMPAT_CONCURRENCY (test files at once,
# default 2), TRINE_COMPAT_VERBOSE=1 (echo engine stderr), TRINE_REQUIRE_BROWSER=1 (fail instead
# of skipping the browser tests when /usr/bin/chromium is missing), TRINE_CHROMIUM (browser path).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
export TRINE_BIN="${TRINE_BIN:-$repo/target/debug/trine}"
concurrency="${TRINE_COMPAT_CONCURRENCY:-2}"

if [ ! -x "$TRINE_BIN" ]; then
  echo "run.sh: engine binary not found at $TRINE_BIN (cargo build -p trine, or set TRINE_BIN)" >&2
  exit 2
fi

# npm ci with a stamp of the lock file, as tests/compat/node/run.sh does.
npm_ci() {
  local dir=$1
  local stamp="$dir/node_modules/.trine-lock-sha256"
  local want
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== npm ci in ${dir#"$repo"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed in $dir" >&2; exit 2; }
    echo "$want" > "$stamp"
  fi
}
npm_ci "$here"
npm_ci "$repo/examples/todo-node-0.9.0"
npm_ci "$repo/examples/todo-node-0.22.1"

# The Python example's virtualenv (the tests would create it too; doing it here keeps it serial).
(cd "$here" && node -e "import('./lib.mjs').then((m) => m.preparePythonExample())") || {
  echo "run.sh: could not prepare examples/todo-python/.venv" >&2
  exit 2
}

cd "$here"
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(test/*.test.mjs)
fi
echo "== node --test in tests/compat/node/e2e"
exec node --test --test-reporter=spec --test-concurrency="$concurrency" --test-timeout=180000 "${files[@]}"
