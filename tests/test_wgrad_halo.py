"""wgrad's halo tile (kernels/wgrad_tc.cu, STAGING_HALO) on the emulator: x staged once a k-tile of
32 pixels as a patch of padded rows that all 9 taps of a 3×3 filter read, a block 128 output
channels × 32 input channels × 9 taps, dy copied by cp.async (where W or P·Q is odd,
STAGING_HALO_ODD: x's positions and dy loaded 2 bytes at a time).

Small integers are exact in float16 and bfloat16 and in their float32 sums, so a result is the
float64 reference rounded once, compared with ==; the backend's workspace is fresh memory.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpuconv import reference as ref
from gpuconv.backends import kernel_backend as kb
from gpuconv.problem import conv_problem

from problems import needs_sass_tools, problem, rel_err, run_tensor_op

ml_dtypes = pytest.importorskip("ml_dtypes")
TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
HALO = kb.WGRAD_HALO_TILE

# Problems the tile runs (wgrad_halo_fits), each reaching something of its own.
CASES = {
    # P·Q = 48: k-tiles whose pixels cross images (the patch's rows run on into the next image's
    # padding and rows); K = 136: a second block of output channels, 8 of its 128 rows live
    "images": dict(x=(3, 64, 6, 8), w=(136, 64, 3, 3), padding=1),
    # asymmetric padding, odd on the left (a patch column before the padded ones, so that pairs
    # start on even columns of x); dilation: a tap is dil_h·Wp + dil_w positions on
    "dilation": dict(x=(3, 64, 6, 10), w=(40, 64, 3, 3), padding=(2, 0, 1, 1), dilation=(1, 2)),
    # P·Q = 36: dy's 8-byte runs (not 16-byte ones) in k-tiles across images
    "quads": dict(x=(3, 32, 6, 6), w=(24, 32, 3, 3), padding=1),
    # stride 2: pixel (p, q) at padded row 2p, column 2q; P·Q = 48, so k-tiles cross images
    "stride": dict(x=(3, 32, 12, 16), w=(40, 32, 3, 3), stride=2, padding=1),
    # stride and dilation on different axes, odd left padding
    "stride_dilation": dict(x=(2, 64, 8, 14), w=(24, 64, 3, 3), stride=(1, 2), padding=(2, 2, 1, 1),
                            dilation=(2, 1)),
    # stride 2 on 28×28: a 270-position patch, above 256, so the three-unit staging ('halo_wide')
    "wide": dict(x=(2, 32, 28, 28), w=(8, 32, 3, 3), stride=2, padding=1),
    # groups: each group's 32 channels and 20 filters; a 1×9 filter is 9 taps too
    "groups": dict(x=(2, 64, 8, 12), w=(40, 32, 1, 9), groups=2, padding=(0, 0, 4, 4)),
    # N·P·Q = 432, split-K over 3 splits: the last one's last k-tile ends past the reduction (its
    # pixels past N·P·Q are an image N of padding); k-tiles of 2-3 rows, across images
    "splits": dict(x=(3, 32, 12, 12), w=(8, 32, 3, 3), padding=1),
    # 'halo_odd': W = 7 (res5's images: a pair's second position past x's row at its right edge),
    # P·Q = 49 (dy an element a load), k-tiles across images, K = 40
    "odd_width": dict(x=(3, 32, 7, 7), w=(40, 32, 3, 3), padding=1),
    # 'halo_odd' with W even: P·Q = 54, not a multiple of 4; odd left padding
    "odd_pixels": dict(x=(2, 64, 9, 6), w=(24, 64, 3, 3), padding=(1, 1, 1, 1)),
}


def integers(rng, shape, dtype, bound=3):
    return rng.integers(-bound, bound + 1, shape).astype(TYPES[dtype])


def case_arrays(p, dtype, seed):
    rng = np.random.default_rng(seed)
    return dict(x=integers(rng, p.x_shape, dtype), dy=integers(rng, p.y_shape, dtype))


def run_halo(p, a, **emulate):
    backend = kb.emulate_backend(wgrad_kernel=HALO, **emulate)
    assert kb.choose_wgrad_tensor_core(p, HALO) == HALO
    positions = kb.wgrad_halo_positions(p)
    staging = "halo_odd" if kb.wgrad_halo_odd(p) else "halo" if positions <= 256 else "halo_wide"
    assert kb.tensor_staging("wgrad", p, HALO, a["dy"]) == staging
    got = run_tensor_op(backend, "wgrad", p, a)
    assert got is not None and got.dtype == a["x"].dtype
    return got.astype(np.float64)


def exact(p, a):
    want = ref.wgrad(p, a["x"].astype(np.float64), a["dy"].astype(np.float64))
    return want.astype(a["x"].dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("name", CASES)
def test_small_integers_are_exact(name, dtype):
    p = problem(CASES[name], dtype)
    assert kb.wgrad_halo_fits(p), name
    a = case_arrays(p, dtype, seed=len(name))
    np.testing.assert_array_equal(run_halo(p, a), exact(p, a))


def test_splits_case_splits_and_ends_past_the_reduction():
    p = problem(CASES["splits"], "float16")
    splits, chunk = kb.wgrad_splits(p, kb.TENSOR_TILES["wgrad"][HALO])
    assert splits > 1 and p.N * p.P * p.Q % kb.TENSOR_TILES["wgrad"][HALO].BK != 0


@pytest.mark.parametrize("name", ["splits", "odd_width"])
def test_infinities_reach_only_the_taps_that_read_them(name):
    """An infinite x element poisons exactly the taps of dw whose real pixels read it: the pixels
    past the reduction and the patch's other positions multiply only zeros and finite values
    (W odd: the position after a row's last, which a pair's second load must not read)."""
    p = problem(CASES[name], "float16")
    a = case_arrays(p, "float16", seed=5)
    a["x"][1, 3, -1, -1] = np.inf  # the last image's last position: the last k-tile's patch
    a["x"][0, 7, 0, 5] = -np.inf
    a["x"][0, 9, 3, 0] = np.inf  # W odd: the element after row 2's last, in the same channel plane
    want = ref.wgrad(p, a["x"].astype(np.float64), a["dy"].astype(np.float64))
    got = run_halo(p, a)
    assert np.isinf(want).any() and np.isfinite(want).any()
    np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float64))


def test_a_misaligned_dy_is_copied_aligned():
    """dy's 8-byte copies need it 8-byte aligned: a view 2 bytes in is copied, not misread."""
    p = problem(CASES["images"], "bfloat16")
    a = case_arrays(p, "bfloat16", seed=3)
    backing = np.empty(a["dy"].size + 8, dtype=a["dy"].dtype)
    offset = (-backing.ctypes.data % 16) // 2 + 1  # one element past an 8-byte boundary
    dy = backing[offset:offset + a["dy"].size].reshape(a["dy"].shape)
    dy[...] = a["dy"]
    assert dy.ctypes.data % 8 != 0
    np.testing.assert_array_equal(run_halo(p, dict(a, dy=dy)), exact(p, a))


