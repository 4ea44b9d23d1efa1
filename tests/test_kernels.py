"""The CUDA kernels of kernels/*.cu, run by the emulator, against the float64 reference.

Small-integer float32 inputs give exact sums, so those results compare with ==; float64 normal
inputs compare within a relative 1e-10. The emulate backend fills every output with NaN before its
kernel runs, so an element a kernel does not write fails the comparison. The same checks run under
the reverse and random thread schedules, under AddressSanitizer and the shared-memory race
detector, and with gcov line coverage of kernels/*.cu (printed by the run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import gpuconv as gc
from gpuconv import reference as ref
from gpuconv.backends.kernel_backend import (
    KERNEL_CHOICES,
    MIN_SPLIT_TILES,
    TENSOR_TILES,
    TILES,
    choose_dgrad,
    choose_fprop,
    choose_wgrad,
    conv_args,
    emulate_backend,
    launchable,
    wgrad_splits,
)
from gpuconv.backends.kernel_backend import kernels_for as instances_for_arch
from gpuconv.problem import Conv2dProblem, transpose_problem

from problems import (
    EDGE,
    TENSOR_STAGING,
    conv_cases,
    conv_inputs,
    conv_kwargs,
    normal,
    problem,
    rel_err,
    run_op,
    run_tensor_op,
    small_ints,
    transpose_cases,
)

ACTIVATIONS = [None, "relu", "sigmoid"]
F64_RTOL = 1e-10


def kernels_for(op, dtype):
    """'auto', 'direct' and every tile of ``op`` built for ``dtype`` (a forced tile of another
    dtype would run the direct kernel: test_a_tile_of_another_dtype_runs_direct)."""
    return [k for k in KERNEL_CHOICES[op]
            if k in ("auto", "direct") or (k in TILES[op] and dtype in TILES[op][k].dtypes)]


# Every (op, kernel) pair the backends can be forced to for float32 / float64.
OP_KERNELS = [(op, k) for op in KERNEL_CHOICES for k in kernels_for(op, "float32")]
OP_KERNELS_F64 = [(op, k) for op in KERNEL_CHOICES for k in kernels_for(op, "float64")]


def backend(op, kernel, **emulate_options):
    """The emulate backend with ``op`` forced to ``kernel`` (the other ops on 'auto')."""
    return emulate_backend(**{f"{op}_kernel": kernel}, **emulate_options)


def check_op(be, op, p, a, activation=None):
    """Run ``op`` on backend ``be``; compare with the reference (== or 1e-10); return the result."""
    got, want = run_op(be, op, p, a, activation), run_op(ref, op, p, a, activation)
    assert got.dtype == p.dtype and got.shape == want.shape and got.flags.c_contiguous
    if p.dtype == "float32" and activation != "sigmoid":
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=f"{op} {p.describe()}")
    elif p.dtype == "float32":  # sigmoid of an exact sum: only expf's rounding, a few ulp
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=p.describe())
    else:
        assert rel_err(got, want) <= F64_RTOL, f"{op} {p.describe()}: {rel_err(got, want):.3g}"
    return got


# -- every op over the edge problems ------------------------------------------------------------


@pytest.mark.parametrize("kernel", kernels_for("fprop", "float32"))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", EDGE)
def test_fprop_exact(name, activation, kernel):
    p = problem(EDGE[name], "float32")
    check_op(backend("fprop", kernel), "fprop", p, conv_inputs(p, 1, small_ints), activation)


@pytest.mark.parametrize("kernel", kernels_for("dgrad", "float32"))
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("name", EDGE)
def test_dgrad_exact(name, with_bias, kernel):
    p = problem(EDGE[name], "float32")
    check_op(backend("dgrad", kernel), "dgrad", p, conv_inputs(p, 2, small_ints, with_bias))


@pytest.mark.parametrize("kernel", kernels_for("wgrad", "float32"))
@pytest.mark.parametrize("name", EDGE)
def test_wgrad_exact(name, kernel):
    p = problem(EDGE[name], "float32")
    check_op(backend("wgrad", kernel), "wgrad", p, conv_inputs(p, 3, small_ints))


@pytest.mark.parametrize("op, kernel", OP_KERNELS_F64)
@pytest.mark.parametrize("name", EDGE)
def test_float64(name, op, kernel):
    p = problem(EDGE[name], "float64")
    check_op(backend(op, kernel), op, p, conv_inputs(p, 4, normal), "sigmoid")


def test_wgrad_splits_the_reduction():
    """The split-K path (workspace + fixed-order sum), each split several k-tiles long (both
    pipeline buffers), is what the tiles run on these problems."""
    for name in ("groups", "rect_kernel", "dilation"):
        p = problem(EDGE[name])
        for kernel, tile in TILES["wgrad"].items():
            splits, chunk = wgrad_splits(p, tile)
            assert splits > 1 and chunk % tile.BK == 0, (name, kernel, splits, chunk)
            assert chunk >= MIN_SPLIT_TILES * tile.BK, (name, kernel, chunk)
            assert (splits - 1) * chunk < p.N * p.P * p.Q <= splits * chunk  # none empty
    assert choose_wgrad(problem(EDGE["depthwise"])) == "direct"  # K/groups = 2: no tile fills


def test_a_tile_of_another_dtype_runs_direct():
    p32, p64 = problem(EDGE["odd_channels"], "float32"), problem(EDGE["odd_channels"], "float64")
    for choose in (choose_fprop, choose_dgrad, choose_wgrad):
        assert choose(p64, "128x128x8_8x8") == "direct"
        assert choose(p32, "64x64x8_4x4") == "direct"
        assert choose(p64, "32x32x8_4x4") == choose(p32, "32x32x8_4x4") == "32x32x8_4x4"


def test_cp_async_tiles_never_reach_an_sm75_gpu():
    """A cp.async tile (stages > 2) is compiled for sm_80 and newer only, and a device without
    cp.async runs its register-staged twin, forced or chosen."""
    staged = [k for k, t in TILES["fprop"].items() if t.stages > 2]
    assert staged and all(TILES["fprop"][k].min_arch == 80 for k in staged)
    for arch, has_staged in (("sm_75", False), ("sm_80", True), ("sm_90", True)):
        names = [e for es in instances_for_arch(arch).values() for e in es if "implicit_gemm" in e]
        assert any(e.endswith(", 3>") or e.endswith(", 4>") for e in names) == has_staged, arch
        # 7 register-staged tiles (5 float32, 2 float64) a op; fprop has 3 activations
        assert sum(e.endswith(", 2>") for e in names) == 3 * 7 + 7 + 7
    p = problem(EDGE["odd_channels"], "float32")
    for choose in (choose_fprop, choose_dgrad, choose_wgrad):
        assert choose(p, "128x128x8_8x8_s4") == "128x128x8_8x8_s4"
        assert choose(p, "128x128x8_8x8_s4", cp_async=False) == "128x128x8_8x8"
        assert choose(p, "32x32x8_4x4_s4", cp_async=False) == "32x32x8_4x4"
    layers = [Conv2dProblem(32, c, hw, hw, c, 3, 3, hw, hw, dtype=d) for c, hw in ((64, 56), (256, 14))
              for d in ("float32", "float64")]
    for q in layers:
        for op, choose in (("fprop", choose_fprop), ("dgrad", choose_dgrad), ("wgrad", choose_wgrad)):
            assert TILES[op][choose(q, cp_async=False)].stages == 2, (op, q.describe())


def test_auto_weighs_issue_cost_against_wave_quantization():
    """ResNet-50-like layers (float32), on a GPU without cp.async first: the tile whose busiest
    H100 SM issues least. The model's own picks are checked in tests/test_model.py; these are
    worked by hand from ISSUE_PER_FMA. Then sm_80+: the pick's cp.async twin where it has one."""
    # 128×128: 196 blocks, 2 a busiest SM × 16384 × 1.36; 64×128: 392, 3 × 8192 × 1.41: cheaper.
    big = Conv2dProblem(32, 128, 28, 28, 128, 3, 3, 28, 28, dtype="float32")
    assert choose_fprop(big, cp_async=False) == choose_dgrad(big, cp_async=False) == "64x128x8_8x8"
    # 100352 pixels, 64 channels: 128×64 tiles quantize as well as 64×64 ones and issue less.
    narrow = Conv2dProblem(32, 64, 56, 56, 64, 3, 3, 56, 56, dtype="float32")
    assert choose_fprop(narrow, cp_async=False) == "128x64x8_8x8"
    # 14×14 pixels, 256 channels: every tile gives each SM at most one block, so the smallest
    # block (32×32 × 2.23 against 64×64 × 1.60) wins.
    few_pixels = Conv2dProblem(1, 256, 14, 14, 256, 3, 3, 14, 14, dtype="float32")
    assert (choose_fprop(few_pixels, cp_async=False) == choose_dgrad(few_pixels, cp_async=False)
            == "32x32x8_4x4")
    small = Conv2dProblem(1, 16, 4, 4, 16, 1, 1, 4, 4, dtype="float32")  # M = 16 pixels
    assert choose_fprop(small, cp_async=False) == "32x32x8_4x4"
    wide64 = Conv2dProblem(32, 64, 56, 56, 256, 1, 1, 56, 56, dtype="float64")
    assert choose_fprop(wide64, cp_async=False) == "64x64x8_4x4"
    assert choose_fprop(problem(EDGE["depthwise"], "float32")) == "direct"
    # sm_80+: the cp.async twin of the tile where there is one and the reduction spans its stages
    assert choose_fprop(big) == "64x128x8_8x8"  # no twin
    assert choose_fprop(narrow) == "128x64x8_8x8"  # no twin
    assert choose_fprop(few_pixels) == "32x32x8_4x4_s4" and choose_fprop(wide64) == "64x64x8_4x4_s3"
    assert choose_fprop(small) == "32x32x8_4x4"  # C·R·S = 16: two k-tiles, fewer than 4 stages
    four_k_tiles = Conv2dProblem(1, 32, 4, 4, 16, 1, 1, 4, 4, dtype="float32")  # C·R·S = 32
    assert choose_fprop(four_k_tiles) == "32x32x8_4x4_s4"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_random_problems_exact(case):
    p = problem(case, "float32")
    a = conv_inputs(p, 5, small_ints)
    for op, kernel in OP_KERNELS:
        check_op(backend(op, kernel), op, p, a, "relu")


