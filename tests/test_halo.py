"""The halo tiles (kernels/fprop_tc.cu, STAGING_HALO) on the emulator: fprop's x staged once a block
of 32 channels (16 in TF32) as a patch that every tap reads, w reordered to [K][R][S][C/groups] by
the backend; and dgrad at stride 1, the same kernel on dy with w flipped and transposed
(dgrad_as_fprop).

Small integers are exact in float16, bfloat16 and TF32 and in their float32 sums, so a result is
the float64 reference rounded once, compared with ==; outputs are poisoned (NaN) before the kernel
runs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpuconv import reference as ref
from gpuconv.backends import kernel_backend as kb
from gpuconv.problem import conv_problem, transpose_problem

from problems import needs_sass_tools, problem, rel_err, run_op, run_tensor_op

ml_dtypes = pytest.importorskip("ml_dtypes")
TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
HALO, HALO_TF32 = kb.HALO_TILE, kb.HALO_TILE_TF32

# Problems the halo tile runs (halo_fits), each reaching something of its own.
CASES = {
    # two pixel blocks of 128 whose patches cross images (P·Q = 48), 2 channel blocks, K = 40 of a
    # 128-wide tile (B's rows past K copy zeros), a 3×2 filter, asymmetric padding
    "images": dict(x=(5, 64, 6, 8), w=(40, 64, 3, 2), padding=(1, 1, 0, 1)),
    # strides and dilations of both axes: a tap is an offset of dil_h·Wp + dil_w positions
    "stride_dilation": dict(x=(3, 32, 7, 10), w=(20, 32, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1),
                            dilation=(1, 2)),
    # groups: each group's channels and filters; 68 output channels a group; odd left padding (an
    # extra patch column before the padded ones, so that pairs start on even columns of x)
    "groups": dict(x=(9, 64, 5, 4), w=(136, 32, 2, 3), groups=2, padding=1),
    # K = 136: a second block of output channels; 3 pixel blocks of 48-wide rows, the middle one
    # crossing images: a patch of 416 positions, more than HALO_REPORTED_POSITIONS; 2 channel
    # blocks, so that the second patch buffer, which starts where the first patch ends, is used
    # (the launch's shared memory is sized by the problem: asan mode finds a launch too short for
    # the last position staged, test_sanitizers_are_clean)
    "wide": dict(x=(2, 64, 4, 48), w=(136, 64, 3, 3), padding=1),
}


def integers(rng, shape, dtype, bound=3):
    return rng.integers(-bound, bound + 1, shape).astype(TYPES[dtype])


def case_arrays(p, dtype, seed):
    rng = np.random.default_rng(seed)
    return dict(x=integers(rng, p.x_shape, dtype), w=integers(rng, p.w_shape, dtype),
                dy=integers(rng, p.y_shape, dtype), bias_k=integers(rng, (p.K,), dtype),
                bias_c=integers(rng, (p.C,), dtype))


def run_halo(p, a, activation="relu", op="fprop", precision="highest", **emulate):
    """``op`` on the halo tile of p's dtype (float32: at ``precision``, 'tf32' or 'tf32x3')."""
    tile = HALO_TF32 if p.dtype == "float32" else HALO
    backend = kb.emulate_backend(**{f"{op}_kernel": tile}, **emulate)
    assert kb.choose_tensor_core(op, p, tile) == tile
    assert kb.tensor_staging(op, p, tile, a["w"]) == "halo"
    got = run_tensor_op(backend, op, p, a, activation if op == "fprop" else None, precision)
    assert got is not None and got.dtype == a["x"].dtype
    return got.astype(np.float64)


def exact(p, a, activation="relu", op="fprop"):
    want = run_op(ref, op, p, {k: None if v is None else v.astype(np.float64) for k, v in a.items()},
                  activation if op == "fprop" else None)
    return want.astype(a["x"].dtype).astype(np.float64)


HALF = ["float16", "bfloat16"]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", CASES)
def test_small_integers_are_exact(name, dtype):
    p = problem(CASES[name], dtype)
    assert kb.halo_fits(p), name
    a = case_arrays(p, dtype, seed=len(name))
    np.testing.assert_array_equal(run_halo(p, a), exact(p, a))