@pytest.mark.parametrize("mode, case", [("race", "images"), ("asan", "splits"), ("asan", "odd_width")])
def test_sanitizers_are_clean(mode, case):
    p = problem(CASES[case], "float16")
    a = case_arrays(p, "float16", seed=1)
    np.testing.assert_array_equal(run_halo(p, a, mode=mode), exact(p, a))


@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_schedules_agree(schedule):
    p = problem(CASES["dilation"], "bfloat16")
    a = case_arrays(p, "bfloat16", seed=2)
    np.testing.assert_array_equal(run_halo(p, a, schedule=schedule, seed=3), exact(p, a))


@pytest.mark.parametrize("dtype", TYPES)
def test_random_inputs_are_as_accurate_as_the_tap_major_tile(dtype):
    """Random normal inputs: the error against float64 on the same inputs is float32 accumulation
    plus one rounding, as the tap-major tile's (another order of the same sums)."""
    p = problem(CASES["images"], dtype)
    rng = np.random.default_rng(4)
    a = dict(x=rng.standard_normal(p.x_shape).astype(TYPES[dtype]),
             dy=rng.standard_normal(p.y_shape).astype(TYPES[dtype]))
    want = ref.wgrad(p, a["x"].astype(np.float64), a["dy"].astype(np.float64))
    halo = run_halo(p, a)
    other = run_tensor_op(kb.emulate_backend(wgrad_kernel="128x128x32_tc"), "wgrad", p, a).astype(np.float64)
    rounding = rel_err(want.astype(TYPES[dtype]), want)  # the output's own rounding
    assert rel_err(halo, want) <= 2 * max(rel_err(other, want), rounding)


