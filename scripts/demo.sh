#!/usr/bin/env bash
# The main job on embedded defaults: install, then run `spinecloud demo` (output in ./out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/spinecloud demo "$@"