# -- thread schedules and sanitizers: every kernel once per schedule / mode ----------------------


def every_kernel(emulate_options, name="dilation_stride"):
    """Each kernel once on EDGE[name] (float32 and float64, every activation), checked."""
    be = emulate_backend(**emulate_options)
    for dtype, maker in (("float32", small_ints), ("float64", normal)):
        p = problem(EDGE[name], dtype)
        a = conv_inputs(p, 13, maker)
        for op in TILES:
            for kernel in kernels_for(op, dtype)[1:]:  # 'auto' is one of the others
                for activation in ACTIVATIONS if op == "fprop" else [None]:
                    check_op(backend(op, kernel, **emulate_options), op, p, a, activation)
        y = be.sigmoid(a["dy"])
        for got, want in ((be.bias_grad(a["dy"]), ref.bias_grad(a["dy"])),
                          (be.relu(a["dy"]), ref.activate(a["dy"], "relu")),
                          (be.relu_backward(a["dy"], a["dy"] - 1),
                           ref.relu_backward(a["dy"], a["dy"] - 1)),
                          (y, ref.activate(a["dy"], "sigmoid")),
                          (be.sigmoid_backward(a["dy"], y), ref.sigmoid_backward(a["dy"], y))):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def every_tensor_core_kernel(emulate_options, case):
    """The tensor-core kernels (fprop_tc.cu, dgrad_tc.cu, wgrad_tc.cu) once on problem ``case``,
    every tile and activation: float16, TF32 and TF32x3 (no ml_dtypes needed;
    tests/test_tensor_core_kernels.py checks bfloat16 too), small integers, ==."""
    for dtype, precision in (("float16", "highest"), ("float32", "tf32"), ("float32", "tf32x3")):
        p = problem(case, dtype)
        a = conv_inputs(p, 13, small_ints)
        for op in TENSOR_TILES:
            for kernel, tile in TENSOR_TILES[op].items():
                if dtype not in tile.dtypes or not launchable(op, p, kernel):  # the halo tile: halo_fits
                    continue
                for activation in ACTIVATIONS if op == "fprop" else [None]:
                    be = backend(op, kernel, **emulate_options)
                    got = run_tensor_op(be, op, p, a, activation, precision)
                    want = run_op(ref, op, p, {k: v if v is None else v.astype(np.float64)
                                               for k, v in a.items()}, activation)
                    # float16 rounding: half an ulp, 2^-11 relative or 2^-25 among the subnormals
                    # (sigmoid)
                    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2.0**-11, atol=2.0**-25)


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_schedules(schedule):
    every_kernel(dict(schedule=schedule))


