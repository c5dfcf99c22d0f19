#!/usr/bin/env bash
# Install into .venv and run the bot (settings from the environment or .env; see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # On a GPU machine install the CUDA build of torch before running this; here we take what pip has.
  python -m pip install -q "torch${TORCH_SPEC:-==2.13.0}"
fi
python -m pip install -q -e .
exec python -m bot
