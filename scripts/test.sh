#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${CI:-}" ] && [ ! -d ../shared/data ]; then
  echo "error: ../shared/data (real CT test cases) is missing; CI must have it" >&2
  exit 1
fi

bash scripts/bootstrap.sh

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
# pytest exits 5 when no test ran; that is a failure here like any other non-zero code.
.venv/bin/pytest "$@"