@pytest.mark.parametrize("name", EDGE)
@pytest.mark.parametrize("mode", ["asan", "race"])
def test_sanitizers_every_edge_problem(mode, name):
    every_kernel(dict(mode=mode), name)


# Kernel lines no test reaches, each with the reason (none so far).
UNCOVERED_BY_DESIGN: dict[tuple[str, int], str] = {}


def test_kernel_line_coverage(capsys):
    """gcov line coverage of kernels/*.cu under the emulator, printed; every line must run."""
    from gpuconv._paths import kernels_dir
    from gpuconv.emulate import coverage_report

    for name in ("dilation_stride", "odd_channels", "big_pad", "groups", "epilogue_aligned"):
        every_kernel(dict(mode="coverage"), name)
        every_tensor_core_kernel(dict(mode="coverage"), EDGE[name])
    for case in TENSOR_STAGING.values():  # the tensor-core kernels' staging variants
        every_tensor_core_kernel(dict(mode="coverage"), case)
    files = sorted(kernels_dir().glob("*.cu")) + [kernels_dir() / h for h in ("common.cuh", "gemm.cuh",
                                                                             "gemm_tc.cuh")]
    report = coverage_report(files)
    missing = []
    with capsys.disabled():
        print("\ngcov line coverage of kernels/ under the emulate tests:")
        for path, cov in report.items():
            print(f"  {Path(path).name:16} {cov.covered:4}/{cov.executable:<4} lines "
                  f"{100 * cov.covered / max(cov.executable, 1):5.1f}%"
                  + (f"  uncovered: {list(cov.uncovered)}" if cov.uncovered else ""))
            missing += [(Path(path).name, n) for n in cov.uncovered
                        if (Path(path).name, n) not in UNCOVERED_BY_DESIGN]
        total = sum(c.covered for c in report.values()), sum(c.executable for c in report.values())
        print(f"  total            {total[0]:4}/{total[1]:<4} lines "
              f"{100 * total[0] / max(total[1], 1):5.1f}%")
    assert all(c.executable > 0 for c in report.values()), report
    assert not missing, f"kernel lines never executed: {missing}"


