#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels a GPU machine lacks, for benchmarks/gpu_check.sh.
#
#   PYTHON=.venv/bin/python bash benchmarks/gpu_wheels.sh
#
# Run it from the project's environment (installed with its test extra, under
# constraints.txt) on a machine that reaches PyPI, before the GPU session; then carry .whl/
# to the GPU machine with the working tree. The GPU machine (no internet) has CPython 3.12,
# Linux x86-64, PyTorch and the packages in benchmarks/gpu_image_packages.txt; the wheels
# are every other package the service and its tests need (benchmarks/gpu_wheels.py works
# them out from pyproject.toml), at constraints.txt's versions, one version each.
# Where wrk is installed here, it travels too (.whl/bin/wrk, with the LuaJIT library it
# links, and OpenSSL's), so that the check's load generator there is wrk, not one Python process.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS_DIR:-.whl}
LIMIT_MIB=60

mapfile -t wanted < <("$PYTHON" -m benchmarks.gpu_wheels list)
if [ "${#wanted[@]}" -eq 0 ]; then
  echo "gpu_wheels.sh: no package list from '$PYTHON -m benchmarks.gpu_wheels list'" >&2
  exit 1
fi
echo "downloading ${#wanted[@]} wheels into $WHEELS: ${wanted[*]}"
rm -rf "$WHEELS"  # two versions of one package would stop the install there
mkdir -p "$WHEELS"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$WHEELS" "${wanted[@]}"

shopt -s nullglob
got=("$WHEELS"/*.whl)
if [ "${#got[@]}" -ne "${#wanted[@]}" ]; then
  echo "gpu_wheels.sh: ${#got[@]} wheels for ${#wanted[@]} packages in $WHEELS" >&2
  exit 1
fi
carry_wrk() {  # wrk and its libraries into $WHEELS/lib, and a wrapper that finds them
  local wrk lib
  wrk=$(command -v wrk) || { echo "wrk: not installed here; the check will use httpx"; return; }
  lib=$(ldd "$wrk" | awk '/libluajit|libssl|libcrypto/ {print $3}')
  mkdir -p "$WHEELS/bin" "$WHEELS/lib"
  cp "$wrk" "$WHEELS/lib/wrk"
  if [ -n "$lib" ]; then cp -L $lib "$WHEELS/lib/"; fi
  printf '#!/bin/sh\nhere=$(dirname "$0")/../lib\nLD_LIBRARY_PATH=$here exec "$here/wrk" "$@"\n' \
    >"$WHEELS/bin/wrk"
  chmod +x "$WHEELS/bin/wrk"
  echo "wrk: $("$WHEELS/bin/wrk" -v 2>&1 | head -n1)"
}
carry_wrk
kib=$(du -sk "$WHEELS" | cut -f1)
echo "$WHEELS: ${#got[@]} wheels, $((kib / 1024)) MiB ($kib KiB)"
if [ "$kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "gpu_wheels.sh: over $LIMIT_MIB MiB; the working tree that travels is at most 64 MiB" >&2
  exit 1
fi
