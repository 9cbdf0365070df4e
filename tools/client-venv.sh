#!/usr/bin/env bash
# The real OpenAI Realtime clients that tests/clients drive, in environments of their own: their pins clash
# with ours and with each other's less than with torch's, and none needs torch.
#   .cache/client-venv   Python: openai-agents, pipecat-ai, livekit-agents + livekit-plugins-openai
#   .cache/node-client   Node: the openai package (openai-node)
# Idempotent: a stamp holding this file's pins skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${CLIENT_PYTHON:-python3.11}
VENV=.cache/client-venv
NODE_DIR=.cache/node-client
PY_PINS=(
    "openai-agents==0.24.0"
    "pipecat-ai[openai]==1.14.0"
    "livekit-agents==1.8.9"
    "livekit-plugins-openai==1.8.9"
)
NODE_PINS=("openai@7.55" "ws@8")
STAMP_TEXT="${PY_PINS[*]} | ${NODE_PINS[*]}"

if [[ "${1:-}" != "--node-only" ]]; then
    if [[ ! -f $VENV/.pins || "$(cat $VENV/.pins)" != "$STAMP_TEXT" ]]; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PINS[@]}"
        echo "$STAMP_TEXT" > "$VENV/.pins"
    fi
fi
if [[ "${1:-}" != "--python-only" ]]; then
    if [[ ! -f $NODE_DIR/.pins || "$(cat $NODE_DIR/.pins)" != "$STAMP_TEXT" ]]; then
        rm -rf "$NODE_DIR"
        mkdir -p "$NODE_DIR"
        (cd "$NODE_DIR" && echo '{"name": "lfm-audio-node-client", "private": true, "type": "module"}' > package.json \
            && npm install --silent --no-audit --no-fund "${NODE_PINS[@]}")
        echo "$STAMP_TEXT" > "$NODE_DIR/.pins"
    fi
fi
