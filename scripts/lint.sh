#!/usr/bin/env bash
# Linters and type checks, as configured in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