# -- conv_transpose2d: dgrad with bias and a given P, Q (output_padding) ----------------------

TRANSPOSE = {
    # output_padding < stride: the extra bottom/right rows receive only the bias
    "stride2_outpad1": dict(x=(2, 4, 3, 4), w=(4, 3, 3, 3), stride=2, padding=1, output_padding=1),
    # output_padding >= stride, allowed because it is < dilation: P is not f(H)
    "outpad_ge_stride": dict(x=(1, 2, 4, 3), w=(2, 3, 2, 3), stride=1, dilation=3,
                             output_padding=2),
    # groups, per-axis stride, dilation and output_padding
    "groups_mixed": dict(x=(2, 4, 3, 3), w=(4, 2, 2, 3), stride=(3, 2), dilation=(1, 2),
                         output_padding=(2, 1), padding=(1, 0), groups=2),
}


def transpose_call(case, x, w, bias, backend):
    keys = {k: v for k, v in case.items() if k not in ("x", "w")}
    return gc.conv_transpose2d(x, w, bias, **keys, backend=backend)


def transpose_reference(case, x, w, bias):
    return ref.dgrad(transpose_case_problem(case, x.dtype.name), x, w, bias)


def transpose_case_problem(case, dtype):
    keys = {k: v for k, v in case.items() if k not in ("x", "w")}
    return transpose_problem(case["x"], case["w"], dtype=dtype, **keys)


