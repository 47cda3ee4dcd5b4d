"""Block-wise symmetric integer quantisation of outer gradients (8- and 4-bit), in plain torch.

Used by :class:`trainlab.distributed.diloco.StreamingDiLoCo` to shrink what workers exchange. Streaming DiLoCo
(Douillard et al. 2025, "Streaming DiLoCo with overlapping communication: Towards a Distributed Free Lunch",
arXiv:2501.18512) sends outer gradients in 4 bits and accumulates them in fp32. The paper's 4-bit format is a
float (E3M0); here it is a **signed integer grid with one fp32 scale per block** (a deviation, chosen because
it is plain torch on every device and has a simple worst-case error bound):

- a flat tensor is cut into blocks of ``block_size`` elements (the last block may be shorter);
- per block, ``scale = max|x| / qmax`` with ``qmax = 2**(bits-1) - 1`` (127 for 8 bits, 7 for 4 bits);
- ``q = round(x / scale)`` in ``[-qmax, qmax]``, stored offset by ``qmax`` as unsigned codes (``uint8``);
  4-bit codes are packed two per byte (element ``2i`` in the low nibble, ``2i+1`` in the high nibble);
- dequantisation is ``(code - qmax) * scale`` in fp32.

Round-to-nearest gives ``|x - dequantize(quantize(x))| <= scale / 2 = max|x_block| / (2 qmax)`` per element
(up to fp32 rounding), and all-zero blocks are exact. Bytes on the wire: ``codes`` (``numel`` bytes for 8
bits, ``ceil(numel / 2)`` for 4 bits) plus ``4 * ceil(numel / block_size)`` bytes of fp32 scales --
:func:`quantized_nbytes`.

Summing codes from different workers is meaningless (their scales differ), so workers exchange codes and
scales with ``all_gather`` and each averages the dequantised fp32 tensors (:func:`average_quantized`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SUPPORTED_BITS = (4, 8)
DEFAULT_BLOCK_SIZE = 256


def _check(bits: int, block_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantize: bits must be 4 or 8, got {bits!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"quantize: block_size must be a positive int, got {block_size!r}")


def qmax(bits: int) -> int:
    """Largest code magnitude of the symmetric ``bits``-bit grid: 127 (8 bits), 7 (4 bits)."""
    return 2 ** (bits - 1) - 1


@dataclass
class Quantized:
    """Codes (``uint8``; two 4-bit codes per byte when ``bits == 4``), fp32 per-block scales, and the shape."""

    codes: Tensor
    scales: Tensor
    numel: int
    bits: int
    block_size: int

    @property
    def nbytes(self) -> int:
        """Bytes of codes plus scales: what one worker sends."""
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def quantized_nbytes(numel: int, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Bytes sent for ``numel`` values: ``numel`` (8 bits) or ``ceil(numel/2)`` (4 bits) + 4 per block."""
    _check(bits, block_size)
    code_bytes = numel if bits == 8 else (numel + 1) // 2
    return code_bytes + 4 * math.ceil(numel / block_size)


def pack_nibbles(codes: Tensor) -> Tensor:
    """Pack ``uint8`` codes in ``[0, 15]`` two per byte (even index low nibble, odd index high nibble)."""
    if codes.dtype != torch.uint8:
        raise ValueError(f"pack_nibbles: codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``numel`` codes."""
    out = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    return out[:numel]


def quantize(x: Tensor, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> Quantized:
    """Quantise ``x`` (any shape, any float dtype; flattened) to ``bits`` bits with one fp32 scale per block."""
    _check(bits, block_size)
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    nblocks = math.ceil(n / block_size)
    pad = nblocks * block_size - n
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(nblocks, block_size)
    m = qmax(bits)
    scales = blocks.abs().amax(dim=1) / m
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(blocks / safe[:, None]).clamp_(-m, m)
    codes = (q + m).to(torch.uint8).reshape(-1)[:n]
    if bits == 4:
        codes = pack_nibbles(codes)
    return Quantized(codes=codes, scales=scales, numel=n, bits=bits, block_size=block_size)


def dequantize_parts(codes: Tensor, scales: Tensor, numel: int, bits: int, block_size: int) -> Tensor:
    """fp32 flat tensor of ``numel`` values from raw codes and scales (as received from another worker)."""
    _check(bits, block_size)
    if bits == 4:
        codes = unpack_nibbles(codes, numel)
    m = qmax(bits)
    nblocks = scales.numel()
    pad = nblocks * block_size - numel
    q = torch.nn.functional.pad(codes.to(torch.float32) - m, (0, pad)).view(nblocks, block_size)
    return (q * scales.to(torch.float32)[:, None]).reshape(-1)[:numel]


def dequantize(qt: Quantized) -> Tensor:
    """fp32 flat tensor of ``qt.numel`` values."""
    return dequantize_parts(qt.codes, qt.scales, qt.numel, qt.bits, qt.block_size)


def error_bound(x: Tensor, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Per-element worst-case error of round-to-nearest: ``max|x_block| / (2 qmax)`` (flat, fp32)."""
    _check(bits, block_size)
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    nblocks = math.ceil(n / block_size)
    blocks = torch.nn.functional.pad(flat, (0, nblocks * block_size - n)).view(nblocks, block_size)
    half_step = blocks.abs().amax(dim=1) / (2 * qmax(bits))
    return half_step.repeat_interleave(block_size)[:n]


def average_quantized(codes: list[Tensor], scales: list[Tensor], numel: int, bits: int, block_size: int) -> Tensor:
    """Mean over workers of their dequantised tensors, accumulated in fp32 (flat, ``numel`` values)."""
    total = torch.zeros(numel, dtype=torch.float32, device=codes[0].device)
    for c, s in zip(codes, scales):
        total += dequantize_parts(c, s, numel, bits, block_size)
    return total / len(codes)
