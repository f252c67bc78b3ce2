"""Which float type to compute in: decided from the hardware, logged with the reason.

bf16 halves memory traffic, but only hardware with native bf16 math turns that into speed. On
x86 CPUs without AVX512-BF16 or AMX (most laptops and cloud VMs: AVX2 only), oneDNN emulates bf16
matrix products and they run 3-7x *slower* than float32. So `auto` means:

- CUDA with bf16 support: bfloat16.
- CPU whose instruction set torch reports with AVX512-BF16 or AMX: a short probe (~0.3 s) times
  a decode-shaped and a train-shaped matmul in both types and keeps bf16 only if it is faster.
  Environment knobs that cap the ISA (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY) are honoured because
  the probe measures what the kernels actually do.
- Any other CPU: float32, without probing.

Weights stay float32 for training in every case (pure bf16 weights lose small updates to rounding);
bf16 only changes the compute type (autocast) and the rollout engine's sampling copy.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Precision:
    dtype: str  # "float32" | "bfloat16"
    reason: str  # one line a person can check, e.g. "cpu without native bf16 (AVX2): float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"


def cpu_description() -> str:
    """CPU model name and the vector units that matter for float math, for logs and benchmarks."""
    name = "unknown CPU"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown CPU":
                    name = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
                if name != "unknown CPU" and flags:
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    have = [f for f in wanted if f in flags]
    cap = torch.backends.cpu.get_cpu_capability()
    return f"{name} ({os.cpu_count()} cpus; flags {' '.join(have) or 'none of avx2/avx512/amx'}; torch dispatch {cap})"


def _cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(c()) for c in checks if c is not None)
    except Exception:  # a private API that moved: fall back to "no", the safe answer on CPU
        return False


@functools.lru_cache(maxsize=1)
def probe_cpu_bf16(rounds: int = 7) -> tuple[float, float]:
    """Seconds per (decode + train-shaped) matmul pair in float32 and in bf16 on this CPU.

    The two types are timed alternately and the fastest round of each is kept, so another process
    sharing the cores slows both sides alike instead of deciding the outcome.
    """
    torch.manual_seed(0)
    w = torch.randn(576, 1536)  # a small model's MLP shape; the ratio, not the size, is what we keep
    xs = [torch.randn(32, 576), torch.randn(512, 576)]  # a decode step at batch 32; a train micro-batch
    cases = []
    for dt in (torch.float32, torch.bfloat16):
        wd, xd = w.to(dt), [x.to(dt) for x in xs]
        for x in xd:  # warm-up: oneDNN picks and caches its kernel on the first call
            x @ wd
        cases.append((wd, xd))
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, (wd, xd) in enumerate(cases):
            t0 = time.perf_counter()
            for _ in range(3):
                for x in xd:
                    x @ wd
            best[i] = min(best[i], (time.perf_counter() - t0) / 3)
    return best[0], best[1]


def resolve(requested: str = "auto", device: str | torch.device = "cpu") -> Precision:
    """Turn a config value ('auto' | 'float32' | 'bfloat16') into the dtype to use and why."""
    if requested not in DTYPES:
        raise ValueError(f"unknown dtype '{requested}'; valid: {', '.join(DTYPES)}")
    dev = torch.device(device)
    if requested != "auto":
        return Precision(requested, f"{requested} as configured")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", "auto: CUDA device with bf16 support")
        return Precision("float32", "auto: CUDA device without bf16 support")
    if dev.type != "cpu":
        return Precision("float32", f"auto: {dev.type} device, float32 is the safe default")
    cap = torch.backends.cpu.get_cpu_capability()
    # torch dispatches its CPU kernels by capability; below AVX512 (or when ATEN_CPU_CAPABILITY caps
    # it) there is no native bf16 path, so do not even probe.
    if not cap.startswith("AVX512") or not _cpu_has_native_bf16():
        return Precision("float32", f"auto: CPU without native bf16 (torch dispatch {cap}): float32")
    fp32_s, bf16_s = probe_cpu_bf16()
    ratio = fp32_s / bf16_s
    if ratio > 1.1:
        return Precision("bfloat16", f"auto: CPU with native bf16, probe: bf16 matmul {ratio:.1f}x float32")
    return Precision(
        "float32", f"auto: CPU reports bf16 but the probe measured bf16 at {ratio:.2f}x float32: float32"
    )