def transpose_kernels(case, x, w, bias):
    """conv_transpose2d through the public API ('auto') and each dgrad kernel forced."""
    yield "api", transpose_call(case, x, w, bias, "emulate")
    p = transpose_case_problem(case, x.dtype.name)
    for kernel in kernels_for("dgrad", x.dtype.name)[1:]:
        yield kernel, backend("dgrad", kernel).dgrad(p, x, w, bias)


@pytest.mark.parametrize("name", TRANSPOSE)
def test_conv_transpose2d_exact(name):
    case, rng = TRANSPOSE[name], np.random.default_rng(6)
    x, w = small_ints(rng, case["x"], "float32"), small_ints(rng, case["w"], "float32")
    bias = small_ints(rng, (case["w"][1] * case.get("groups", 1),), "float32")
    want = transpose_reference(case, x, w, bias).astype(np.float32)
    for kernel, got in transpose_kernels(case, x, w, bias):
        np.testing.assert_array_equal(got, want, err_msg=kernel)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=transpose_cases())
def test_random_conv_transpose2d_float64(case):
    rng = np.random.default_rng(7)
    x, w = normal(rng, case["x"], "float64"), normal(rng, case["w"], "float64")
    bias = normal(rng, (case["w"][1] * case.get("groups", 1),), "float64")
    want = transpose_reference(case, x, w, bias)
    for kernel, got in transpose_kernels(case, x, w, bias):
        assert rel_err(got, want) <= F64_RTOL, kernel


# -- bias gradient and activations ---------------------------------------------------------------


def assert_close(got, want, dtype, rtol):
    """Exact for float32 small integers; within ``rtol`` for float64 normals."""
    if dtype == "float32":
        np.testing.assert_array_equal(got, np.asarray(want).astype(dtype))
    else:
        assert rel_err(got, want) <= rtol


