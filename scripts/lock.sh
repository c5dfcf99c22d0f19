#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml afresh in a throw-away venv and freeze the result.
# Usage: bash scripts/lock.sh [OUTPUT]   (TORCH_VERSION=2.13.0 by default: torch moves only when you say so)
# Then run the tests against the new lock (bash scripts/test.sh rebuilds .venv from it) before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-requirements.lock}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# torch first: a bare `torch` requirement would pick the newest release (and on PyPI a multi-GB CUDA build).
"${pip[@]}" install -q "torch==${TORCH_VERSION:-2.13.0}"
# Every extra, so the Docker image (fp8, cuda, postgres) installs pinned versions too.
"${pip[@]}" install -q -e ".[test,fp8,cuda,postgres]"
{
  cat <<'HEADER'
# Every package zimage-bot and its tests install, at the exact version (pip constraints, not requirements):
#   pip install -c requirements.lock -e ".[test]"
# Refresh with `bash scripts/lock.sh` (README, "Troubleshooting"); tests/unit/project/test_lock.py checks it against pyproject.toml.
# torch carries no local label (+cpu, +cu128): the CUDA build of the same version satisfies the pin too.
# torchao (extras fp8 and test: the CPU tests quantize int8), bitsandbytes (extra cuda) and asyncpg (extras postgres and test): resolved here.
HEADER
  # --all keeps setuptools (torch requires it); pip itself and the project are not dependencies.
  "${pip[@]}" freeze --all --exclude pip --exclude-editable | sed -E 's/\+[[:alnum:].]+$//'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") pins)"
