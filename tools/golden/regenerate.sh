#!/usr/bin/env bash
# Re-records every golden file in tests/golden/assets/ from the reference implementation.
# Usage: tools/golden/regenerate.sh   (GOLDEN_VENV=... to reuse an existing reference venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$(tools/golden/setup_venv.sh | tail -n 1)
for script in tools/golden/make_*.py; do
  echo "== $script"
  PYTHONPATH=. "$venv/bin/python" "$script"
done
