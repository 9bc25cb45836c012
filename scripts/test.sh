#!/usr/bin/env bash
# The whole test suite, in a brand-new virtual environment that holds only what
# pyproject.toml declares, at the versions constraints.txt locks: a package installed
# by hand elsewhere on the machine cannot make it pass. Arguments go to pytest.
# VAE_VENV=DIR reuses (or creates) that environment instead, for quicker reruns.
# torch is pinned to the CPU build; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VAE_VENV:-}" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  VAE_VENV="$tmp/venv"
fi
[ -x "$VAE_VENV/bin/python" ] || python3 -m venv "$VAE_VENV"
"$VAE_VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0 -e '.[dev]'
# Debian packages the tests use: Fashion-MNIST (they train on small subsets of it) and a
# real Chromium for the playground's browser tests.
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
fi
"$VAE_VENV/bin/python" -m pytest "$@"
