#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with the pack installed editable.
#   scripts/setup.sh          runtime dependencies (enough for `interplay run`)
#   scripts/setup.sh --test   plus pytest and SAM2 (built from source without CUDA kernels)
# torch/torchvision come from constraints.txt (the releases on this machine's local wheel cache);
# the pack's own metadata never pins torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt --upgrade pip setuptools wheel
"${PIP[@]}" install -c constraints.txt torch torchvision
if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" install -c constraints.txt -e '.[test]'
  # sam2 ships only as source; its setup.py imports torch, hence no build isolation.
  SAM2_BUILD_CUDA=0 "${PIP[@]}" install -c constraints.txt --no-build-isolation 'sam2==1.1.0'
else
  "${PIP[@]}" install -c constraints.txt -e .
fi
