#!/usr/bin/env bash
# checkov, the policy scanner that tests/test_k8s.py runs over every rendered manifest, in
# an environment of its own (it pins networkx, packaging and python-dateutil below the
# project's constraints.txt, so it cannot live in the project's). About 290 MB and a
# minute to install; the scan itself takes a few seconds.
#   bash deploy/k8s/install-checkov.sh            # then: pytest tests/test_k8s.py
# CHECKOV_VENV=DIR installs elsewhere (default ~/.cache/vae-service/checkov-3.3.30, where
# the test looks, after $CHECKOV and the PATH). Installs nothing when it is there already.
set -euo pipefail
cd "$(dirname "$0")"
version=3.3.30
venv=${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/vae-service/checkov-$version}
if "$venv/bin/checkov" --version 2>/dev/null | grep -qx "$version"; then
  echo "checkov $version: $venv/bin/checkov"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -c checkov-constraints.txt "checkov==$version"
echo "checkov $("$venv/bin/checkov" --version): $venv/bin/checkov"
