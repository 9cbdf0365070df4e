#!/usr/bin/env bash
# Creates the reference implementation's venv used to record golden outputs (never a runtime dependency):
# Python 3.12, torch 2.9.1 + torchaudio 2.9.1 (a matching pair), liquid-audio 1.3.0. About 7 GB, a few minutes.
# Usage: tools/golden/setup_venv.sh [VENV_DIR]   (default: $GOLDEN_VENV or .cache/golden-venv)
set -euo pipefail
venv=${1:-${GOLDEN_VENV:-.cache/golden-venv}}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import liquid_audio" 2>/dev/null; then
  echo "$venv"; exit 0
fi
py312=${PYTHON312:-$( (command -v pyenv >/dev/null && echo "$(pyenv root)/versions/3.12.1/bin/python3.12") || command -v python3.12)}
"$py312" -m venv "$venv"
"$venv/bin/pip" install -q torch==2.9.1 'torchaudio==2.9.*'
"$venv/bin/pip" install -q liquid-audio==1.3.0
echo "$venv"
