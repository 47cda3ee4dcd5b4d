"""The outer-gradient quantiser: round-trip error bound, nibble packing, byte counts, averaging in fp32."""

import math

import pytest
import torch

from trainlab.distributed import quantize as qz


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("numel,block", [(1000, 256), (257, 256), (7, 3), (1, 256), (4096, 4096)])
def test_round_trip_within_half_a_step(bits, numel, block):
    g = torch.Generator().manual_seed(numel + bits)
    x = torch.randn(numel, generator=g, dtype=torch.float64) * torch.logspace(-3, 2, numel, dtype=torch.float64)
    q = qz.quantize(x, bits, block)
    y = qz.dequantize(q)
    assert y.dtype == torch.float32 and y.shape == (numel,)
    # analytic bound: half a grid step of each block, max|x_block| / (2 * (2^(bits-1) - 1)); fp32 slack
    blocks = torch.nn.functional.pad(x.abs(), (0, -numel % block)).view(-1, block).amax(dim=1)
    bound = (blocks / (2 * (2 ** (bits - 1) - 1))).repeat_interleave(block)[:numel]
    assert torch.allclose(bound.float(), qz.error_bound(x, bits, block), rtol=1e-6, atol=0)
    err = (y.double() - x).abs()
    assert bool((err <= bound * (1 + 1e-5) + 1e-30).all())
    # the block maximum is represented exactly up to fp32 rounding (code ±qmax)
    assert q.codes.dtype == torch.uint8


def test_zero_and_constant_blocks_are_exact():
    x = torch.cat([torch.zeros(300), torch.full((212,), -2.5)])
    for bits in (8, 4):
        assert torch.equal(qz.dequantize(qz.quantize(x, bits, 256)), x)


def test_codes_use_the_symmetric_grid():
    x = torch.tensor([-1.0, -0.25, 0.0, 0.3, 1.0])
    q8 = qz.quantize(x, 8, 8)  # scale 1/127: -31.75 -> -32, 38.1 -> 38; stored offset by 127
    assert q8.codes.tolist() == [0, 95, 127, 165, 254]
    assert torch.allclose(q8.scales, torch.tensor([1.0 / 127]))
    q4 = qz.quantize(x, 4, 8)  # scale 1/7: -1.75 -> -2, 2.1 -> 2; stored offset by 7
    assert qz.unpack_nibbles(q4.codes, 5).tolist() == [0, 5, 7, 9, 14]


def test_nibble_packing_is_exact_and_ordered():
    codes = torch.arange(16, dtype=torch.uint8).repeat(3)[:47]
    packed = qz.pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 24
    assert packed[0].item() == 0 | (1 << 4) and packed[1].item() == 2 | (3 << 4)
    assert torch.equal(qz.unpack_nibbles(packed, 47), codes)
    every = torch.tensor([a for a in range(16) for _ in range(16)], dtype=torch.uint8)
    pairs = torch.stack([every, torch.arange(16, dtype=torch.uint8).repeat(16)], 1).reshape(-1)
    assert torch.equal(qz.unpack_nibbles(qz.pack_nibbles(pairs), pairs.numel()), pairs)
    assert qz.pack_nibbles(pairs).unique().numel() == 256


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("numel,block", [(1000, 256), (1001, 100), (1, 1), (513, 512)])
def test_byte_counts_are_codes_plus_scales(bits, numel, block):
    q = qz.quantize(torch.randn(numel), bits, block)
    expect_codes = numel if bits == 8 else math.ceil(numel / 2)
    nblocks = math.ceil(numel / block)
    assert q.codes.numel() == expect_codes and q.scales.numel() == nblocks and q.scales.dtype == torch.float32
    assert q.nbytes == expect_codes + 4 * nblocks == qz.quantized_nbytes(numel, bits, block)


def test_4bit_is_about_8x_smaller_than_fp32():
    n = 1 << 16
    assert n * 4 / qz.quantized_nbytes(n, 4, 256) == pytest.approx(8 / (1 + 8 / 256), rel=1e-9)
    assert n * 4 / qz.quantized_nbytes(n, 8, 256) == pytest.approx(4 / (1 + 4 / 256), rel=1e-9)


def test_average_quantized_is_mean_of_dequantised_in_fp32():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(600, generator=g) * (k + 1) for k in range(3)]
    qs = [qz.quantize(x, 4, 128) for x in xs]
    avg = qz.average_quantized([q.codes for q in qs], [q.scales for q in qs], 600, 4, 128)
    ref = sum(qz.dequantize(q).double() for q in qs) / 3
    assert avg.dtype == torch.float32 and torch.allclose(avg.double(), ref, atol=1e-6)
    bound = sum(qz.error_bound(x, 4, 128).double() for x in xs) / 3
    assert bool(((avg.double() - sum(x.double() for x in xs) / 3).abs() <= bound * (1 + 1e-5)).all())


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        qz.quantize(torch.ones(3), 3)
    with pytest.raises(ValueError, match="block_size"):
        qz.quantize(torch.ones(3), 8, 0)
    with pytest.raises(ValueError, match="uint8"):
        qz.pack_nibbles(torch.ones(2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quantiser_runs_on_cuda_like_on_cpu():
    x = torch.randn(3001, generator=torch.Generator().manual_seed(1))
    for bits in (8, 4):
        cpu = qz.quantize(x, bits, 128)
        gpu = qz.quantize(x.cuda(), bits, 128)
        assert torch.equal(gpu.codes.cpu(), cpu.codes) and torch.allclose(gpu.scales.cpu(), cpu.scales)
        assert torch.allclose(qz.dequantize(gpu).cpu(), qz.dequantize(cpu))
