#!/bin/sh
# Install lfm-audio into a virtual environment: the one install recipe, used by `make install` (CI) and the
# Dockerfile alike.
#
#   tools/install-python.sh [--dev] [--torch-index URL] VENV
#
# Creates VENV where it has no python, installs torch (pinned) where VENV cannot import one yet, then this
# checkout, editable, with the dev extras under --dev. --torch-index takes torch (and only torch) from that
# wheel index: the CPU or the CUDA build of the pinned version. Without it pip's configured index decides.
set -eu

TORCH_VERSION=2.13.0  # the torch the golden sequences and benchmarks were recorded with

usage() {
    echo "usage: $0 [--dev] [--torch-index URL] VENV" >&2
    exit 2
}

extras=""
torch_index=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dev) extras="[dev]"; shift ;;
        --torch-index) [ $# -ge 2 ] || usage; torch_index="$2"; shift 2 ;;
        --torch-index=*) torch_index="${1#--torch-index=}"; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
venv="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --no-cache-dir --upgrade pip
# torch first, pinned, where none is present: plain `torch` from a general index may pull a multi-GB CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "$torch_index" ]; then
        "$venv/bin/python" -m pip install -q --no-cache-dir --index-url "$torch_index" "torch==$TORCH_VERSION"
    else
        "$venv/bin/python" -m pip install -q --no-cache-dir "torch==$TORCH_VERSION"
    fi
fi
"$venv/bin/python" -m pip install -q --no-cache-dir -e "$root$extras"