def check_elementwise(be, dtype):
    """bias_grad and the activations of backend ``be`` (emulate here, cuda in test_cuda.py)."""
    rng = np.random.default_rng(8)
    maker = small_ints if dtype == "float32" else normal
    dy = maker(rng, (3, 5, 4, 7), dtype)
    x = maker(rng, dy.shape, dtype)
    assert_close(be.bias_grad(dy), ref.bias_grad(dy), dtype, F64_RTOL)
    # N·P·Q = 2·300 > the 256 threads of a block: each thread sums several pixels, across images
    long = maker(rng, (2, 3, 15, 20), dtype)
    assert_close(be.bias_grad(long), ref.bias_grad(long), dtype, F64_RTOL)
    np.testing.assert_array_equal(be.relu(x), np.maximum(x, 0))
    np.testing.assert_array_equal(be.relu_backward(dy, x), ref.relu_backward(dy, x).astype(dtype))
    # expf / exp round differently from NumPy's exp by a few ulp
    sigmoid_rtol = 1e-6 if dtype == "float32" else F64_RTOL
    y = be.sigmoid(x)
    np.testing.assert_allclose(y, ref.activate(x, "sigmoid"), rtol=sigmoid_rtol)
    np.testing.assert_allclose(be.sigmoid_backward(dy, y), ref.sigmoid_backward(dy, y),
                               rtol=sigmoid_rtol, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise(dtype):
    check_elementwise(emulate_backend(), dtype)


def test_relu_passes_nan_as_torch():
    x = np.array([np.nan, -1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(emulate_backend().relu(x), [np.nan, 0, 0, 2])


# -- reproducibility, poisoning, sizes -----------------------------------------------------------


def test_bitwise_deterministic():
    p = problem(EDGE["groups"], "float32")
    a = conv_inputs(p, 10, normal)
    for op, kernel in OP_KERNELS:
        be = backend(op, kernel, schedule="random")  # the thread order must not matter either
        first = run_op(be, op, p, a, "relu")
        assert first.tobytes() == run_op(be, op, p, a, "relu").tobytes(), (op, kernel)


def test_cp_async_twins_sum_in_the_same_order():
    """A cp.async tile and its register-staged twin reduce in the same k order: bitwise equal
    results on normal inputs (not only on exact small integers)."""
    for dtype in ("float32", "float64"):
        p = problem(EDGE["dilation_stride"], dtype)
        a = conv_inputs(p, 11, normal)
        for op, tiles in TILES.items():
            for kernel, tile in tiles.items():
                if tile.stages > 2 and dtype in tile.dtypes:
                    twin = kernel.rsplit("_s", 1)[0]
                    got = run_op(backend(op, kernel), op, p, a, "relu")
                    assert got.tobytes() == run_op(backend(op, twin), op, p, a, "relu").tobytes(), kernel


def test_emulate_outputs_are_poisoned_before_the_kernel():
    assert np.isnan(emulate_backend()._empty((4, 3), "float32")).all()


def test_a_size_beyond_int32_raises_before_launch():
    p = Conv2dProblem(1, 1, 2**31, 1, 1, 1, 1, 2**31, 1)
    with pytest.raises(ValueError, match="32-bit"):
        conv_args(p)


def test_sizes_beyond_the_kernels_int32_fields():
    """Tensors beyond 2**31 elements pass their (small) sizes as int32; a single size beyond
    2**31 - 1 raises before launch; a reduction too long for the tiles' 32-bit index goes direct.
    (No kernel runs: such tensors need tens of GB. The 64-bit offsets are read in the kernels.)"""
    p = Conv2dProblem(2**16, 64, 32, 32, 64, 3, 3, 30, 30)  # x has 2**32 elements
    assert all(isinstance(v, np.int32) for v in conv_args(p))
    with pytest.raises(ValueError, match="W .* = 2147483650 does not fit the kernels' 32-bit sizes"):
        conv_args(Conv2dProblem(1, 1, 1, 2**31, 1, 1, 1, 1, 2**31))
    long = Conv2dProblem(1, 2**28, 3, 3, 2**28, 3, 3, 1, 1)  # C·R·S = K·R·S = 9·2**28 > 2**31
    assert (choose_fprop(long), choose_dgrad(long), choose_wgrad(long)) == ("direct",) * 3
    assert choose_fprop(Conv2dProblem(1, 2**20, 3, 3, 64, 3, 3, 1, 1)) != "direct"
    # one image of x beyond 2**31 elements: the tiles keep offsets inside an image in an int
    huge_image = Conv2dProblem(1, 2**12, 2**10, 2**10, 64, 1, 1, 2**10, 2**10)
    assert (choose_fprop(huge_image), choose_wgrad(huge_image)) == ("direct",) * 2


# -- the emulate backend agrees with the numpy backend, through the public API ------------------


def test_emulate_agrees_with_numpy_backend():
    rng = np.random.default_rng(12)
    for name in ("asym_pad", "dilation_stride", "depthwise", "seed_4x4_s2"):
        case = EDGE[name]
        p = problem(case, "float32")
        kw = conv_kwargs(case)
        x, w = small_ints(rng, p.x_shape, "float32"), small_ints(rng, p.w_shape, "float32")
        dy, bias = small_ints(rng, p.y_shape, "float32"), small_ints(rng, (p.K,), "float32")
        ops = {
            "conv2d": lambda be: gc.conv2d(x, w, bias, activation="relu", backend=be, **kw),
            "conv2d_input": lambda be: gc.conv2d_input(p.x_shape, w, dy, backend=be, **kw),
            "conv2d_weight": lambda be: gc.conv2d_weight(x, p.w_shape, dy, backend=be, **kw),
            "conv2d_bias": lambda be: gc.conv2d_bias(dy, backend=be),
            "relu_backward": lambda be: gc.relu_backward(dy, dy - 1, backend=be),
        }
        for op, call in ops.items():  # small integers: both exact, so bitwise equal
            np.testing.assert_array_equal(call("emulate"), call("numpy"), err_msg=f"{op} {name}")
    x = normal(rng, (2, 3, 4, 5), "float64")
    np.testing.assert_allclose(gc.sigmoid(x, backend="emulate"), gc.sigmoid(x, backend="numpy"),
                               rtol=F64_RTOL)
