"""What the machine can do, for optimizers that pick a fast path (Muon's Newton–Schulz precision).

The rule is decided by capability (which instructions the CPU has), never by timing a run on the spot.

Fast bfloat16 on a CPU means native bf16 matrix instructions, which oneDNN (torch's CPU bf16 GEMM) uses:

- ``amx_bf16``: Intel AMX tiles (``TDPBF16PS``; Sapphire Rapids and later). Measured (one thread): bf16 matmul
  391 GF/s vs 86 GF/s float32; trainlab's Muon step 965 ms in float32 Newton–Schulz vs 331 ms in bf16.
- ``avx512_bf16``: the AVX-512 bf16 dot product (``VDPBF16PS``; Cooper Lake, Sapphire Rapids, AMD Zen 4/5).
  It counts too: measured on this project's AMD EPYC (``avx512_bf16``, no AMX; torch 2.13, one thread) a
  512×512 quintic Newton–Schulz took 20 ms in bf16 vs 45 ms in float32, a 256×512 ×4 batch 18 vs 41 ms.
  Without either flag bf16 has no native multiply: oneDNN converts to float32 (AVX-512 without
  ``avx512_bf16``) or torch uses generic kernels (AVX2), and bf16 is expected to be slower than float32 (not
  measured here; :mod:`trainlab.optim.newton_schulz` records a 40× slowdown measured on an earlier setup).

Where the answer comes from: on Linux the ``flags`` line of ``/proc/cpuinfo`` (the kernel lists ``amx_bf16``
only when it also enables AMX state for processes). torch 2.13 has no reliable public answer:
``torch.backends.cpu.get_cpu_capability()`` says only ``AVX2``/``AVX512`` (no bf16 information), and
``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on any AVX-512 CPU, including those that only emulate
bf16. Elsewhere (no ``/proc/cpuinfo``) torch's private ``torch._C._cpu._init_amx()`` (True when AMX tiles are
present and enabled) is asked, if it exists; otherwise the answer is False (float32, the safe choice).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

FAST_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_flags(text: str) -> set[str]:
    """The CPU flags of a ``/proc/cpuinfo`` text: the union of its ``flags`` lines (x86)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return flags


def fast_bf16_from_cpuinfo(text: str) -> bool:
    """True when a ``/proc/cpuinfo`` text lists a native bf16 matrix instruction (``amx_bf16``, ``avx512_bf16``)."""
    return bool(cpuinfo_flags(text) & FAST_BF16_FLAGS)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (see the module docstring); computed once per process."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    if cpuinfo_flags(text):
        return fast_bf16_from_cpuinfo(text)
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init_amx()) if init_amx is not None else False
    except Exception:  # a private function: any failure means "not known to be fast"
        return False


def ns_dtype_for(device_type: str, fast_bf16: bool) -> torch.dtype:
    """Newton–Schulz precision for ``ns_dtype="auto"``: bf16 on CUDA, bf16 on a CPU with fast bf16, else float32."""
    if device_type == "cuda":
        return torch.bfloat16
    if device_type == "cpu" and fast_bf16:
        return torch.bfloat16
    return torch.float32
