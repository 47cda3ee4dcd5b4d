"""trainlab.optim.hardware: the CPU's bf16 capability and the Newton–Schulz precision chosen from it."""

from __future__ import annotations

import pytest
import torch

from trainlab.optim import hardware
from trainlab.optim.hardware import cpu_has_fast_bf16, cpuinfo_flags, fast_bf16_from_cpuinfo, ns_dtype_for

# Abridged /proc/cpuinfo texts (two logical CPUs each; the flag lists are real ones, shortened).
EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm
 constant_tsc rep_good nopl nonstop_tsc cpuid pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx
 f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext bmi1 avx2 smep
 bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt vaes
bogomips\t: 4899.99

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 avx avx2 fma bmi1 bmi2 sha_ni vaes vpclmulqdq
"""
EPYC_ZEN3 = EPYC_ZEN3.replace("\n ", " ")  # /proc/cpuinfo has the flags on one line

SKYLAKE_AVX512 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de pse tsc msr sse sse2 ht avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16
 avx512_fp16 avx512_vnni avx512vbmi amx_bf16 amx_tile amx_int8 serialize tsxldtrk
bogomips\t: 4000.00
""".replace("\n ", " ")

AMX_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx2 amx_tile amx_bf16\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni\n"


def test_ns_dtype_table():
    assert ns_dtype_for("cuda", True) is torch.bfloat16
    assert ns_dtype_for("cuda", False) is torch.bfloat16
    assert ns_dtype_for("cpu", True) is torch.bfloat16
    assert ns_dtype_for("cpu", False) is torch.float32
    assert ns_dtype_for("mps", True) is torch.float32  # the capability is a CPU's: other devices stay float32


def test_flags_are_parsed_from_the_flags_lines_only():
    flags = cpuinfo_flags(SAPPHIRE_RAPIDS)
    assert {"amx_bf16", "amx_tile", "avx512_bf16", "serialize"} <= flags
    assert "Platinum" not in flags and "4000.00" not in flags
    assert {"avx2", "sha_ni", "vaes", "vpclmulqdq"} <= cpuinfo_flags(EPYC_ZEN3)  # both processors' lines
    assert cpuinfo_flags("") == set()
    assert cpuinfo_flags("model name\t: has amx_bf16 in its name\n") == set()


@pytest.mark.parametrize("text, fast", [
    (EPYC_ZEN3, False),         # AVX2, no bf16 instructions
    (SKYLAKE_AVX512, False),    # AVX-512 but bf16 only emulated
    (SAPPHIRE_RAPIDS, True),    # AMX-BF16 (and AVX512-BF16)
    (AMX_ONLY, True),
    (ZEN4, True),               # AVX512-BF16 without AMX
    ("", False),
])
def test_fast_bf16_from_cpuinfo(text, fast):
    assert fast_bf16_from_cpuinfo(text) is fast


@pytest.mark.parametrize("text, fast", [(SAPPHIRE_RAPIDS, True), (EPYC_ZEN3, False)])
def test_cpu_has_fast_bf16_reads_cpuinfo_once(monkeypatch, tmp_path, text, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    cpu_has_fast_bf16.cache_clear()
    try:
        assert cpu_has_fast_bf16() is fast
        cpuinfo.write_text(EPYC_ZEN3 if fast else SAPPHIRE_RAPIDS)
        assert cpu_has_fast_bf16() is fast  # cached: decided once per process
    finally:
        cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("amx", [True, False])
def test_without_cpuinfo_torch_is_asked_about_amx(monkeypatch, tmp_path, amx):
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: amx, raising=False)
    cpu_has_fast_bf16.cache_clear()
    try:
        assert cpu_has_fast_bf16() is amx
    finally:
        cpu_has_fast_bf16.cache_clear()
