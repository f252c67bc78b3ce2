"""dtype 'auto': bf16 only where the hardware computes it natively, with the reason written down."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agentic_gcpo.precision import cpu_description, resolve


def test_explicit_dtypes_are_kept_and_unknown_ones_list_the_valid():
    assert resolve("float32").dtype == "float32"
    assert resolve("bfloat16").bf16
    with pytest.raises(ValueError, match="valid: auto, float32, bfloat16"):
        resolve("fp8")


def test_auto_is_float32_where_torch_dispatches_below_avx512():
    """ATEN_CPU_CAPABILITY=avx2 makes torch behave as on an AVX2-only CPU: no bf16, no probe."""
    code = "from agentic_gcpo.precision import resolve; p = resolve('auto'); print(p.dtype, '|', p.reason)"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    dtype, reason = out.stdout.strip().split(" | ")
    assert dtype == "float32" and "AVX2" in reason


def test_auto_on_this_machine_says_why():
    p = resolve("auto")
    assert p.dtype in ("float32", "bfloat16") and p.reason.startswith("auto:")
    assert "torch dispatch" in cpu_description()