@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
@pytest.mark.parametrize("name", CASES)
def test_tf32_small_integers_are_exact(name, precision):
    """The TF32 tile: 16 channels a k-tile, a unit of 4 channels of a pair of positions (8-byte
    loads), rounded to TF32 as staged ('tf32x3': split at the fragments), w rounded by the host."""
    p = problem(CASES[name], "float32")
    assert kb.halo_fits(p) and kb.choose_fprop_tensor_core(p, HALO_TF32) == HALO_TF32, name
    a = case_arrays(p, "float32", seed=len(name))
    np.testing.assert_array_equal(run_halo(p, a, precision=precision), exact(p, a))


# dgrad at stride 1: the reduction runs over K (a multiple of 32), the output is x's H×W.
DGRAD_CASES = {
    # two blocks of 32 output channels (dgrad's reduction), dx's pixels crossing images, C = 40
    "images": dict(x=(5, 40, 6, 8), w=(64, 40, 3, 2), padding=(1, 1, 0, 1)),
    # dilation and padding less than the filter reaches: dgrad_as_fprop pads more than fprop did
    "dilation": dict(x=(2, 24, 9, 10), w=(32, 24, 3, 3), padding=(2, 0, 1, 3), dilation=(1, 2)),
    # groups: 32 output channels and 68 input channels a group
    "groups": dict(x=(3, 136, 5, 4), w=(64, 68, 2, 3), groups=2, padding=1),
}


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("name", DGRAD_CASES)
def test_dgrad_small_integers_are_exact(name, dtype):
    p = problem(DGRAD_CASES[name], dtype)
    assert kb.halo_fits(kb.dgrad_as_fprop(p)), name
    a = case_arrays(p, dtype, seed=len(name))
    precision = "tf32" if dtype == "float32" else "highest"
    np.testing.assert_array_equal(run_halo(p, a, op="dgrad", precision=precision), exact(p, a, op="dgrad"))


def test_conv_transpose2d_output_padding_takes_the_halo_tile():
    """output_padding makes x's H×W larger than P, Q give: dgrad_as_fprop pads the bottom and right
    more; the bias is fprop's, over dgrad's C."""
    p = transpose_problem((2, 32, 6, 6), (32, 16, 3, 3), padding=1, output_padding=(1, 0), dilation=2,
                          dtype="float16")
    assert (p.H, p.W) == (p.P + 3, p.Q + 2)
    a = case_arrays(p, "float16", seed=6)
    np.testing.assert_array_equal(run_halo(p, a, op="dgrad"), exact(p, a, op="dgrad"))


def test_dgrad_as_fprop_only_at_stride_1_and_within_the_filter():
    p = conv_problem((2, 32, 9, 9), (64, 32, 3, 3), padding=1, dtype="float16")
    q = kb.dgrad_as_fprop(p)
    assert (q.x_shape, q.w_shape, q.y_shape) == (p.y_shape, (32, 64, 3, 3), p.x_shape)
    assert q.padding == (1, 1, 1, 1)
    assert kb.choose_tensor_core("dgrad", conv_problem((32, 128, 28, 28), (256, 128, 3, 3), padding=1,
                                                       dtype="float16")) == HALO  # 'auto' takes it
    assert kb.dgrad_as_fprop(conv_problem((2, 32, 9, 9), (64, 32, 3, 3), stride=2, dtype="float16")) is None
    # padding beyond the filter's reach would pad dy negatively: the other tiles take it
    wide_pad = conv_problem((2, 32, 9, 9), (64, 32, 3, 3), padding=3, dtype="float16")
    assert kb.dgrad_as_fprop(wide_pad) is None and kb.choose_tensor_core("dgrad", wide_pad, HALO) is None


@pytest.mark.parametrize("mode, case, dtype", [("race", "images", "float16"), ("asan", "wide", "float16"),
                                               ("asan", "wide", "float32")])
