#!/usr/bin/env bash
# Python SDK compatibility suite: official PyPI iii-sdk 0.25.0 against $TRINE_BIN.
# Creates (or reuses) .venv next to this script, installs requirements.txt,
# runs pytest. Exit status is pytest's; "no tests collected" counts as failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
export TRINE_BIN="${TRINE_BIN:-$repo/target/debug/trine}"

python="${PYTHON:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

cd "$here"
set +e
"$here/.venv/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "run.sh: pytest collected no tests — treating as failure" >&2
  exit 1
fi
exit "$status"
