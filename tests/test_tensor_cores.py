"""kernels/mma.cuh on the emulator: conversions round as the hardware does, mma.sync and ldmatrix
follow the PTX ISA's fragment layouts, and their misuse is caught.

Inputs are small integers (exact in float16, bfloat16 and TF32, products and sums exact in float),
so results compare with ==; the rounding checks compare bit patterns with NumPy's float16 and with
bfloat16 / TF32 rounding written out below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpuconv import _paths
from gpuconv.emulate import Module, RaceError, WarpError

SOURCE = Path(__file__).parent / "emu_kernels" / "tensor_cores.cu"
NAMES = ["round_inputs", "mma_from_global<0>", "mma_from_global<1>", "mma_from_global<2>",
         "mma_through_ldmatrix<true>", "mma_through_ldmatrix<false>", "mma_wrong_fragment",
         "ldmatrix_misaligned"]
_modules: dict = {}


def module(mode="plain", schedule="forward"):
    key = (mode, schedule)
    if key not in _modules:
        _modules[key] = Module(path=SOURCE,
                               options=(f"-I{_paths.kernels_dir()}",), name_expressions=NAMES,
                               mode=mode, schedule=schedule, seed=3)
    return _modules[key]


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the top 16 bits of float32 (NaN aside)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) & 0xFFFF


def tf32_bits(x: np.ndarray) -> np.ndarray:
    """Nearest, ties away from zero, to 10 mantissa bits (cvt.rna.tf32.f32)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32)


def test_conversions_round_as_the_hardware():
    rng = np.random.default_rng(0)
    tiny = np.float32(2.0**-24)  # the smallest float16 subnormal
    x = np.concatenate([
        rng.standard_normal(200).astype(np.float32) * 1e3,
        rng.standard_normal(50).astype(np.float32) * 1e-6,        # float16 subnormals
        np.array([0.0, -0.0, 65504, 65519, 65520, 1e9, -1e9, tiny, tiny / 2, tiny * 1.5,
                  1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 2.0**-11 * 1.0001,
                  np.inf, -np.inf], np.float32),
    ])
    half, bfloat, tf32 = (np.zeros(x.size, np.uint32) for _ in range(3))
    module().get_function("round_inputs")(1, 64, (x, half, bfloat, tf32, np.int32(x.size)))
    with np.errstate(over="ignore"):  # 1e9 overflows float16 to inf, as cvt.rn does
        assert np.array_equal(half & 0xFFFF, x.astype(np.float16).view(np.uint16))
    assert np.array_equal(half >> 16, np.zeros_like(half))  # hi = 0.0 in the upper half
    assert np.array_equal(bfloat & 0xFFFF, bfloat16_bits(x))
    assert np.array_equal(tf32, np.where(np.isinf(x), x.view(np.uint32), tf32_bits(x)))
    # Ties: 1 + 2^-11 is halfway between float16 neighbours (to even: 1), and TF32's ties go away
    # from zero: 1 + 2^-11 rounds up to 1 + 2^-10.
    i = np.flatnonzero(x == np.float32(1 + 2.0**-11))[0]
    assert half[i] == np.float16(1).view(np.uint16)
    assert tf32[i].view(np.float32) == np.float32(1 + 2.0**-10)


@pytest.mark.parametrize("kind, K", [(0, 16), (1, 16), (2, 8)])
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_mma_fragments_follow_the_ptx_layout(kind, K, schedule):
    rng = np.random.default_rng(kind)
    a = rng.integers(-4, 5, (16, K)).astype(np.float32)
    b = rng.integers(-4, 5, (K, 8)).astype(np.float32)
    c = rng.integers(-9, 10, (16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    module(schedule=schedule).get_function(f"mma_from_global<{kind}>")(1, 32, (a, b, c, d))
    assert np.array_equal(d, a @ b + c)


def test_ldmatrix_feeds_mma_from_shared_memory():
    rng = np.random.default_rng(7)
    a = rng.integers(-3, 4, (16, 16)).astype(np.float32)
    b = rng.integers(-3, 4, (16, 16)).astype(np.float32)
    d = np.full((16, 16), np.nan, np.float32)
    module().get_function("mma_through_ldmatrix<true>")(1, 32, (a, b, d))
    assert np.array_equal(d, a @ b)


def test_ldmatrix_reads_are_race_checked_and_profiled():
    a, b = np.ones((16, 16), np.float32), np.ones((16, 16), np.float32)
    d = np.zeros((16, 16), np.float32)
    module("race").get_function("mma_through_ldmatrix<true>")(1, 32, (a, b, d))  # __syncwarp orders them
    assert np.array_equal(d, np.full((16, 16), 16, np.float32))
    profiled = module("profile")
    profiled.reset_counters()
    profiled.get_function("mma_through_ldmatrix<true>")(1, 32, (a, b, d))
    [row] = [r for r in profiled.counters() if r["space"] == "shared" and r["bytes"] == 16]
    # Two ldmatrix.x4 (both inlined from mma.cuh's one line): 32 lanes × 16-byte rows each, in
    # phases of 8 rows. The tiles' rows are 32 bytes apart, so rows r and r + 4 of a phase share
    # banks: 2 wavefronts a phase where 1 would do — the conflict a swizzled layout avoids.
    assert (row["requests"], row["lanes"], row["wavefronts"], row["ideal"]) == (2, 64, 16, 8)


def test_a_wrong_fragment_mapping_gives_a_wrong_result():
    rng = np.random.default_rng(1)
    a = rng.integers(-4, 5, (16, 8)).astype(np.float32)
    b = rng.integers(-4, 5, (8, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    module().get_function("mma_wrong_fragment")(1, 32, (a, b, d))
    assert not np.array_equal(d, a @ b)


def test_misaligned_ldmatrix_is_refused():
    with pytest.raises(WarpError, match=r"ldmatrix.*row address .* is not 16-byte aligned"):
        module().get_function("ldmatrix_misaligned")(1, 32, (np.zeros(32, np.uint32),))


def test_mma_needs_the_whole_warp():
    a, b = np.ones((16, 8), np.float32), np.ones((8, 8), np.float32)
    with pytest.raises(WarpError, match=r"mma.sync .* is .aligned: all 32 lanes"):
        module().get_function("mma_from_global<2>")(1, 16, (a, b, np.zeros((16, 8), np.float32),
                                                             np.zeros((16, 8), np.float32)))


def test_ldmatrix_without_syncwarp_is_a_race():
    a, b, d = np.ones((16, 16), np.float32), np.ones((16, 16), np.float32), np.zeros((16, 16), np.float32)
    with pytest.raises(RaceError, match=r"read-after-write.*_tile"):
        module("race").get_function("mma_through_ldmatrix<false>")(1, 32, (a, b, d))