def test_sanitizers_are_clean(mode, case, dtype):
    p = problem(CASES[case], dtype)
    a = case_arrays(p, dtype, seed=1)
    precision = "tf32" if dtype == "float32" else "highest"
    np.testing.assert_array_equal(run_halo(p, a, precision=precision, mode=mode), exact(p, a))


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


def test_tf32_random_inputs_round_as_the_numpy_backend():
    """Random normal float32 at 'tf32': the inputs rounded as cvt.rna does (x as staged, w by the
    host), float32 products: the numpy backend's 'tf32' to float32 accumulation noise, and TF32's
    error against 'highest'. At 'tf32x3', within a few float32 ulps of the float64 reference."""
    import gpuconv as gc

    p = problem(CASES["images"], "float32")
    rng = np.random.default_rng(5)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in (p.x_shape, p.w_shape))
    kw = dict(padding=(1, 1, 0, 1))
    a = dict(x=x, w=w, bias_k=None, dy=None, bias_c=None)
    tf32 = run_halo(p, a, activation=None, precision="tf32")
    want = ref.fprop(p, x.astype(np.float64), w.astype(np.float64), None, None)
    assert rel_err(tf32, gc.conv2d(x, w, **kw, precision="tf32", backend="numpy")) <= 1e-5
    assert rel_err(tf32, want) > 100 * 2**-23  # the inputs were rounded
    x3 = run_halo(p, a, activation=None, precision="tf32x3")
    assert rel_err(x3, want) <= 4 * max(rel_err(gc.conv2d(x, w, **kw, backend="numpy"), want), 2**-23)


