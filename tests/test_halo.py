"""fprop's halo tile (kernels/fprop_tc.cu, STAGING_HALO) on the emulator: x staged once a block of
16 channels as a patch that every tap reads, w reordered to [K][R][S][C/groups] by the backend.

Small integers are exact in float16 and bfloat16 and in their float32 sums, so a result is the
float64 reference rounded once, compared with ==; outputs are poisoned (NaN) before the kernel runs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpuconv import reference as ref
from gpuconv.backends import kernel_backend as kb
from gpuconv.problem import conv_problem

from problems import problem, rel_err, run_op, run_tensor_op

ml_dtypes = pytest.importorskip("ml_dtypes")
TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
HALO = kb.HALO_TILE

# Problems the halo tile runs (halo_fits), each reaching something of its own.
CASES = {
    # two pixel blocks of 128 whose patches cross images (P·Q = 42), 3 channel blocks, K = 40 of a
    # 128-wide tile (B's rows past K copy zeros), a 3×2 filter, asymmetric padding
    "images": dict(x=(5, 48, 6, 7), w=(40, 48, 3, 2), padding=(1, 1, 0, 1)),
    # strides and dilations of both axes: a tap is an offset of dil_h·Wp + dil_w positions
    "stride_dilation": dict(x=(3, 16, 11, 10), w=(20, 16, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1),
                            dilation=(1, 2)),
    # groups: each group's channels and filters; 68 output channels a group
    "groups": dict(x=(9, 32, 5, 4), w=(136, 16, 2, 3), groups=2, padding=1),
    # K = 136: a second block of output channels; one image of 16×16 pixels, 2 pixel blocks
    "wide": dict(x=(1, 16, 16, 16), w=(136, 16, 3, 3), padding=1),
}


def integers(rng, shape, dtype, bound=3):
    return rng.integers(-bound, bound + 1, shape).astype(TYPES[dtype])


def case_arrays(p, dtype, seed):
    rng = np.random.default_rng(seed)
    return dict(x=integers(rng, p.x_shape, dtype), w=integers(rng, p.w_shape, dtype),
                bias_k=integers(rng, (p.K,), dtype), dy=None, bias_c=None)


def run_halo(p, a, activation="relu", **emulate):
    backend = kb.emulate_backend(fprop_kernel=HALO, **emulate)
    assert kb.choose_fprop_tensor_core(p, HALO) == HALO
    assert kb.tensor_staging("fprop", p, HALO, a["w"]) == "halo"
    got = run_tensor_op(backend, "fprop", p, a, activation)
    assert got is not None and got.dtype == a["x"].dtype
    return got.astype(np.float64)


def exact(p, a, activation="relu"):
    want = run_op(ref, "fprop", p, {k: None if v is None else v.astype(np.float64) for k, v in a.items()},
                  activation)
    return want.astype(a["x"].dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("name", CASES)
def test_small_integers_are_exact(name, dtype):
    p = problem(CASES[name], dtype)
    assert kb.halo_fits(p), name
    a = case_arrays(p, dtype, seed=len(name))
    np.testing.assert_array_equal(run_halo(p, a), exact(p, a))


@pytest.mark.parametrize("mode", ["race", "asan"])
def test_sanitizers_are_clean(mode):
    p = problem(CASES["images"], "float16")
    a = case_arrays(p, "float16", seed=1)
    np.testing.assert_array_equal(run_halo(p, a, mode=mode), exact(p, a))


@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_schedules_agree(schedule):
    p = problem(CASES["stride_dilation"], "bfloat16")
    a = case_arrays(p, "bfloat16", seed=2)
    np.testing.assert_array_equal(run_halo(p, a, schedule=schedule, seed=3), exact(p, a))


def test_random_inputs_are_as_accurate_as_the_other_tiles():
    """Random normal float16: the error against float64 on the same inputs is float32 accumulation
    plus one rounding, as the tap-major tile's (another order of the same sums)."""
    p = problem(CASES["wide"], "float16")
    rng = np.random.default_rng(4)
    a = dict(x=rng.standard_normal(p.x_shape).astype(np.float16),
             w=rng.standard_normal(p.w_shape).astype(np.float16), bias_k=None, dy=None, bias_c=None)
    want = ref.fprop(p, a["x"].astype(np.float64), a["w"].astype(np.float64), None, None)
    halo = run_halo(p, a, activation=None)
    other = run_tensor_op(kb.emulate_backend(fprop_kernel="64x64x32_tc"), "fprop", p, a).astype(np.float64)
    rounding = rel_err(want.astype(np.float16), want)  # the output's own rounding
    assert rel_err(halo, want) <= 2 * max(rel_err(other, want), rounding)


def brute_force_positions(p) -> int:
    """The most padded positions of x that a block of 128 pixels reads, counted pixel by pixel and
    tap by tap: the rows between its lowest and highest padded row, times the padded width."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    Hp, Wp = (p.P - 1) * sh + (p.R - 1) * dh + 1, (p.Q - 1) * sw + (p.S - 1) * dw + 1
    most = 0
    for first in range(0, p.N * p.P * p.Q, 128):
        rows = {n * Hp + pp * sh + r * dh
                for m in range(first, min(first + 128, p.N * p.P * p.Q))
                for n, pp in [divmod(m // p.Q, p.P)] for r in range(p.R)}
        most = max(most, (max(rows) - min(rows) + 1) * Wp)
    return most


@pytest.mark.parametrize("shape", [dict(x=(5, 48, 6, 7), w=(40, 48, 3, 2), padding=1),
                                   dict(x=(4, 16, 7, 7), w=(8, 16, 3, 3), padding=1),
                                   dict(x=(2, 16, 13, 9), w=(8, 16, 3, 3), stride=2, dilation=(2, 1)),
                                   dict(x=(3, 16, 40, 1), w=(8, 16, 3, 1))])
def test_patch_size_is_the_most_a_block_reads(shape):
    p = problem(shape, "float16")
    assert kb.halo_positions(p) == brute_force_positions(p)


def test_halo_fits_only_what_the_kernel_runs():
    fits = conv_problem((32, 128, 28, 28), (256, 128, 3, 3), padding=1, dtype="float16")
    assert kb.halo_fits(fits) and kb.choose_fprop_tensor_core(fits) == HALO  # 'auto' takes it
    assert not kb.halo_fits(conv_problem((32, 128, 28, 28), (256, 128, 1, 1), dtype="float16"))  # one tap
    assert not kb.halo_fits(conv_problem((32, 24, 28, 28), (256, 24, 3, 3), dtype="float16"))  # 24 channels
    wide = conv_problem((2, 16, 8, 400), (8, 16, 3, 3), padding=1, dtype="float16")
    assert kb.halo_positions(wide) > kb.HALO_POSITIONS and not kb.halo_fits(wide)
    # a 2-tap filter's k-tiles stage 2·64 positions of a patch
    two_taps = conv_problem((1, 16, 12, 12), (8, 16, 2, 1), dtype="float16")
    assert kb.halo_positions(two_taps) > 128 and not kb.halo_fits(two_taps)
    assert kb.choose_fprop_tensor_core(wide, HALO) is None  # forced where it cannot run: not taken
    # 'auto' on a problem the halo tile does not fit takes the tap-major tile
    assert kb.choose_fprop_tensor_core(conv_problem((32, 32, 28, 400), (256, 32, 3, 3), padding=1,
                                                    dtype="float16")) == "128x128x32_tc"
    assert kb.choose_fprop_tensor_core(dataclasses.replace(fits, dtype="float32")) == "64x64x32_tc"  # TF32
