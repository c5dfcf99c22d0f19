#!/usr/bin/env bash
# Install into .venv at the versions of requirements.lock and run the bot (settings from the environment or .env; see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # The lock's torch version. On a GPU machine install its CUDA build first (README, "With a GPU"), or set
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128): the pin has no +cpu/+cu label, both satisfy it.
  python -m pip install -q -c requirements.lock torch ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -q -c requirements.lock -e .
exec python -m bot "$@"