def brute_force_positions(p) -> int:
    """The most padded positions of x that a block of 128 pixels reads, counted pixel by pixel and
    tap by tap: the rows between its lowest and highest padded row, times the padded width and
    the columns that pair the positions on even columns of x (one before where pad_left is odd,
    one after where that leaves the row odd)."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    Hp = (p.P - 1) * sh + (p.R - 1) * dh + 1
    Wp = (p.Q - 1) * sw + (p.S - 1) * dw + 1 + p.padding[2] % 2
    Wp += Wp % 2
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


def test_the_largest_patch_fits_every_tensor_core_gpus_block():
    """halo_fits takes patches up to HALO_POSITIONS; the launch's dynamic shared memory for one
    that large is within what a block may opt in to on every architecture the tensor-core
    kernels compile for (sm_86 and sm_89: 99 KB), and the launch is sized by the problem."""
    from gpuconv import sass

    largest = kb.halo_shared_bytes(kb.HALO_POSITIONS)
    for arch in ("sm_80", "sm_86", "sm_89", "sm_90"):
        assert largest <= sass.ARCH_LIMITS[arch].shared_per_block, arch
    assert kb.HALO_POSITIONS % 8 == 0  # the position table's ints keep the patches 16-byte aligned
    p = problem(CASES["wide"], "float16")
    assert kb.halo_shared_bytes(kb.halo_positions(p)) < largest


def test_halo_fits_only_what_the_kernel_runs():
    fits = conv_problem((32, 128, 28, 28), (256, 128, 3, 3), padding=1, dtype="float16")
    assert kb.halo_fits(fits) and kb.choose_fprop_tensor_core(fits) == HALO  # 'auto' takes it
    assert not kb.halo_fits(conv_problem((32, 128, 28, 28), (256, 128, 1, 1), dtype="float16"))  # one tap
    assert not kb.halo_fits(conv_problem((32, 24, 28, 28), (256, 24, 3, 3), dtype="float16"))  # 24 channels
    odd_width = conv_problem((32, 64, 7, 7), (256, 64, 3, 3), padding=1, dtype="float16")
    assert not kb.halo_fits(odd_width)  # a pair of positions is one 4-byte load: W even
    wide = conv_problem((2, 32, 8, 400), (8, 32, 3, 3), padding=1, dtype="float16")
    assert kb.halo_positions(wide) > kb.HALO_POSITIONS and not kb.halo_fits(wide)
    # a 2-tap filter's k-tiles stage 2·64 positions of a patch
    two_taps = conv_problem((1, 32, 12, 12), (8, 32, 2, 1), dtype="float16")
    assert kb.halo_positions(two_taps) > 128 and not kb.halo_fits(two_taps)
    assert kb.choose_fprop_tensor_core(wide, HALO) is None  # forced where it cannot run: not taken
    # 'auto' on a problem the halo tile does not fit takes the tap-major tile
    assert kb.choose_fprop_tensor_core(conv_problem((32, 32, 28, 400), (256, 32, 3, 3), padding=1,
                                                    dtype="float16")) == "128x128x32_tc"
    tf32 = dataclasses.replace(fits, dtype="float32")
    assert kb.halo_fits(tf32) and kb.choose_fprop_tensor_core(tf32) == HALO_TF32  # TF32: its own tile
    assert kb.choose_fprop_tensor_core(tf32, HALO) is None  # the half tile is not built for float32
    # TF32's k-tile is 16 channels: 24 do not fill it
    assert not kb.halo_fits(conv_problem((32, 24, 28, 28), (256, 24, 3, 3), dtype="float32"))
    assert kb.halo_fits(conv_problem((32, 48, 28, 28), (256, 48, 3, 3), dtype="float32"))


@pytest.mark.parametrize("op, dtype", [("fprop", "float16"), ("dgrad", "float16"), ("fprop", "float32")])
def test_shared_memory_is_conflict_free(op, dtype):
    """Every shared access (the position table, the patch's 16-byte staging stores, B's cp.async
    copies, ldmatrix of the patch and of B) takes the ideal wavefronts in ``gpuconv profile``:
    positions 80 bytes apart start on distinct bank groups (TF32's too). 8 pixels a row
    (Q = W = 8): each 8-lane phase of ldmatrix reads 8 consecutive positions."""
    from gpuconv import profile

    p = problem(dict(x=(2, 32, 8, 8), w=(32, 32, 3, 3), padding=1), dtype)
    tile = HALO_TF32 if dtype == "float32" else HALO
    run = profile.run(op, p, tile, precision="tf32" if dtype == "float32" else "highest")
    assert run.kernel == tile
    shared = [row for row in run.rows if row["space"] == "shared"]
    assert {row["kind"] for row in shared} >= {"store", "load", "cp.async"}
    assert all(row["wavefronts"] == row["ideal"] for row in shared), shared


@needs_sass_tools
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_main_loop_is_hmma_ldmatrix_and_cp_async(arch):
    """NVRTC compiles the halo kernel as the cuda backend does: a loop of two k-tiles (the main
    loop's KTilesAnIteration), each 64 HMMA (4×8 mma tiles of a 64×64 warp, two k16 steps), 16
    ldmatrix.x4, B's 4 LDGSTS, the patch unit's 8 four-byte loads and two 16-byte stores and one
    barrier; no spills; two blocks of 4 warps an SM (dynamic shared memory)."""
    from gpuconv import sass

    name = kb.tensor_kernel_name("fprop", "float16", HALO, "halo")
    tf32 = kb.tensor_kernel_name("fprop", "tf32", HALO_TF32, "halo")
    reports = {r.kernel: r for r in sass.analyze([arch], [name, tf32])}
    half, single = reports[name], reports[tf32]
    assert (half.hmma, half.ldsm, half.ldgsts, half.bar, half.spills) == (2 * 64, 2 * 16, {128: 2 * 4}, 2, 0)
    assert (half.ldg, half.sts) == ({32: 2 * 8}, {128: 2 * 2})  # the patch unit: 8 planes, two 16-byte stores
    # TF32: 16 channels a k-tile, two m16n8k8 steps: the same mma count, ldmatrix (A and B) and
    # copies; the unit's 4 planes by 8-byte loads
    assert (single.hmma, single.ldsm, single.ldgsts, single.bar, single.spills) == (128, 32, {128: 8}, 2, 0)
    assert (single.ldg, single.sts) == ({64: 2 * 4}, {128: 2 * 2})
    reported = kb.halo_shared_bytes(kb.HALO_REPORTED_POSITIONS)
    for r in (half, single):
        assert (r.threads, r.shared_bytes, r.blocks_per_sm) == (128, reported, 2)
