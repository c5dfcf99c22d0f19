#!/usr/bin/env bash
# Install everything into .venv at the versions of requirements.lock and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, at the lock's version: a bare `torch` requirement would download a multi-GB CUDA build.
python -m pip install -q -c requirements.lock torch
python -m pip install -q -c requirements.lock -e ".[test]"
python -m pytest -q "$@"
