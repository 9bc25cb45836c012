#!/usr/bin/env bash
# Linters and type checks, as configured in pyproject.toml; VAE_VENV=DIR runs them with
# that environment's tools (scripts/test.sh builds one), else with python3's.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${VAE_VENV:+$VAE_VENV/bin/}python3
"$python" -m ruff check .
"$python" -m ruff format --check .
"$python" -m mypy