def brute_force_positions(p) -> int:
    """The most padded positions a k-tile of 32 pixels reads, pixel by pixel and tap by tap: its
    rows from the lowest to the highest padded row (pixels past N·P·Q in an image N), times the
    padded width and the columns that pair positions on even columns of x."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    Hp, Wp = (p.P - 1) * sh + (p.R - 1) * dh + 1, (p.Q - 1) * sw + (p.S - 1) * dw + 1 + p.padding[2] % 2
    Wp += Wp % 2
    most = 0
    for first in range(0, p.N * p.P * p.Q, 32):
        rows = {n * Hp + pp * sh + r * dh
                for m in range(first, first + 32) for n, pp in [divmod(m // p.Q, p.P)] for r in range(p.R)}
        most = max(most, (max(rows) - min(rows) + 1) * Wp)
    return most


@pytest.mark.parametrize("name", CASES)
def test_patch_size_is_the_most_a_k_tile_reads(name):
    p = problem(CASES[name], "float16")
    assert kb.wgrad_halo_positions(p) == brute_force_positions(p)


def test_the_shared_memory_fits_every_tensor_core_gpus_block():
    from gpuconv import sass

    for arch in ("sm_80", "sm_86", "sm_89", "sm_90"):
        for staging in kb.tile_stagings("wgrad", HALO):
            assert kb.wgrad_halo_shared_bytes(staging) <= sass.ARCH_LIMITS[arch].shared_per_block, arch


def test_wgrad_halo_fits_only_what_the_kernel_runs():
    fits = conv_problem((32, 128, 28, 28), (128, 128, 3, 3), padding=1, dtype="float16")
    assert kb.wgrad_halo_fits(fits) and kb.choose_wgrad_tensor_core(fits) == HALO  # 'auto' takes it
    # ResNet-50's stride-2 3×3 layers take the three-unit staging (300 and 348 positions)
    for x, c in (((32, 256, 28, 28), 256), ((32, 128, 56, 56), 128)):
        s2 = conv_problem(x, (c, c, 3, 3), stride=2, padding=1, dtype="float16")
        assert kb.choose_wgrad_tensor_core(s2) == HALO
        assert kb.tensor_staging("wgrad", s2, HALO, None) == "halo_wide"
    assert not kb.wgrad_halo_fits(conv_problem((32, 128, 28, 28), (128, 128, 1, 1), dtype="float16"))
    forty_eight = conv_problem((32, 48, 28, 28), (128, 48, 3, 3), dtype="float16")
    assert not kb.wgrad_halo_fits(forty_eight)  # channels not a multiple of 32
    res5 = conv_problem((32, 512, 7, 7), (512, 512, 3, 3), padding=1, dtype="float16")  # W odd, P·Q = 49
    assert kb.wgrad_halo_fits(res5) and kb.choose_wgrad_tensor_core(res5) == HALO
    assert kb.tensor_staging("wgrad", res5, HALO, None) == "halo_odd"
    odd_pixels = conv_problem((32, 64, 6, 9), (64, 64, 3, 3), padding=1, dtype="float16")  # P·Q = 54
    assert kb.wgrad_halo_odd(odd_pixels) and kb.wgrad_halo_fits(odd_pixels)
    # one unit a thread where W or P·Q is odd: patches of 128 positions
    odd_wide = conv_problem((2, 32, 8, 31), (8, 32, 3, 3), padding=1, dtype="float16")
    assert 128 < kb.wgrad_halo_positions(odd_wide) <= 256 and not kb.wgrad_halo_fits(odd_wide)
    res4 = conv_problem((32, 256, 14, 14), (256, 256, 3, 3), padding=1, dtype="float16")
    assert kb.wgrad_halo_fits(res4) and kb.choose_wgrad_tensor_core(res4) == HALO  # P·Q = 196
    assert not kb.wgrad_halo_fits(conv_problem((2, 32, 4, 4), (8, 32, 3, 3), padding=1,
                                               dtype="float16"))  # P·Q = 16: a k-tile in 3 images
    too_wide = conv_problem((2, 32, 8, 200), (8, 32, 3, 3), padding=1, dtype="float16")
    assert kb.wgrad_halo_positions(too_wide) > kb.WGRAD_HALO_POSITIONS["halo_wide"]
    assert not kb.wgrad_halo_fits(too_wide)
    assert kb.choose_wgrad_tensor_core(too_wide, HALO) is None  # forced where it cannot run: not taken
    # 'auto' leaves it to 128×128 or 64×64 below 64 output channels, and in TF32
    assert kb.choose_wgrad_tensor_core(conv_problem((32, 128, 28, 28), (32, 128, 3, 3), padding=1,
                                                    dtype="float16")) == "64x64x32_tc"
    assert kb.choose_wgrad_tensor_core(dataclasses.replace(fits, dtype="float32")) == "64x64x32_tc"


@pytest.mark.parametrize("width", [8, 7])
def test_shared_memory_is_conflict_free(width):
    """Every shared store (the patch's 16-byte staging stores, the pixel table, dy's cp.async
    copies, or where W is odd its 16-bit stores) takes the ideal wavefronts in ``gpuconv profile``,
    and so do the ldmatrix reads where a k-step's 8 pixels lie in one image row (Q = 8). Where they
    cross a row (Q = 7) their positions jump by Wp - Q and share bank groups: the patch's reads
    take more (the closing note of issue 12 gives the factors)."""
    from gpuconv import profile

    p = problem(dict(x=(2, 32, 8, width), w=(128, 32, 3, 3), padding=1), "float16")
    run = profile.run("wgrad", p, HALO)
    assert run.kernel == HALO
    shared = [row for row in run.rows if row["space"] == "shared"]
    assert {row["kind"] for row in shared} >= {"store", "load"} | ({"cp.async"} if width % 2 == 0 else set())
    checked = shared if width == 8 else [row for row in shared if row["kind"] != "load"]
    assert all(row["wavefronts"] == row["ideal"] for row in checked), checked


@needs_sass_tools
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_odd_main_loop_loads_two_bytes_a_position(arch):
    """'halo_odd': a loop of one k-tile (unrolled twice it spills on sm_90), 72 HMMA and 18
    ldmatrix, the unit's 16 two-byte loads of x (8 channels of two positions) and two 16-byte
    stores, dy's 16 two-byte loads and 16-bit stores (one pixel of 16 output channels a thread);
    no cp.async, no spills."""
    from gpuconv import sass

    (r,) = sass.analyze([arch], [kb.tensor_kernel_name("wgrad", "float16", HALO, "halo_odd")])
    assert (r.hmma, r.ldsm, r.ldgsts, r.bar, r.spills) == (72, 18, {}, 1, 0)
    assert (r.ldg, r.sts[128], r.sts[16]) == ({16: 16 + 16}, 2, 16)
    assert (r.threads, r.shared_bytes, r.blocks_per_sm) == (256, kb.wgrad_halo_shared_bytes("halo_odd"), 1)


@needs_sass_tools
@pytest.mark.parametrize("staging, units", [("halo", 2), ("halo_wide", 3)])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_main_loop_is_hmma_ldmatrix_and_cp_async(arch, staging, units):
    """NVRTC compiles the kernel as the cuda backend does: a loop of two k-tiles (the main loop's
    KTilesAnIteration), each 72 HMMA (4×9 mma tiles of a 64×72 warp, two k16 steps), 18
    ldmatrix (A's 4 and B's 5 a step), dy's 4 8-byte LDGSTS, the patch units' 8 four-byte loads
    and two 16-byte stores each and one barrier; no spills; one block of 8 warps an SM."""
    from gpuconv import sass

    name = kb.tensor_kernel_name("wgrad", "float16", HALO, staging)
    (r,) = sass.analyze([arch], [name])
    assert (r.hmma, r.ldsm, r.ldgsts, r.bar, r.spills) == (2 * 72, 2 * 18, {64: 2 * 4}, 2, 0)
    assert (r.ldg, r.sts[128]) == ({32: 2 * 8 * units}, 2 * 2 * units)
    assert (r.threads, r.shared_bytes, r.blocks_per_sm) == (256, kb.wgrad_halo_shared_bytes(staging), 1)
